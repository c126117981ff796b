# testlib.sh: what the shell tests share. Source it after `set -euo pipefail`:
#   . "$(dirname "$0")/../testlib.sh"
# It makes a scratch directory ($work), kills the processes listed in $pids
# and removes $work on exit, and defines fail, wait_for_file and tls_pair; with $BIN (a build
# directory) set, start_sandbox, sb, upstream_posts and start_plugin too.
work="$(mktemp -d)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
wait_for_file() {  # wait_for_file FILE: until it exists and is not empty (30 s at most)
  for _ in $(seq 300); do [ -s "$1" ] && return 0; sleep 0.1; done
  fail "timed out waiting for $1"
}
tls_pair() {  # tls_pair NAME SAN EKU: a self-signed EC certificate and key in $work
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
    -subj "/CN=$1" -addext "subjectAltName=$2" -addext "extendedKeyUsage=$3" \
    -keyout "$work/$1.key" -out "$work/$1.crt" 2>/dev/null || fail "openssl req $1"
}
# start_sandbox FLAGS...: defender-sandbox on 127.0.0.1 (log $work/sandbox.log); sets $sandbox,
# its CA in $work/ca.pem.
start_sandbox() {
  "$BIN/tools/defender-sandbox" --listen 127.0.0.1:0 --port-file "$work/sandbox.port" \
    --ca-out "$work/ca.pem" "$@" >"$work/sandbox.log" 2>&1 &
  pids+=($!)
  wait_for_file "$work/sandbox.port"
  sandbox="https://127.0.0.1:$(cat "$work/sandbox.port")"
}
sb() { curl -sf --cacert "$work/ca.pem" "$@"; }  # sb CURL_ARGS...: a call to the sandbox
upstream_posts() {  # how many StopAndQuarantineFile the sandbox received
  sb "$sandbox/sandbox/requests" | /usr/bin/python3 -c 'import json, sys
print(sum(1 for r in json.load(sys.stdin)
          if r["method"] == "POST" and r["path"].endswith("/StopAndQuarantineFile")))'
}
# start_plugin NAME FLAGS...: defender-plugin against $sandbox as the sandbox's app, state in
# $work/NAME-state, log $work/NAME.log; sets $target (its address).
start_plugin() {
  local name="$1"; shift
  AZURE_TENANT_ID=11111111-1111-1111-1111-111111111111 \
  AZURE_CLIENT_ID=22222222-2222-2222-2222-222222222222 \
  AZURE_CLIENT_SECRET=sandbox-secret \
  AZURE_AUTHORITY_HOST="$sandbox" DEFENDER_API_URL="$sandbox" DEFENDER_CA_FILE="$work/ca.pem" \
    "$BIN/server/defender-plugin" --listen 127.0.0.1:0 --port-file "$work/$name.port" \
    --state-dir "$work/$name-state" --watch-poll-seconds 1 "$@" >"$work/$name.log" 2>&1 &
  pids+=($!)
  wait_for_file "$work/$name.port"
  target="127.0.0.1:$(cat "$work/$name.port")"
}
