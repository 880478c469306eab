#!/usr/bin/env bash
# Stops a control plane that start.sh started in DIR and removes DIR. Idempotent.
#   stop.sh DIR
set -uo pipefail
dir="${1:?usage: stop.sh DIR}"
[[ -d "$dir" ]] || exit 0
pids=()
for name in kube-controller-manager kube-apiserver etcd; do
    [[ -f "$dir/$name.pid" ]] && pids+=("$(cat "$dir/$name.pid")")
done
for pid in "${pids[@]}"; do kill -CONT "$pid" 2>/dev/null; kill -TERM "$pid" 2>/dev/null; done
for _ in $(seq 50); do
    alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    ((alive)) || break
    sleep 0.1
done
for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null; done
if [[ -f "$dir/delete-netns" ]]; then
    ip netns del "$(cat "$dir/delete-netns")" 2>/dev/null
fi
rm -rf "$dir"
