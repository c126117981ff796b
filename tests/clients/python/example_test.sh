#!/usr/bin/env bash
# The Python client's example playbook step (clients/python/examples/
# quarantine_and_watch.py) against the real defender-plugin and defender-sandbox:
# happy path, idempotent retry, invalid input, usage error, a failed action,
# and no secret in any output. Usage: example_test.sh BUILD_DIR SOURCE_DIR
set -euo pipefail
BIN="$1"
SRC="$2"
. "$SRC/tests/testlib.sh"  # $work, $pids, fail, wait_for_file, tls_pair
PY=/usr/bin/python3

# The generated tree: the build's, else generated here by the same script.
pydir="$BIN/clients/python"
if [ ! -f "$pydir/.generated" ]; then
  pydir="$work/py"
  bash "$SRC/clients/python/generate.sh" --protoc /usr/bin/protoc \
    --grpc-plugin /usr/bin/grpc_python_plugin "$pydir" || fail "generate.sh"
fi
export PYTHONPATH="$pydir"
example="$SRC/clients/python/examples/quarantine_and_watch.py"

"$BIN/tools/defender-sandbox" --listen 127.0.0.1:0 --port-file "$work/sandbox.port" \
  --ca-out "$work/ca.pem" --action-step-ms 200 >"$work/sandbox.log" 2>&1 &
pids+=($!)
wait_for_file "$work/sandbox.port"
sandbox="https://127.0.0.1:$(cat "$work/sandbox.port")"
sb() { curl -sf --cacert "$work/ca.pem" "$@"; }

AZURE_TENANT_ID=11111111-1111-1111-1111-111111111111 \
AZURE_CLIENT_ID=22222222-2222-2222-2222-222222222222 \
AZURE_CLIENT_SECRET=sandbox-secret \
AZURE_AUTHORITY_HOST="$sandbox" DEFENDER_API_URL="$sandbox" DEFENDER_CA_FILE="$work/ca.pem" \
  "$BIN/server/defender-plugin" --listen 127.0.0.1:0 --port-file "$work/plugin.port" \
  --state-dir "$work/state" --watch-poll-seconds 1 >"$work/plugin.log" 2>&1 &
pids+=($!)
wait_for_file "$work/plugin.port"
target="127.0.0.1:$(cat "$work/plugin.port")"
machine=1e5bc9d7e413ddd7902c2932e418702b84d0cc07
sha1=87662bc3d60e4200ceaf7aae249d1c343f4b83c9
# Another file for the mutual TLS run: the action (e) left on the device may still be pending.
sha1_mtls=2d2b5c5e5b1f3a4c6d7e8f90a1b2c3d4e5f60718

run() {  # run NAME ARGS...: the example's stdout/stderr in $work/NAME.{out,err}, exit code in $code
  local name="$1"; shift
  set +e
  "$PY" "$example" --target "$target" "$@" >"$work/$name.out" 2>"$work/$name.err"
  code=$?
  set -e
}
field() { sed -n "s/.*\"$1\": \"\([^\"]*\)\".*/\1/p" "$2" | head -n 1; }

# (a) happy path: submitted, status..., final SUCCEEDED, exit 0; the sandbox got the call.
sb -X DELETE "$sandbox/sandbox/requests" >/dev/null
run happy --machine "$machine" --sha1 "$sha1" --comment "python example"
[ "$code" -eq 0 ] || fail "happy path exited $code: $(cat "$work/happy.err")"
head -n 1 "$work/happy.out" | grep -q '"event": "submitted"' || fail "no submitted line first"
grep -q '"event": "status"' "$work/happy.out" || fail "no status line"
tail -n 1 "$work/happy.out" | grep -q '"event": "final".*"status": "MACHINE_ACTION_STATUS_SUCCEEDED"' \
  || fail "did not end with final SUCCEEDED: $(cat "$work/happy.out")"
"$PY" -c 'import json,sys; [json.loads(l) for l in open(sys.argv[1])]' "$work/happy.out" \
  || fail "stdout is not JSON lines"
[ -n "$(field request_id "$work/happy.out")" ] || fail "no request id printed"
grep -q StopAndQuarantineFile <(sb "$sandbox/sandbox/requests") || fail "sandbox got no StopAndQuarantineFile"

# (b) the same --request-id twice: the same action, one upstream request.
sb -X DELETE "$sandbox/sandbox/requests" >/dev/null
run again1 --machine "$machine" --sha1 "$sha1" --comment "retry" --request-id py-retry-1
[ "$code" -eq 0 ] || fail "first run exited $code"
run again2 --machine "$machine" --sha1 "$sha1" --comment "retry" --request-id py-retry-1
[ "$code" -eq 0 ] || fail "second run exited $code"
id1="$(field action_id "$work/again1.out")"
[ -n "$id1" ] && [ "$id1" = "$(field action_id "$work/again2.out")" ] || fail "a retry gave another action"
posts="$(sb "$sandbox/sandbox/requests" | "$PY" -c 'import json, sys
print(sum(1 for r in json.load(sys.stdin)
          if r["method"] == "POST" and r["path"].endswith("/StopAndQuarantineFile")))')"
[ "$posts" -eq 1 ] || fail "$posts upstream StopAndQuarantineFile calls, not one"

# (c) invalid sha1: exit 3, INVALID_ARGUMENT, no upstream request.
sb -X DELETE "$sandbox/sandbox/requests" >/dev/null
run bad --machine "$machine" --sha1 not-a-hash --comment "bad"
[ "$code" -eq 3 ] || fail "invalid sha1 exited $code"
grep -q "^quarantine_and_watch: INVALID_ARGUMENT: " "$work/bad.err" || fail "no INVALID_ARGUMENT: $(cat "$work/bad.err")"
! sb "$sandbox/sandbox/requests" | grep -q StopAndQuarantineFile || fail "an invalid call went upstream"

# (d) usage error: exit 2 before any call (no --comment; also an unknown flag).
run usage --machine "$machine" --sha1 "$sha1"
[ "$code" -eq 2 ] || fail "a missing --comment exited $code"
run usage2 --machine "$machine" --sha1 "$sha1" --comment x --no-such-flag
[ "$code" -eq 2 ] || fail "an unknown flag exited $code"

# (e) an action the sandbox reports as Failed: exit 1, final FAILED. A fault
# answers every GET of actions with a failed one (the POST is not touched).
cat >"$work/fault.json" <<JSON
{"method":"GET","path_regex":"^/api/machineactions/.*","times":-1,"status":200,
 "body":"{\"id\":\"ffffffff-0000-4000-8000-000000000001\",\"type\":\"StopAndQuarantineFile\",\"status\":\"Failed\",\"machineId\":\"$machine\",\"requestorComment\":\"fail\",\"creationDateTimeUtc\":\"2026-01-01T00:00:00Z\",\"lastUpdateDateTimeUtc\":\"2026-01-01T00:00:01Z\"}"}
JSON
sb -X POST -H 'Content-Type: application/json' --data @"$work/fault.json" "$sandbox/sandbox/faults" >/dev/null \
  || fail "could not set the fault"
run failed --machine "$machine" --sha1 "$sha1" --comment "fail"
sb -X DELETE "$sandbox/sandbox/faults" >/dev/null
[ "$code" -eq 1 ] || fail "a failed action exited $code: $(cat "$work/failed.out" "$work/failed.err")"
tail -n 1 "$work/failed.out" | grep -q '"event": "final".*"status": "MACHINE_ACTION_STATUS_FAILED"' \
  || fail "did not end with final FAILED: $(cat "$work/failed.out")"

# (f) mutual TLS to a second plugin: --tls-ca, --tls-cert, --tls-key.
tls_pair listener IP:127.0.0.1 serverAuth
tls_pair runner DNS:runner.contoso.com clientAuth
AZURE_TENANT_ID=11111111-1111-1111-1111-111111111111 \
AZURE_CLIENT_ID=22222222-2222-2222-2222-222222222222 \
AZURE_CLIENT_SECRET=sandbox-secret \
AZURE_AUTHORITY_HOST="$sandbox" DEFENDER_API_URL="$sandbox" DEFENDER_CA_FILE="$work/ca.pem" \
  "$BIN/server/defender-plugin" --listen 127.0.0.1:0 --port-file "$work/plugin2.port" \
  --state-dir "$work/state2" --watch-poll-seconds 1 --tls-cert "$work/listener.crt" \
  --tls-key "$work/listener.key" --client-ca "$work/runner.crt" >"$work/plugin2.log" 2>&1 &
pids+=($!)
wait_for_file "$work/plugin2.port"
target="127.0.0.1:$(cat "$work/plugin2.port")"
run mtls --tls-ca "$work/listener.crt" --tls-cert "$work/runner.crt" --tls-key "$work/runner.key" \
  --machine "$machine" --sha1 "$sha1_mtls" --comment "mtls"
[ "$code" -eq 0 ] || fail "the mutual TLS run exited $code: $(cat "$work/mtls.err")"
tail -n 1 "$work/mtls.out" | grep -q '"status": "MACHINE_ACTION_STATUS_SUCCEEDED"' || fail "mtls not SUCCEEDED"
run notls --machine "$machine" --sha1 "$sha1" --comment "plaintext to TLS"
[ "$code" -eq 3 ] || fail "plaintext to a TLS listener exited $code"
grep -q "^quarantine_and_watch: UNAVAILABLE: " "$work/notls.err" || fail "no UNAVAILABLE: $(cat "$work/notls.err")"

# (g) no secret in any output: the client secret, the private keys.
if grep -l "PRIVATE KEY" "$work"/*.out "$work"/*.err; then fail "a private key appears in output"; fi
if grep -rl "sandbox-secret" "$work"/*.out "$work"/*.err "$work"/plugin*.log; then
  fail "the client secret appears in output"
fi
echo "example_test: ok"
