#!/usr/bin/env bash
# Builds the test control plane from published Go modules into a cache outside the repository
# and prints the directory holding the binaries (etcd, kube-apiserver, kube-controller-manager,
# kubectl). Skipped when that directory is complete: the key is the Kubernetes and etcd
# versions plus a hash of both go.sum files, so a version bump builds anew.
#
#   tests/controlplane/build.sh            # prints e.g. ~/.cache/vipam-controlplane/k8s-v1.37.2-etcd-v3.6.16-1a2b3c4d
#
# Environment: VIPAM_CONTROLPLANE_CACHE (default ${XDG_CACHE_HOME:-~/.cache}/vipam-controlplane).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

module_version() { # module go.mod -> version required there
    awk -v m="$1" '$1 == m && $2 ~ /^v/ { print $2; exit }' "$2"
}
k8s="$(module_version k8s.io/kubernetes "$here/go.mod")"
etcd="$(module_version go.etcd.io/etcd/server/v3 "$here/etcd/go.mod")"
[[ -n "$k8s" && -n "$etcd" ]] || { echo "build.sh: cannot read the versions from the go.mod files" >&2; exit 3; }
sums="$(cat "$here/go.sum" "$here/etcd/go.sum" | sha256sum | cut -c1-8)"
cache="${VIPAM_CONTROLPLANE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vipam-controlplane}"
out="$cache/k8s-$k8s-etcd-$etcd-$sums"

complete() {
    for bin in etcd kube-apiserver kube-controller-manager kubectl; do
        [[ -x "$out/$bin" ]] || return 1
    done
}

if ! complete; then
    if ! command -v go >/dev/null 2>&1; then
        echo "build.sh: Go is not installed, and $out holds no built control plane." >&2
        echo "build.sh: the real control plane is built from Go modules: install Go >= 1.26 (https://go.dev/doc/install) and put 'go' on PATH." >&2
        exit 3
    fi
    mkdir -p "$cache"
    # One build at a time per cache (two test binaries may ask at once).
    exec 9>"$cache/.lock"
    flock 9
    if ! complete; then
        tmp="$(mktemp -d "$cache/.build.XXXXXX")"
        trap 'rm -rf "$tmp"' EXIT
        export CGO_ENABLED=0 GOFLAGS=-mod=readonly
        echo "build.sh: building Kubernetes $k8s (kube-apiserver, kube-controller-manager, kubectl) into $out; this takes a while the first time" >&2
        (cd "$here" && go build -trimpath -o "$tmp/" \
            k8s.io/kubernetes/cmd/kube-apiserver \
            k8s.io/kubernetes/cmd/kube-controller-manager \
            k8s.io/kubernetes/cmd/kubectl) >&2
        echo "build.sh: building etcd $etcd" >&2
        (cd "$here/etcd" && go build -trimpath -o "$tmp/etcd" go.etcd.io/etcd/server/v3) >&2
        rm -rf "$out"
        mv "$tmp" "$out"
        trap - EXIT
    fi
fi
echo "$out"
