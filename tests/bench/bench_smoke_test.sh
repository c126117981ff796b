#!/usr/bin/env bash
# bench/'s tools against a sandbox and a plugin, briefly: each mode of
# defender-bench and the Python baseline runs and reports what happened.
# Checks counts, never speed. Usage: bench_smoke_test.sh BUILD_DIR SOURCE_DIR
set -euo pipefail
BIN="$1"
SRC="$2"
. "$(dirname "$0")/../testlib.sh"  # $work, $pids, fail, wait_for_file
field() {  # field FILE KEY: a top-level field of the JSON object on FILE's last line
  tail -n 1 "$1" | /usr/bin/python3 -c "import json,sys; print(json.load(sys.stdin)$2)"
}
bench="$BIN/bench/defender-bench"

"$BIN/tools/defender-sandbox" --listen 127.0.0.1:0 --port-file "$work/sandbox.port" \
  --ca-out "$work/ca.pem" --rate-per-minute 0 --rate-per-hour 0 >"$work/sandbox.log" 2>&1 &
pids+=($!)
wait_for_file "$work/sandbox.port"
sandbox="https://127.0.0.1:$(cat "$work/sandbox.port")"

start_plugin() {  # start_plugin NAME FLAGS...: sets $target
  local name="$1"; shift
  local t0
  t0="$(/usr/bin/python3 -c 'import time; print(time.monotonic_ns())')"
  AZURE_TENANT_ID=11111111-1111-1111-1111-111111111111 \
  AZURE_CLIENT_ID=22222222-2222-2222-2222-222222222222 \
  AZURE_CLIENT_SECRET=sandbox-secret \
  AZURE_AUTHORITY_HOST="$sandbox" DEFENDER_API_URL="$sandbox" DEFENDER_CA_FILE="$work/ca.pem" \
    "$BIN/server/defender-plugin" --listen 127.0.0.1:0 --port-file "$work/$name.port" \
    --state-dir "$work/state-$name" "$@" >"$work/$name.log" 2>&1 &
  pids+=($!)
  wait_for_file "$work/$name.port"
  target="127.0.0.1:$(cat "$work/$name.port")"
  "$bench" serving --target "$target" --since-monotonic-ns "$t0" >"$work/$name-serving.json" \
    || fail "serving probe failed"
  [ "$(field "$work/$name-serving.json" "['ms'] > 0")" = True ] || fail "no start-up time"
}

# The ceiling, closed loop and paced.
"$bench" direct --url "$sandbox" --ca "$work/ca.pem" --concurrency 2 --seconds 0.5 \
  --warmup-seconds 0 --tag 00000001 >"$work/direct.json" || fail "direct failed"
[ "$(field "$work/direct.json" "['errors']")" = "{}" ] || fail "direct: $(cat "$work/direct.json")"
[ "$(field "$work/direct.json" "['ok'] > 0")" = True ] || fail "direct answered nothing"
"$bench" direct --url "$sandbox" --ca "$work/ca.pem" --concurrency 2 --seconds 0.5 \
  --warmup-seconds 0 --rate 40 --tag 00000002 >"$work/paced.json" || fail "paced direct failed"
[ "$(field "$work/paced.json" "['ok'] <= 21")" = True ] || fail "paced sent more than offered"

# Through the plugin, its limiter off.
start_plugin open --rate-per-minute 0 --rate-per-hour 0
"$bench" grpc --target "$target" --concurrency 2 --seconds 0.5 --warmup-seconds 0 \
  --tag 00000003 >"$work/grpc.json" || fail "grpc failed"
[ "$(field "$work/grpc.json" "['errors']")" = "{}" ] || fail "grpc: $(cat "$work/grpc.json")"
[ "$(field "$work/grpc.json" "['ok'] > 0")" = True ] || fail "grpc answered nothing"
# Failed calls are timed too with --time-errors.
"$bench" grpc --target "$target" --concurrency 1 --seconds 0.3 --warmup-seconds 0 \
  --machine not-a-machine --time-errors 1 --tag 00000004 >"$work/invalid.json" 2>/dev/null \
  || fail "grpc with errors failed"
[ "$(field "$work/invalid.json" "['errors'].get('3', 0) > 0")" = True ] \
  || fail "invalid calls: $(cat "$work/invalid.json")"
[ "$(field "$work/invalid.json" "['p50_ms'] > 0")" = True ] || fail "invalid calls were not timed"

# Waiting calls: 5 a minute let through, the rest wait until cancelled.
actions() {  # how many actions the sandbox has created
  /usr/bin/python3 -c '
import json, ssl, sys, urllib.request
ctx = ssl.create_default_context(cafile=sys.argv[1])
with urllib.request.urlopen(sys.argv[2] + "/sandbox/stats", context=ctx) as r:
    print(json.load(r)["actions"])' "$work/ca.pem" "$sandbox"
}
start_plugin held --rate-per-minute 5 --rate-per-hour 0
actions_before="$(actions)"
mkfifo "$work/go"
"$bench" hold --target "$target" --calls 20 --tag 00000005 <"$work/go" >"$work/hold.jsonl" &
holder=$!
exec 3>"$work/go"
for _ in $(seq 100); do [ -s "$work/hold.jsonl" ] && break; sleep 0.1; done
grep -q '"sent":20' "$work/hold.jsonl" || fail "hold did not send"
# Wait until the 5 admitted calls are answered (the others stay waiting).
for _ in $(seq 100); do
  [ $(( $(actions) - actions_before )) -ge 5 ] && break
  sleep 0.1
done
sleep 0.5
echo go >&3
exec 3>&-
wait "$holder" || fail "hold failed"
# 5 went through (answered OK, or CANCELLED if the cancel overtook the answer),
# 15 were still waiting and were cancelled; nothing else.
tail -n 1 "$work/hold.jsonl" | /usr/bin/python3 -c '
import json, sys
d = json.load(sys.stdin)
codes = {}
for part in (d["before_cancel_by_code"], d["after_cancel_by_code"]):
    for code, n in part.items():
        codes[code] = codes.get(code, 0) + n
assert set(codes) <= {"0", "1"}, codes
assert codes.get("0", 0) + codes.get("1", 0) == 20, codes
assert codes.get("0", 0) <= 5 and codes.get("1", 0) >= 15, codes
assert d["answered_before_cancel"] <= 5, d
' || fail "hold: $(tail -n 1 "$work/hold.jsonl")"
[ $(( $(actions) - actions_before )) = 5 ] || fail "the limiter let $(( $(actions) - actions_before )) through, not 5"

# The Python baseline.
if /usr/bin/python3 -c "import requests" 2>/dev/null; then
  BENCH_CLIENT_SECRET=sandbox-secret /usr/bin/python3 "$SRC/bench/python_requests.py" \
    --url "$sandbox" --ca "$work/ca.pem" --concurrency 2 --seconds 0.5 --warmup-seconds 0 \
    --tag 00000006 >"$work/python.json" || fail "python baseline failed"
  [ "$(field "$work/python.json" "['errors']")" = "{}" ] || fail "python: $(cat "$work/python.json")"
  [ "$(field "$work/python.json" "['ok'] > 0")" = True ] || fail "python answered nothing"
fi
# The observability micro-benchmark: every figure measured, its bytes formatted.
"$BIN/bench/observability-bench" --iterations 1000 >"$work/obs.txt" || fail "observability-bench failed"
/usr/bin/python3 - "$work/obs.txt" <<'PY' || fail "observability-bench: $(cat "$work/obs.txt")"
import json, sys
d = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
assert d["iterations"] == 1000, d
assert d["bytes"] > 1000 * 2 * 300, d  # a JSON and a text line of over 300 bytes each time
assert all(d[k] > 0 for k in ("metrics_prometheus_ns", "log_json_ns", "log_text_ns")), d
PY
echo "bench smoke test passed"
