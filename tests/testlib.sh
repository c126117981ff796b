# testlib.sh: what the shell tests share. Source it after `set -euo pipefail`:
#   . "$(dirname "$0")/../testlib.sh"
# It makes a scratch directory ($work), kills the processes listed in $pids
# and removes $work on exit, and defines fail, wait_for_file and tls_pair.
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
