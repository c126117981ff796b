#!/usr/bin/env bash
# go-plugin mode's handshake through the binary, without a Go host: a wrong or
# missing cookie, an unknown protocol version and a bad port range exit 1 and
# say why; the plaintext handshake line is exact and alone on stdout; SIGINT is
# ignored, SIGTERM drains and exits 0; AutoMTLS (mtls_check.py) refuses a
# client certificate other than PLUGIN_CLIENT_CERT and serves StreamStdio and
# Shutdown. Usage: handshake_test.sh BUILD_DIR
set -euo pipefail
BIN="$1"
. "$(dirname "$0")/../testlib.sh"  # $work, $pids, fail, wait_for_file
plugin="$BIN/server/defender-plugin"
cookie=1730f8505d13f6ce434bcf7df0efeee5e892ba5307a31e4b6af93b6ebe40d0a0

# Settings the plugin needs to start (nothing is sent anywhere here).
export AZURE_TENANT_ID=11111111-1111-1111-1111-111111111111
export AZURE_CLIENT_ID=22222222-2222-2222-2222-222222222222
export AZURE_CLIENT_SECRET=handshake-secret
export DEFENDER_API_URL=https://127.0.0.1:9 DEFENDER_STATE_DIR="$work/state"

expect_exit_1() {  # expect_exit_1 WHAT PATTERN ENV... -- ARGS...: exit 1, PATTERN on stderr, stdout empty
  local what="$1" pattern="$2"
  shift 2
  local envs=()
  while [ "$1" != "--" ]; do envs+=("$1"); shift; done
  shift
  set +e
  env "${envs[@]}" "$plugin" "$@" >"$work/out" 2>"$work/err"
  local code=$?
  set -e
  [ "$code" -eq 1 ] || fail "$what: exit $code, want 1 ($(cat "$work/err"))"
  grep -q "$pattern" "$work/err" || fail "$what: stderr lacks '$pattern': $(cat "$work/err")"
  [ ! -s "$work/out" ] || fail "$what: stdout not empty: $(cat "$work/out")"
}
expect_exit_1 "wrong cookie" "^This binary is a plugin. These are not meant to be executed directly.$" \
  DEFENDER_PLUGIN_MAGIC_COOKIE=nope --
expect_exit_1 "--go-plugin without a cookie" "^This binary is a plugin" --  --go-plugin
expect_exit_1 "unknown protocol version" "speaks only version 1" \
  DEFENDER_PLUGIN_MAGIC_COOKIE=$cookie PLUGIN_PROTOCOL_VERSIONS=2,3 --
expect_exit_1 "reversed port range" "PLUGIN_MIN_PORT (30001) is greater than PLUGIN_MAX_PORT (30000)" \
  DEFENDER_PLUGIN_MAGIC_COOKIE=$cookie PLUGIN_MIN_PORT=30001 PLUGIN_MAX_PORT=30000 --
expect_exit_1 "bad PLUGIN_CLIENT_CERT" "PLUGIN_CLIENT_CERT holds no PEM certificate" \
  DEFENDER_PLUGIN_MAGIC_COOKIE=$cookie "PLUGIN_CLIENT_CERT=not a certificate" --
if grep -q "handshake-secret" "$work/err"; then fail "secret on stderr"; fi

# Plaintext (no PLUGIN_CLIENT_CERT), in a port range whose first port is taken
# by the sandbox-less listener below: the plugin takes the next one.
/usr/bin/python3 -c '
import socket, sys, time
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen()
print(s.getsockname()[1], flush=True); time.sleep(60)' >"$work/busy.port" &
pids+=($!)
wait_for_file "$work/busy.port"
busy="$(cat "$work/busy.port")"
DEFENDER_PLUGIN_MAGIC_COOKIE=$cookie PLUGIN_PROTOCOL_VERSIONS=1 \
  PLUGIN_MIN_PORT="$busy" PLUGIN_MAX_PORT="$((busy + 20))" \
  "$plugin" >"$work/plain.out" 2>"$work/plain.log" &
plain=$!
pids+=($plain)
wait_for_file "$work/plain.out"
line="$(head -n 1 "$work/plain.out")"
[[ "$line" =~ ^1\|1\|tcp\|127\.0\.0\.1:([0-9]+)\|grpc$ ]] || fail "handshake line '$line'"
port="${BASH_REMATCH[1]}"
[ "$port" -gt "$busy" ] && [ "$port" -le "$((busy + 20))" ] \
  || fail "port $port is not in the range after the busy $busy"
kill -INT "$plain"
sleep 0.5
kill -0 "$plain" 2>/dev/null || fail "SIGINT stopped the plugin in go-plugin mode"
grep -q "SIGINT ignored" "$work/plain.log" || fail "SIGINT not logged as ignored"
kill -TERM "$plain"
set +e
wait "$plain"; code=$?
set -e
[ "$code" -eq 0 ] || fail "SIGTERM: exit $code"
[ "$(wc -l <"$work/plain.out")" -eq 1 ] || fail "stdout holds more than the line: $(cat "$work/plain.out")"
grep -q "over plaintext" "$work/plain.log" || fail "the start line does not say plaintext"

# AutoMTLS: certificates as go-plugin hosts make them (self-signed, CA, both
# key usages, CN and SAN localhost), A given to the plugin, B a stranger's.
for name in a b; do
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-521 -nodes -days 1 \
    -subj "/O=HashiCorp/CN=localhost" -addext "subjectAltName=DNS:localhost" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,digitalSignature,keyEncipherment,keyAgreement,keyCertSign" \
    -addext "extendedKeyUsage=clientAuth,serverAuth" \
    -keyout "$work/$name.key" -out "$work/$name.crt" 2>/dev/null || fail "openssl req $name"
done
/usr/bin/python3 "$(dirname "$0")/mtls_check.py" "$plugin" "$work" "$cookie" || fail "AutoMTLS check"
grep -q "over mutual TLS (go-plugin AutoMTLS)" "$work/mtls-plugin.log" || fail "no AutoMTLS start line"
if grep -q "handshake-secret\|PRIVATE KEY" "$work/mtls-plugin.log" "$work/plain.log"; then
  fail "a secret or key in the plugin's log"
fi
echo "handshake_test: ok"
