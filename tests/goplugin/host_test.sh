#!/usr/bin/env bash
# defender-plugin under a real HashiCorp go-plugin host: builds
# tests/goplugin/host (Debian's go-plugin 1.0.1, GOPATH mode, offline) against
# Go stubs generated from proto/defender/v1 (clients/go/generate.sh), starts
# defender-sandbox, and lets the host launch the plugin with AutoMTLS,
# quarantine a file, and Kill it (GRPCController.Shutdown, then a check that
# the process exited 0).
# Usage: host_test.sh BUILD_DIR SOURCE_DIR
set -euo pipefail
BIN="$(cd "$1" && pwd)"
SRC="$(cd "$2" && pwd)"
. "$(dirname "$0")/../testlib.sh"  # $work, $pids, fail, wait_for_file

# Go stubs for defender.v1: clients/go/generate.sh, the one recipe (Debian's
# protoc-gen-go 1.28 and protoc-gen-go-grpc; the google.rpc and timestamp
# imports map to Debian's Go packages).
gopath="$work/gopath"
bash "$SRC/clients/go/generate.sh" "$gopath/src" "$SRC/proto" || fail "clients/go/generate.sh"
mkdir -p "$BIN/tests/goplugin-gocache"
(cd "$SRC/tests/goplugin/host" &&
  GO111MODULE=off GOPATH="$gopath:/usr/share/gocode" GOCACHE="$BIN/tests/goplugin-gocache" \
    go build -o "$work/host" .) || fail "go build of the host"

"$BIN/tools/defender-sandbox" --listen 127.0.0.1:0 --port-file "$work/sandbox.port" \
  --ca-out "$work/ca.pem" >"$work/sandbox.log" 2>&1 &
pids+=($!)
wait_for_file "$work/sandbox.port"
sandbox="https://127.0.0.1:$(cat "$work/sandbox.port")"

machine=1e5bc9d7e413ddd7902c2932e418702b84d0cc07
sha1=87662bc3d60e4200ceaf7aae249d1c343f4b83c9
set +e
AZURE_TENANT_ID=11111111-1111-1111-1111-111111111111 \
AZURE_CLIENT_ID=22222222-2222-2222-2222-222222222222 \
AZURE_CLIENT_SECRET=sandbox-secret \
AZURE_AUTHORITY_HOST="$sandbox" DEFENDER_API_URL="$sandbox" DEFENDER_CA_FILE="$work/ca.pem" \
DEFENDER_STATE_DIR="$work/state" \
  "$work/host" -plugin "$BIN/server/defender-plugin" -machine "$machine" -sha1 "$sha1" \
  >"$work/host.out" 2>"$work/host.log"
code=$?
set -e
cat "$work/host.out"
[ "$code" -eq 0 ] || fail "the host exited $code: $(grep -v '^$' "$work/host.log" | tail -n 20)"
grep -q "^host: ok$" "$work/host.out" || fail "the host did not finish its checks"
id="$(sed -n 's/^action id //p' "$work/host.out")"
[ -n "$id" ] || fail "the host printed no action id"

# The action exists in the sandbox, and the journal names the host's AutoMTLS
# certificate (CN/SAN localhost) as the caller.
"$BIN/tools/defenderctl" audit --state-dir "$work/state" >"$work/audit.jsonl" || fail "audit"
grep -q "\"action_id\":\"$id\".*\"caller\":\"localhost\"\|\"caller\":\"localhost\".*\"action_id\":\"$id\"" \
  "$work/audit.jsonl" || fail "the journal lacks the action or its caller: $(cat "$work/audit.jsonl")"
grep -q "StopAndQuarantineFile" <(curl -sf --cacert "$work/ca.pem" "$sandbox/sandbox/requests") \
  || fail "the sandbox received no StopAndQuarantineFile"

# The plugin's log went to the host (stderr), with the start line and the
# drain; no secret in anything the host printed.
grep -q "over mutual TLS (go-plugin AutoMTLS)" "$work/host.log" || fail "no AutoMTLS start line"
grep -q "stopped" "$work/host.log" || fail "the plugin did not log its stop"
if grep -q "sandbox-secret" "$work/host.log" "$work/host.out"; then fail "secret in the output"; fi
if grep -q "PRIVATE KEY" "$work/host.log" "$work/host.out"; then fail "a private key in the output"; fi
echo "host_test: ok"
