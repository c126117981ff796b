#!/usr/bin/env bash
# The Go client's example playbook step (clients/go/examples/quarantine_and_watch)
# against the real defender-plugin and defender-sandbox: (a) happy path, (b) idempotent
# retry, (c) invalid input, (d) usage errors, (e) a failed action, (f) mutual TLS,
# (g) the --authz bearer token, (h) no secret, token or private key in any output.
# Usage: example_test.sh BUILD_DIR SOURCE_DIR
set -euo pipefail
BIN="$1"
SRC="$2"
. "$SRC/tests/testlib.sh"  # $work, $pids, fail, start_sandbox, sb, start_plugin ...
PY=/usr/bin/python3
gopath="$work/gopath"
bash "$SRC/clients/go/generate.sh" "$gopath/src" "$SRC/proto" || fail "clients/go/generate.sh"
(cd "$SRC/clients/go/examples/quarantine_and_watch" &&
  GO111MODULE=off GOPATH="$gopath:/usr/share/gocode" GOCACHE="$BIN/clients/go/gocache" \
    go build -o "$work/quarantine_and_watch" .) || fail "go build of the example"
start_sandbox --action-step-ms 200
start_plugin plugin
machine=1e5bc9d7e413ddd7902c2932e418702b84d0cc07
sha1=87662bc3d60e4200ceaf7aae249d1c343f4b83c9

run() {  # run NAME ARGS...: the example's stdout/stderr in $work/NAME.{out,err}, exit code in $code
  local name="$1"; shift
  set +e
  "$work/quarantine_and_watch" --target "$target" "$@" >"$work/$name.out" 2>"$work/$name.err"
  code=$?
  set -e
}
field() { sed -n "s/.*\"$1\":\"\([^\"]*\)\".*/\1/p" "$2" | head -n 1; }

# (a) happy path: submitted, status..., final SUCCEEDED, exit 0; the sandbox got the call.
sb -X DELETE "$sandbox/sandbox/requests" >/dev/null
run happy --machine "$machine" --sha1 "$sha1" --comment "go example"
[ "$code" -eq 0 ] || fail "happy path exited $code: $(cat "$work/happy.err")"
head -n 1 "$work/happy.out" | grep -q '"event":"submitted"' || fail "no submitted line first"
grep -q '"event":"status"' "$work/happy.out" || fail "no status line"
tail -n 1 "$work/happy.out" | grep -q '"event":"final".*"status":"MACHINE_ACTION_STATUS_SUCCEEDED"' \
  || fail "did not end with final SUCCEEDED: $(cat "$work/happy.out")"
"$PY" -c 'import json,sys; [json.loads(l) for l in open(sys.argv[1])]' "$work/happy.out" \
  || fail "stdout is not JSON lines"
[ -n "$(field request_id "$work/happy.out")" ] || fail "no request id printed"
grep -q StopAndQuarantineFile <(sb "$sandbox/sandbox/requests") || fail "sandbox got no StopAndQuarantineFile"

# (b) the same --request-id twice: the same action, one upstream request.
sb -X DELETE "$sandbox/sandbox/requests" >/dev/null
run again1 --machine "$machine" --sha1 "$sha1" --comment "retry" --request-id go-retry-1
[ "$code" -eq 0 ] || fail "first run exited $code"
run again2 --machine "$machine" --sha1 "$sha1" --comment "retry" --request-id go-retry-1
[ "$code" -eq 0 ] || fail "second run exited $code"
id1="$(field action_id "$work/again1.out")"
[ -n "$id1" ] && [ "$id1" = "$(field action_id "$work/again2.out")" ] || fail "a retry gave another action"
posts="$(upstream_posts)"
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
tail -n 1 "$work/failed.out" | grep -q '"event":"final".*"status":"MACHINE_ACTION_STATUS_FAILED"' \
  || fail "did not end with final FAILED: $(cat "$work/failed.out")"

# (f) mutual TLS to a second plugin: --tls-ca, --tls-cert, --tls-key; plaintext to it fails.
tls_pair listener IP:127.0.0.1 serverAuth
tls_pair runner DNS:runner.contoso.com clientAuth
start_plugin tls --tls-cert "$work/listener.crt" --tls-key "$work/listener.key" \
  --client-ca "$work/runner.crt"
run mtls --tls-ca "$work/listener.crt" --tls-cert "$work/runner.crt" --tls-key "$work/runner.key" \
  --machine "$machine" --sha1 2d2b5c5e5b1f3a4c6d7e8f90a1b2c3d4e5f60718 --comment "mtls"
[ "$code" -eq 0 ] || fail "the mutual TLS run exited $code: $(cat "$work/mtls.err")"
tail -n 1 "$work/mtls.out" | grep -q '"event":"final".*"status":"MACHINE_ACTION_STATUS_SUCCEEDED"' \
  || fail "mutual TLS: did not end with final SUCCEEDED: $(cat "$work/mtls.out")"
run notls --machine "$machine" --sha1 "$sha1" --comment "plaintext to TLS"
[ "$code" -eq 3 ] || fail "plaintext to a TLS listener exited $code"
grep -q "^quarantine_and_watch: UNAVAILABLE: " "$work/notls.err" || fail "no UNAVAILABLE: $(cat "$work/notls.err")"
run nokey --tls-ca "$work/listener.crt" --tls-cert "$work/runner.crt" \
  --machine "$machine" --sha1 "$sha1" --comment "x"
[ "$code" -eq 2 ] || fail "--tls-cert without --tls-key exited $code"

# (g) --token-file against a plugin with --authz: with the token the step succeeds (and the
# journal names the caller); without it PERMISSION_DENIED [CALLER_NOT_ALLOWED], exit 3.
token="go-token-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
printf '%s\n' "$token" >"$work/token"
printf '{"callers": [{"name": "soar", "tokenFile": "%s", "tenants": ["*"]}]}' "$work/token" \
  >"$work/authz.json"
start_plugin authz --authz "$work/authz.json"
run token --token-file "$work/token" --machine "$machine" \
  --sha1 3333333333333333333333333333333333333333 --comment "token"
[ "$code" -eq 0 ] || fail "the run with --token-file exited $code: $(cat "$work/token.err")"
tail -n 1 "$work/token.out" | grep -q '"event":"final".*"status":"MACHINE_ACTION_STATUS_SUCCEEDED"' \
  || fail "--token-file: did not end with final SUCCEEDED: $(cat "$work/token.out")"
grep -q '"caller":"soar"' <("$BIN/tools/defenderctl" audit --state-dir "$work/authz-state") \
  || fail "the journal does not name the token's caller"
run denied --machine "$machine" --sha1 3333333333333333333333333333333333333333 --comment "no token"
[ "$code" -eq 3 ] || fail "a call without the token exited $code"
grep -q "^quarantine_and_watch: PERMISSION_DENIED: .*\[CALLER_NOT_ALLOWED\]$" "$work/denied.err" \
  || fail "no PERMISSION_DENIED [CALLER_NOT_ALLOWED]: $(cat "$work/denied.err")"
run notoken --token-file "$work/none" --machine "$machine" --sha1 "$sha1" --comment x
[ "$code" -eq 2 ] || fail "an unreadable --token-file exited $code"

# (h) no secret in any output or log: the client secret, the private keys, the token.
outputs=("$work"/*.out "$work"/*.err "$work"/*.log)
if grep -l "PRIVATE KEY" "${outputs[@]}"; then fail "a private key appears in output"; fi
if grep -l "sandbox-secret" "${outputs[@]}"; then fail "the client secret appears in output"; fi
if grep -l -F "$token" "${outputs[@]}"; then fail "the bearer token appears in output"; fi
echo "example_test: ok"
