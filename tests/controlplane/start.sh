#!/usr/bin/env bash
# Starts a test control plane (etcd, kube-apiserver, kube-controller-manager) from the binaries
# that build.sh made, waits until it is ready, and returns, leaving the processes running.
#
#   start.sh --bin DIR --dir DIR --kubeconfig PATH [--netns NS --address ADDR] [--owner-pid PID]
#
#   --bin         directory of the binaries (build.sh prints it)
#   --dir         state directory, created here (etcd data, keys, certificates, logs, pids);
#                 stop.sh removes it
#   --kubeconfig  the admin kubeconfig (group system:masters) is written there
#   --netns       run every process inside this network namespace (`ip netns exec`)
#   --address     address the API server binds and advertises (default 127.0.0.1; inside a
#                 namespace, an address of that namespace)
#   --delete-netns  stop.sh also deletes the namespace (the caller created it for this)
#   --owner-pid   stop the control plane (stop.sh) when this process ends, so a test binary
#                 that dies leaves nothing behind
#
# etcd listens on 127.0.0.1 only; without --netns every port is a free loopback port.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

bin="" dir="" kubeconfig="" netns="" address="127.0.0.1" owner="" delete_netns=0
while (($#)); do
    case "$1" in
        --bin) bin="$2"; shift 2 ;;
        --dir) dir="$2"; shift 2 ;;
        --kubeconfig) kubeconfig="$2"; shift 2 ;;
        --netns) netns="$2"; shift 2 ;;
        --address) address="$2"; shift 2 ;;
        --owner-pid) owner="$2"; shift 2 ;;
        --delete-netns) delete_netns=1; shift ;;
        *) echo "start.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
[[ -n "$bin" && -n "$dir" && -n "$kubeconfig" ]] || { echo "start.sh: --bin, --dir and --kubeconfig are required" >&2; exit 2; }
for b in etcd kube-apiserver kube-controller-manager kubectl; do
    [[ -x "$bin/$b" ]] || { echo "start.sh: $bin/$b is missing (run tests/controlplane/build.sh)" >&2; exit 2; }
done

in_ns() { if [[ -n "$netns" ]]; then ip netns exec "$netns" "$@"; else "$@"; fi; }
free_port() { # a free TCP port in the namespace the processes run in
    in_ns python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

mkdir -p "$dir"/{pki,etcd,logs}
dir="$(cd "$dir" && pwd)"
((delete_netns)) && [[ -n "$netns" ]] && echo "$netns" >"$dir/delete-netns"

# Certificates: a CA and a serving certificate for the API server, the service-account keys.
pki="$dir/pki"
host_is_ip() { [[ "$1" =~ ^[0-9.]+$ || "$1" == *:* ]]; }
san="DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,IP:127.0.0.1"
if host_is_ip "$address"; then san="$san,IP:$address"; else san="$san,DNS:$address"; fi
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj "/CN=vipam-test-ca" -keyout "$pki/ca.key" -out "$pki/ca.crt" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -subj "/CN=kube-apiserver" -keyout "$pki/apiserver.key" -out "$pki/apiserver.csr" 2>/dev/null
openssl x509 -req -in "$pki/apiserver.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
    -days 2 -extfile <(printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\n' "$san") \
    -out "$pki/apiserver.crt" 2>/dev/null
openssl genrsa -out "$pki/sa.key" 2048 2>/dev/null
openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
token="$(openssl rand -hex 24)"
echo "$token,vipam-test-admin,vipam-test-admin,system:masters" >"$pki/tokens.csv"

etcd_client="$(free_port)"
etcd_peer="$(free_port)"
api_port=6443
if [[ -z "$netns" ]]; then api_port="$(free_port)"; fi
server="https://$address:$api_port"
[[ "$address" == *:* ]] && server="https://[$address]:$api_port"

write_kubeconfig() { # path server
    cat >"$1" <<KUBECONFIG
apiVersion: v1
kind: Config
clusters:
  - name: test
    cluster:
      server: $2
      certificate-authority-data: $(base64 -w0 "$pki/ca.crt")
users:
  - name: admin
    user:
      token: $token
contexts:
  - name: test
    context: {cluster: test, user: admin}
current-context: test
KUBECONFIG
}
write_kubeconfig "$dir/admin.kubeconfig" "$server"
mkdir -p "$(dirname "$kubeconfig")"
write_kubeconfig "$kubeconfig" "$server"
echo "$server" >"$dir/server"

launch() { # name command...
    local name="$1"; shift
    if [[ -n "$netns" ]]; then
        setsid ip netns exec "$netns" "$@" >"$dir/logs/$name.log" 2>&1 </dev/null &
    else
        setsid "$@" >"$dir/logs/$name.log" 2>&1 </dev/null &
    fi
    echo "$!" >"$dir/$name.pid"
}

fail() {
    echo "start.sh: $1" >&2
    for log in "$dir"/logs/*.log; do
        echo "--- last lines of $log" >&2
        tail -n 25 "$log" >&2
    done
    "$here/stop.sh" "$dir" >&2 || true
    exit 1
}

launch etcd "$bin/etcd" --name test --data-dir "$dir/etcd" \
    --listen-client-urls "http://127.0.0.1:$etcd_client" --advertise-client-urls "http://127.0.0.1:$etcd_client" \
    --listen-peer-urls "http://127.0.0.1:$etcd_peer" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer" \
    --initial-cluster "test=http://127.0.0.1:$etcd_peer" --listen-metrics-urls "" \
    --unsafe-no-fsync --log-level warn

launch kube-apiserver "$bin/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$etcd_client" \
    --bind-address "$address" --advertise-address "$address" --secure-port "$api_port" \
    --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
    --token-auth-file "$pki/tokens.csv" --authorization-mode RBAC \
    --service-account-issuer https://kubernetes.default.svc \
    --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
    --service-cluster-ip-range 198.51.100.0/24,2001:db8:5::/108 \
    --endpoint-reconciler-type none \
    --enable-aggregator-routing=true \
    --enable-priority-and-fairness=false \
    --max-requests-inflight 2000 --max-mutating-requests-inflight 1000 \
    --cert-dir "$pki"

launch kube-controller-manager "$bin/kube-controller-manager" \
    --kubeconfig "$dir/admin.kubeconfig" \
    --controllers endpointslice-controller,namespace-controller,garbage-collector-controller,serviceaccount-controller,serviceaccount-token-controller,service-cidr-controller \
    --service-account-private-key-file "$pki/sa.key" --root-ca-file "$pki/ca.crt" \
    --bind-address 127.0.0.1 --secure-port 0 --leader-elect=false \
    --concurrent-gc-syncs 5 --concurrent-namespace-syncs 5

if [[ -n "$owner" ]]; then
    # Watchdog: the control plane lives as long as its owner (and its directory).
    setsid bash -c 'while kill -0 "$1" 2>/dev/null && [[ -d "$2" ]]; do sleep 1; done; exec "$3" "$2"' \
        watchdog "$owner" "$dir" "$here/stop.sh" >/dev/null 2>&1 </dev/null &
fi

kubectl=("$bin/kubectl" --kubeconfig "$dir/admin.kubeconfig" --request-timeout 5s)
deadline=$((SECONDS + 120))
until in_ns "${kubectl[@]}" get --raw /readyz >/dev/null 2>&1; do
    for name in etcd kube-apiserver kube-controller-manager; do
        kill -0 "$(cat "$dir/$name.pid")" 2>/dev/null || fail "$name exited during start-up"
    done
    ((SECONDS < deadline)) || fail "kube-apiserver not ready after 120 s"
    sleep 0.5
done
until in_ns "${kubectl[@]}" get namespace default >/dev/null 2>&1; do
    ((SECONDS < deadline)) || fail "namespace default not created after 120 s"
    sleep 0.5
done
echo "$server"
