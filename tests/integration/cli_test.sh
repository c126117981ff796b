#!/usr/bin/env bash
# The binaries end to end: defender-sandbox, defender-plugin and defenderctl as
# separate processes. Checks the CLI's output and exit codes, and that the
# plugin exits 0 on SIGTERM. Usage: cli_test.sh BUILD_DIR
set -euo pipefail
BIN="$1"
. "$(dirname "$0")/../testlib.sh"  # $work, $pids, fail, wait_for_file, tls_pair, start_sandbox

start_sandbox --action-step-ms 200

AZURE_TENANT_ID=11111111-1111-1111-1111-111111111111 \
AZURE_CLIENT_ID=22222222-2222-2222-2222-222222222222 \
AZURE_CLIENT_SECRET=sandbox-secret \
AZURE_AUTHORITY_HOST="$sandbox" DEFENDER_API_URL="$sandbox" DEFENDER_CA_FILE="$work/ca.pem" \
  "$BIN/server/defender-plugin" --listen 127.0.0.1:0 --port-file "$work/plugin.port" \
  --state-dir "$work/state" --watch-poll-seconds 1 >"$work/plugin.log" 2>&1 &
plugin=$!
pids+=($plugin)
wait_for_file "$work/plugin.port"
target="127.0.0.1:$(cat "$work/plugin.port")"
ctl="$BIN/tools/defenderctl"

# quarantine prints the action as JSON.
"$ctl" quarantine --target "$target" --machine 1e5bc9d7e413ddd7902c2932e418702b84d0cc07 \
  --sha1 87662bc3d60e4200ceaf7aae249d1c343f4b83c9 --comment "cli test" >"$work/action.json" \
  || fail "quarantine failed"
grep -q '"status": "MACHINE_ACTION_STATUS_PENDING"' "$work/action.json" || fail "not pending"
grep -q '"requestor_comment": "cli test"' "$work/action.json" || fail "no comment"
id="$(sed -n 's/.*"id": "\([^"]*\)".*/\1/p' "$work/action.json" | head -n 1)"
[ -n "$id" ] || fail "no action id"

# get-action finds it.
"$ctl" get-action --target "$target" "$id" >"$work/get.json" || fail "get-action failed"
grep -q "\"id\": \"$id\"" "$work/get.json" || fail "get-action returned another action"

# watch prints one line per status change, ending with SUCCEEDED.
"$ctl" watch --target "$target" "$id" >"$work/watch.jsonl" || fail "watch failed"
tail -n 1 "$work/watch.jsonl" | grep -q '"status":"MACHINE_ACTION_STATUS_SUCCEEDED"' \
  || fail "watch did not end with SUCCEEDED: $(cat "$work/watch.jsonl")"

# cancel of that final action: FAILED_PRECONDITION, exit 1.
if "$ctl" cancel --target "$target" "$id" --comment "too late" 2>"$work/cancel-err.txt"; then
  fail "cancel of a final action succeeded"
fi
grep -q "ACTION_ALREADY_FINAL" "$work/cancel-err.txt" || fail "no ACTION_ALREADY_FINAL"

# quarantine by host name and SHA-256, with a request id, twice: one action.
by_name() {
  "$ctl" quarantine --target "$target" --host desktop-2.contoso.com \
    --sha256 ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad \
    --comment "by name" --request-id cli-1
}
by_name >"$work/by-name-1.json" || fail "quarantine by host name failed"
by_name >"$work/by-name-2.json" || fail "repeated quarantine failed"
first_id="$(sed -n 's/.*"id": "\([^"]*\)".*/\1/p' "$work/by-name-1.json" | head -n 1)"
grep -q "\"id\": \"$first_id\"" "$work/by-name-2.json" || fail "repeat gave another action"

# batch: one line per device; exit 1 because one device is ambiguous.
set +e
"$ctl" batch --target "$target" --machines c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4 \
  --hosts dup.contoso.com --sha1 87662bc3d60e4200ceaf7aae249d1c343f4b83c9 \
  --comment "cli batch" >"$work/batch.jsonl" 2>"$work/batch-err.txt"
code=$?
set -e
[ "$code" -eq 1 ] || fail "batch with a failing device exited $code"
[ "$(wc -l <"$work/batch.jsonl")" -eq 2 ] || fail "batch did not print two lines"
grep -q '"code":9' "$work/batch.jsonl" || fail "no FAILED_PRECONDITION for the ambiguous name"

# audit reads the journal: every action, who asked, the outcome.
"$ctl" audit --state-dir "$work/state" >"$work/audit.jsonl" || fail "audit failed"
grep -q '"request_id":"cli-1".*"replays":1' "$work/audit.jsonl" || fail "audit lacks the repeat"
grep -q '"method":"CancelMachineAction".*"reason":"ACTION_ALREADY_FINAL"' "$work/audit.jsonl" \
  || fail "audit lacks the refused cancel"
grep -q '"caller":"ipv4:127.0.0.1' "$work/audit.jsonl" || fail "audit lacks the caller"

# Invalid input: exit 1, the code and reason on stderr.
if "$ctl" quarantine --target "$target" --machine nope --sha1 87662bc3d60e4200ceaf7aae249d1c343f4b83c9 \
     --comment x 2>"$work/err.txt"; then fail "invalid machine accepted"; fi
grep -q "INVALID_ARGUMENT" "$work/err.txt" || fail "no status code on stderr"
grep -q "INVALID_MACHINE_ID" "$work/err.txt" || fail "no reason on stderr"

# Usage errors: exit 2.
set +e
"$ctl" frobnicate >/dev/null 2>&1; [ $? -eq 2 ] || fail "unknown command did not exit 2"
set -e

# Generic tools can discover the API through server reflection (Debian's
# python3-grpcio, not whatever python3 comes first on PATH).
/usr/bin/python3 "$(dirname "$0")/reflection_check.py" "$target" || fail "reflection"

# No secret in the logs.
if grep -q "sandbox-secret" "$work/plugin.log"; then fail "secret in the plugin's log"; fi

# SIGHUP: a second plugin started from a config file picks up a new tenant
# without a restart, and keeps running on a bad file.
printf '%s' sandbox-secret > "$work/secret"
write_config() {  # write_config TENANT_NAME...
  local entries="" name
  for name in "$@"; do
    entries="$entries${entries:+,}{\"name\": \"$name\", \"tenantId\": \"11111111-1111-1111-1111-111111111111\", \"apiUrl\": \"$sandbox\", \"authorityHost\": \"$sandbox\", \"credential\": {\"clientSecret\": {\"clientId\": \"22222222-2222-2222-2222-222222222222\", \"secretFile\": \"$work/secret\"}}}"
  done
  printf '{"tenants": [%s]}' "$entries" > "$work/plugin.json.tmp"
  mv "$work/plugin.json.tmp" "$work/plugin.json"
}
write_config first
DEFENDER_CA_FILE="$work/ca.pem" DEFENDER_STATE_DIR="$work/state2" \
  "$BIN/server/defender-plugin" --listen 127.0.0.1:0 \
  --port-file "$work/plugin2.port" --config "$work/plugin.json" >"$work/plugin2.log" 2>&1 &
plugin2=$!
pids+=($plugin2)
wait_for_file "$work/plugin2.port"
target2="127.0.0.1:$(cat "$work/plugin2.port")"
quarantine_on() {  # quarantine_on TENANT SHA1
  "$ctl" quarantine --target "$target2" --tenant "$1" --machine 1e5bc9d7e413ddd7902c2932e418702b84d0cc07 \
    --sha1 "$2" --comment "reload test" >/dev/null 2>"$work/reload-err.txt"
}
quarantine_on first 1111111111111111111111111111111111111111 || fail "config-file tenant"
if quarantine_on second 2222222222222222222222222222222222222222; then fail "unknown tenant accepted"; fi
write_config first second
kill -HUP "$plugin2"
for _ in $(seq 100); do grep -q "configuration reloaded" "$work/plugin2.log" && break; sleep 0.1; done
quarantine_on second 3333333333333333333333333333333333333333 || fail "tenant added by SIGHUP"
echo '{"tenants": [{"name": "first", "bogus": 1}]}' > "$work/plugin.json"
kill -HUP "$plugin2"
for _ in $(seq 100); do grep -q "reload refused" "$work/plugin2.log" && break; sleep 0.1; done
grep -q "reload refused.*bogus" "$work/plugin2.log" || fail "bad reload not explained"
quarantine_on second 4444444444444444444444444444444444444444 || fail "bad reload dropped tenants"
kill -TERM "$plugin2"
wait "$plugin2" || fail "plugin 2 did not exit 0"

# Mutual TLS: a plugin on a TLS listener that wants client certificates;
# defenderctl with the CA and a client certificate gets through, without the
# certificate it does not, and the refused plaintext listen explains itself.
if "$BIN/server/defender-plugin" --listen 0.0.0.0:0 --state-dir "$work/state3" \
    2>"$work/insecure-err.txt"; then
  fail "plaintext on 0.0.0.0 was accepted"
fi
grep -q -- "--insecure-listen" "$work/insecure-err.txt" || fail "refusal does not name --insecure-listen"
tls_pair listener IP:127.0.0.1 serverAuth
tls_pair runner DNS:runner.contoso.com clientAuth
AZURE_TENANT_ID=11111111-1111-1111-1111-111111111111 \
AZURE_CLIENT_ID=22222222-2222-2222-2222-222222222222 \
AZURE_CLIENT_SECRET=sandbox-secret \
AZURE_AUTHORITY_HOST="$sandbox" DEFENDER_API_URL="$sandbox" DEFENDER_CA_FILE="$work/ca.pem" \
  "$BIN/server/defender-plugin" --listen 127.0.0.1:0 --port-file "$work/plugin3.port" \
  --state-dir "$work/state3" --tls-cert "$work/listener.crt" --tls-key "$work/listener.key" \
  --client-ca "$work/runner.crt" >"$work/plugin3.log" 2>&1 &
plugin3=$!
pids+=($plugin3)
wait_for_file "$work/plugin3.port"
grep -q "over mutual TLS" "$work/plugin3.log" || fail "the plugin does not say it serves mutual TLS"
target3="127.0.0.1:$(cat "$work/plugin3.port")"
"$ctl" quarantine --target "$target3" --tls-ca "$work/listener.crt" \
  --tls-cert "$work/runner.crt" --tls-key "$work/runner.key" \
  --machine 1e5bc9d7e413ddd7902c2932e418702b84d0cc07 \
  --sha1 5555555555555555555555555555555555555555 --comment "mtls" >/dev/null \
  || fail "mutual TLS call failed"
if "$ctl" quarantine --target "$target3" --tls-ca "$work/listener.crt" --timeout-seconds 5 \
    --machine 1e5bc9d7e413ddd7902c2932e418702b84d0cc07 \
    --sha1 6666666666666666666666666666666666666666 --comment "no cert" 2>/dev/null; then
  fail "a call without a client certificate got through"
fi
"$ctl" audit --state-dir "$work/state3" | grep -q '"caller":"runner.contoso.com"' \
  || fail "the audit does not name the certificate's caller: $("$ctl" audit --state-dir "$work/state3")"
kill -TERM "$plugin3"
wait "$plugin3" || fail "plugin 3 did not exit 0"

# SIGTERM: the plugin drains and exits 0.
kill -TERM "$plugin"
set +e
wait "$plugin"; code=$?
set -e
[ "$code" -eq 0 ] || fail "plugin exited $code on SIGTERM"
echo "cli_test: ok"
