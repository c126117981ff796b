#!/usr/bin/env bash
# The Python client's example playbook step (clients/python/examples/
# quarantine_and_watch.py) against the real defender-plugin and defender-sandbox:
# (a) happy path, (b) idempotent retry, (c) invalid input, (d) usage errors,
# (e) an action that fails, (h) a plugin restart mid-watch, (f) mutual TLS, (g) the
# --authz bearer token, and no secret, token or private key in any output.
# Usage: example_test.sh BUILD_DIR SOURCE_DIR
set -euo pipefail
BIN="$1"
SRC="$2"
. "$SRC/tests/testlib.sh"  # $work, $pids, fail, tls_pair, start_sandbox, sb, start_plugin ...
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

start_sandbox --action-step-ms 200

# The plugin lets in only the caller with this token (--authz).
token="py-token-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
printf '%s\n' "$token" >"$work/token"
printf '{"callers": [{"name": "soar", "tokenFile": "%s", "tenants": ["*"]}]}' "$work/token" \
  >"$work/authz.json"
start_plugin plugin --authz "$work/authz.json"
auth=(--token-file "$work/token")
machine=1e5bc9d7e413ddd7902c2932e418702b84d0cc07
sha1=87662bc3d60e4200ceaf7aae249d1c343f4b83c9
# One file per scenario: an action a scenario leaves pending on the device makes the
# next StopAndQuarantineFile of the same file ALREADY_EXISTS (ActiveRequestAlreadyExists).
sha1_fail=1111111111111111111111111111111111111111
sha1_restart=2222222222222222222222222222222222222222
sha1_mtls=2d2b5c5e5b1f3a4c6d7e8f90a1b2c3d4e5f60718

run() {  # run NAME ARGS...: the example's stdout/stderr in $work/NAME.{out,err}, exit code in $code
  local name="$1"; shift
  set +e
  "$PY" "$example" --target "$target" "${auth[@]}" "$@" >"$work/$name.out" 2>"$work/$name.err"
  code=$?
  set -e
}
field() { sed -n "s/.*\"$1\":\"\([^\"]*\)\".*/\1/p" "$2" | head -n 1; }
# check_events FILE FINAL_STATUS: JSON lines submitted, status (each a new status, the last
# one final), final; one action id throughout.
check_events() {
  "$PY" - "$1" "$2" <<'PY' || fail "bad events in $1: $(cat "$1")"
import json, sys
events = [json.loads(line) for line in open(sys.argv[1])]
kinds = [e["event"] for e in events]
assert kinds[0] == "submitted" and kinds[-1] == "final", kinds
assert set(kinds[1:-1]) == {"status"}, kinds
assert events[0]["request_id"], events[0]
assert len({e["action_id"] for e in events}) == 1, events
statuses = [e["status"] for e in events[1:-1]]
assert all(a != b for a, b in zip(statuses, statuses[1:])), statuses
assert statuses[-1] == events[-1]["status"] == sys.argv[2], (statuses, events[-1])
PY
}

# (a) happy path: submitted, status..., final SUCCEEDED, exit 0; the sandbox got the call.
sb -X DELETE "$sandbox/sandbox/requests" >/dev/null
run happy --machine "$machine" --sha1 "$sha1" --comment "python example"
[ "$code" -eq 0 ] || fail "happy path exited $code: $(cat "$work/happy.err")"
check_events "$work/happy.out" MACHINE_ACTION_STATUS_SUCCEEDED
grep -q '"event":"status","action_id":"[^"]*","status":"MACHINE_ACTION_STATUS_PENDING"' \
  "$work/happy.out" || fail "PENDING not seen: $(cat "$work/happy.out")"
[ "$(upstream_posts)" -eq 1 ] || fail "the sandbox did not get one StopAndQuarantineFile"
sb "$sandbox/sandbox/requests" | grep -q "\"path\":\"/api/machines/$machine/StopAndQuarantineFile\"" \
  || fail "the StopAndQuarantineFile was not for $machine"

# (b) the same --request-id twice: the same action, one upstream request.
sb -X DELETE "$sandbox/sandbox/requests" >/dev/null
run again1 --machine "$machine" --sha1 "$sha1" --comment "retry" --request-id py-retry-1
[ "$code" -eq 0 ] || fail "first run exited $code"
run again2 --machine "$machine" --sha1 "$sha1" --comment "retry" --request-id py-retry-1
[ "$code" -eq 0 ] || fail "second run exited $code"
id1="$(field action_id "$work/again1.out")"
[ -n "$id1" ] && [ "$id1" = "$(field action_id "$work/again2.out")" ] || fail "a retry gave another action"
[ "$(field request_id "$work/again2.out")" = py-retry-1 ] || fail "the request id was not printed"
posts="$(upstream_posts)"
[ "$posts" -eq 1 ] || fail "$posts upstream StopAndQuarantineFile calls, not one"

# (c) invalid sha1: exit 3, INVALID_ARGUMENT with its reason, no upstream request.
sb -X DELETE "$sandbox/sandbox/requests" >/dev/null
run bad --machine "$machine" --sha1 not-a-hash --comment "bad"
[ "$code" -eq 3 ] || fail "invalid sha1 exited $code"
grep -q "^quarantine_and_watch: INVALID_ARGUMENT: .*\[INVALID_SHA1\]$" "$work/bad.err" \
  || fail "no INVALID_ARGUMENT [INVALID_SHA1]: $(cat "$work/bad.err")"
[ ! -s "$work/bad.out" ] || fail "an invalid call printed events"
[ "$(upstream_posts)" -eq 0 ] || fail "an invalid call went upstream"

# (d) usage errors: exit 2 before any call.
sb -X DELETE "$sandbox/sandbox/requests" >/dev/null
usage_case() {  # usage_case NAME ARGS...
  run "$@"
  [ "$code" -eq 2 ] || fail "usage error $1 exited $code"
  grep -q "^quarantine_and_watch: " "$work/$1.err" || fail "usage error $1 not explained"
}
usage_case no-comment --machine "$machine" --sha1 "$sha1"
usage_case unknown-flag --machine "$machine" --sha1 "$sha1" --comment x --no-such-flag
usage_case two-hashes --machine "$machine" --sha1 "$sha1" --sha256 "$sha1" --comment x
usage_case cert-without-ca --machine "$machine" --sha1 "$sha1" --comment x --tls-cert a --tls-key b
usage_case no-token-file --machine "$machine" --sha1 "$sha1" --comment x --token-file "$work/none"
[ "$(upstream_posts)" -eq 0 ] || fail "a usage error called upstream"

# (e) an action that fails: created first (defenderctl, request id py-fail-1), then
# the sandbox answers every GET of it as Failed (a fault: the POST is not touched);
# the step, retried with that request id, gets the same action and watches it fail.
start_plugin open  # no --authz, its own journal: a second door to the same sandbox
open_target="$target"
"$BIN/tools/defenderctl" quarantine --target "$open_target" --machine "$machine" --sha1 "$sha1_fail" \
  --comment "fail" --request-id py-fail-1 >"$work/created.json" || fail "defenderctl quarantine"
failed_id="$(sed -n 's/.*"id": "\([^"]*\)".*/\1/p' "$work/created.json" | head -n 1)"
[ -n "$failed_id" ] || fail "no action id from defenderctl"
cat >"$work/fault.json" <<JSON
{"method":"GET","path_regex":"^/api/machineactions/$failed_id\$","times":-1,"status":200,
 "body":"{\"id\":\"$failed_id\",\"type\":\"StopAndQuarantineFile\",\"status\":\"Failed\",\"machineId\":\"$machine\",\"computerDnsName\":\"desktop-1.contoso.com\",\"requestorComment\":\"fail\",\"creationDateTimeUtc\":\"2026-01-01T00:00:00Z\",\"lastUpdateDateTimeUtc\":\"2026-01-01T00:00:01Z\"}"}
JSON
sb -X POST -H 'Content-Type: application/json' --data @"$work/fault.json" "$sandbox/sandbox/faults" >/dev/null \
  || fail "could not set the fault"
sb -X DELETE "$sandbox/sandbox/requests" >/dev/null
auth=()
target="$open_target"
run failed --machine "$machine" --sha1 "$sha1_fail" --comment "fail" --request-id py-fail-1
sb -X DELETE "$sandbox/sandbox/faults" >/dev/null
[ "$code" -eq 1 ] || fail "a failed action exited $code: $(cat "$work/failed.out" "$work/failed.err")"
check_events "$work/failed.out" MACHINE_ACTION_STATUS_FAILED
[ "$(field action_id "$work/failed.out")" = "$failed_id" ] || fail "watched another action"
tail -n 1 "$work/failed.out" | grep -q '"defender_status":"Failed"' || fail "no defender_status"
[ "$(upstream_posts)" -eq 0 ] || fail "the retried step quarantined again"

# (h) the plugin restarts mid-watch: the watch ends with UNAVAILABLE (SHUTTING_DOWN),
# the step opens it again on the plugin started anew (same address, same journal)
# and ends with SUCCEEDED, each status printed once. A fault holds the action
# Pending until the new plugin is up.
open_pid="${pids[-1]}"
"$BIN/tools/defenderctl" quarantine --target "$open_target" --machine "$machine" \
  --sha1 "$sha1_restart" --comment "restart" --request-id py-restart-1 >"$work/created2.json" \
  || fail "defenderctl quarantine"
restart_id="$(sed -n 's/.*"id": "\([^"]*\)".*/\1/p' "$work/created2.json" | head -n 1)"
sed -e "s/$failed_id/$restart_id/g" -e 's/\\"Failed\\"/\\"Pending\\"/' "$work/fault.json" \
  >"$work/pending.json"
grep -q Pending "$work/pending.json" || fail "no Pending fault"
sb -X POST -H 'Content-Type: application/json' --data @"$work/pending.json" "$sandbox/sandbox/faults" \
  >/dev/null || fail "could not set the fault"
"$PY" "$example" --target "$open_target" --machine "$machine" --sha1 "$sha1_restart" --comment "restart" \
  --request-id py-restart-1 >"$work/restart.out" 2>"$work/restart.err" &
step=$!
for _ in $(seq 300); do grep -q '"event":"status"' "$work/restart.out" && break; sleep 0.1; done
grep -q '"status":"MACHINE_ACTION_STATUS_PENDING"' "$work/restart.out" || fail "no PENDING before the restart"
kill -TERM "$open_pid"
wait "$open_pid" || fail "the plugin did not exit 0 on SIGTERM"
AZURE_TENANT_ID=11111111-1111-1111-1111-111111111111 \
AZURE_CLIENT_ID=22222222-2222-2222-2222-222222222222 \
AZURE_CLIENT_SECRET=sandbox-secret \
AZURE_AUTHORITY_HOST="$sandbox" DEFENDER_API_URL="$sandbox" DEFENDER_CA_FILE="$work/ca.pem" \
  "$BIN/server/defender-plugin" --listen "$open_target" --state-dir "$work/open-state" \
  --watch-poll-seconds 1 >"$work/open2.log" 2>&1 &
pids+=($!)
sb -X DELETE "$sandbox/sandbox/faults" >/dev/null
set +e
wait "$step"
code=$?
set -e
[ "$code" -eq 0 ] || fail "the step across a restart exited $code: $(cat "$work/restart.out" "$work/restart.err")"
check_events "$work/restart.out" MACHINE_ACTION_STATUS_SUCCEEDED
[ ! -s "$work/restart.err" ] || fail "the step complained: $(cat "$work/restart.err")"

# (f) mutual TLS to a third plugin: --tls-ca, --tls-cert, --tls-key.
tls_pair listener IP:127.0.0.1 serverAuth
tls_pair runner DNS:runner.contoso.com clientAuth
start_plugin tls --tls-cert "$work/listener.crt" --tls-key "$work/listener.key" \
  --client-ca "$work/runner.crt"
run mtls --tls-ca "$work/listener.crt" --tls-cert "$work/runner.crt" --tls-key "$work/runner.key" \
  --machine "$machine" --sha1 "$sha1_mtls" --comment "mtls"
[ "$code" -eq 0 ] || fail "the mutual TLS run exited $code: $(cat "$work/mtls.err")"
check_events "$work/mtls.out" MACHINE_ACTION_STATUS_SUCCEEDED
run notls --machine "$machine" --sha1 "$sha1" --comment "plaintext to TLS"
[ "$code" -eq 3 ] || fail "plaintext to a TLS listener exited $code"
grep -q "^quarantine_and_watch: UNAVAILABLE: " "$work/notls.err" || fail "no UNAVAILABLE: $(cat "$work/notls.err")"

# (g) the token: without it the --authz plugin refuses (exit 3, PERMISSION_DENIED
# CALLER_NOT_ALLOWED); with it the runs above got through. Then: no client secret,
# token or private key in anything printed or logged.
target="127.0.0.1:$(cat "$work/plugin.port")"
run denied --machine "$machine" --sha1 "$sha1" --comment "no token"
[ "$code" -eq 3 ] || fail "a call without the token exited $code"
grep -q "^quarantine_and_watch: PERMISSION_DENIED: .*\[CALLER_NOT_ALLOWED\]$" "$work/denied.err" \
  || fail "no PERMISSION_DENIED [CALLER_NOT_ALLOWED]: $(cat "$work/denied.err")"
grep -q '"caller":"soar"' <("$BIN/tools/defenderctl" audit --state-dir "$work/plugin-state") \
  || fail "the journal does not name the token's caller"
outputs=("$work"/*.out "$work"/*.err "$work"/*.log)
if grep -l "PRIVATE KEY" "${outputs[@]}"; then fail "a private key appears in output"; fi
if grep -l "sandbox-secret" "${outputs[@]}"; then fail "the client secret appears in output"; fi
if grep -l -F "$token" "${outputs[@]}"; then fail "the bearer token appears in output"; fi
echo "example_test: ok"
