#!/usr/bin/env bash
# packaging/ checked against the build: `cmake --install` (DESTDIR and --prefix), the systemd
# unit (systemd-analyze verify and security, then its ExecStart run against the sandbox), the
# Dockerfile (what it copies exists, the builder's context configures, its runtime packages
# provide every library the binaries load, its ENTRYPOINT serves) and the Kubernetes manifests
# (kinds, flags, variables, mounts, then the container's args run against the sandbox).
# What no test here does: build or run the image (no Docker engine), start the unit under a
# running systemd (no PID 1 systemd), apply the manifests to a cluster.
# Usage: packaging_test.sh BUILD_DIR SOURCE_DIR
set -euo pipefail
BUILD="$(cd "$1" && pwd)"
SRC="$(cd "$2" && pwd)"
. "$SRC/tests/testlib.sh"  # $work, $pids, fail, wait_for_file, tls_pair
check() { /usr/bin/python3 "$SRC/tests/packaging/check_packaging.py" "$@"; }
SECURITY_THRESHOLD=20   # systemd-analyze security --threshold counts tenths: fail above exposure 2.0 (0 safest, 10 unprotected)

# --- cmake --install into DESTDIR with --prefix /usr: the default components only.
dest="$work/dest"
DESTDIR="$dest" cmake --install "$BUILD" --prefix /usr >"$work/install.log" || fail "cmake --install"
for path in usr/bin/defender-plugin usr/bin/defenderctl \
    usr/lib/systemd/system/defender-plugin.service \
    usr/share/doc/defender-plugin/examples/defender-plugin.env \
    usr/share/doc/defender-plugin/examples/plugin.json \
    usr/share/doc/defender-plugin/examples/authz.json \
    usr/share/defender-plugin/proto/defender/v1/response_service.proto \
    usr/share/defender-plugin/proto/defender/v1/config.proto \
    usr/share/defender-plugin/proto/google/rpc/status.proto \
    usr/share/defender-plugin/proto/google/rpc/error_details.proto; do
  [ -e "$dest/$path" ] || fail "cmake --install did not install /$path"
done
[ ! -e "$dest/usr/bin/defender-sandbox" ] || fail "a default install includes the test sandbox"
if find "$dest" -path '*CMakeFiles*' -o -name '*.a' | grep -q .; then fail "build files installed"; fi
grep -qx 'ExecStart=/usr/bin/defender-plugin --listen ${DEFENDER_LISTEN} \\' \
  "$dest/usr/lib/systemd/system/defender-plugin.service" \
  || fail "the installed unit does not run /usr/bin/defender-plugin: $(grep ExecStart "$dest/usr/lib/systemd/system/defender-plugin.service")"
DESTDIR="$dest" cmake --install "$BUILD" --prefix /usr --component sandbox >/dev/null \
  || fail "cmake --install --component sandbox"
[ -x "$dest/usr/bin/defender-sandbox" ] || fail "--component sandbox did not install the sandbox"
for binary in defender-plugin defender-sandbox; do
  "$dest/usr/bin/$binary" --help >"$work/$binary.help" 2>&1 || fail "installed $binary --help"
done
# defenderctl has no --help: without a command it prints its usage and exits 2.
set +e
"$dest/usr/bin/defenderctl" >"$work/defenderctl.help" 2>&1
code=$?
set -e
[ "$code" -eq 2 ] && grep -q "usage:" "$work/defenderctl.help" \
  || fail "installed defenderctl: exit $code, $(head -n 2 "$work/defenderctl.help")"
grep -q -- '--client-secret-file' "$work/defender-plugin.help" || fail "defender-plugin --help lists no flags"
# The installed protos are enough to generate a client (google/protobuf/* come with protoc).
protoc -I "$dest/usr/share/defender-plugin/proto" -I /usr/include --descriptor_set_out=/dev/null \
  defender/v1/response_service.proto defender/v1/config.proto google/rpc/error_details.proto \
  || fail "the installed .proto files do not compile on their own"
echo "install: DESTDIR tree ok, sandbox only as its own component, installed protos compile"

# --- the unit, installed with a prefix of its own so its ExecStart names a real file.
prefix="$work/prefix"
cmake --install "$BUILD" --prefix "$prefix" >/dev/null || fail "cmake --install --prefix"
unit="$prefix/lib/systemd/system/defender-plugin.service"
grep -q "^ExecStart=$prefix/bin/defender-plugin " "$unit" || fail "--prefix did not reach ExecStart"
# verify prints warnings (unknown keys, bad values) and still exits 0: any output fails.
systemd-analyze verify "$unit" >"$work/verify.txt" 2>&1 || fail "systemd-analyze verify: $(cat "$work/verify.txt")"
[ ! -s "$work/verify.txt" ] || fail "systemd-analyze verify complains: $(cat "$work/verify.txt")"
systemd-analyze security --offline=yes --threshold="$SECURITY_THRESHOLD" "$unit" >"$work/security.txt" 2>&1 \
  || fail "systemd-analyze security: exposure above $SECURITY_THRESHOLD tenths: $(tail -n 1 "$work/security.txt")"
echo "unit: systemd-analyze verify clean; $(grep 'Overall exposure' "$work/security.txt" | sed 's/ *[^ ]*$//') (allowed: at most $SECURITY_THRESHOLD tenths)"

# --- test material: the listener's certificate, a caller's certificate (its own CA), the
# client secret of the sandbox's app (a value of this test only).
tls_pair listener IP:127.0.0.1 serverAuth
tls_pair runner DNS:runner.contoso.com clientAuth
secret="packaging-test-$RANDOM$RANDOM"
materials="$work/materials"
mkdir -m 0700 "$materials"
cp "$work/listener.crt" "$materials/tls.crt"
cp "$work/listener.key" "$materials/tls.key"
cp "$work/runner.crt" "$materials/ca.crt"
printf '%s\n' "$secret" >"$materials/client-secret"

# The sandbox knows the app of the examples (tenant and client id all zeros).
zeros=00000000-0000-0000-0000-000000000000
"$BUILD/tools/defender-sandbox" --listen 127.0.0.1:0 --port-file "$work/sandbox.port" \
  --ca-out "$work/sandbox-ca.pem" --app "$zeros:$zeros:$secret" >"$work/sandbox.log" 2>&1 &
pids+=($!)
wait_for_file "$work/sandbox.port"
sandbox="https://127.0.0.1:$(cat "$work/sandbox.port")"
upstream=(DEFENDER_API_URL="$sandbox" AZURE_AUTHORITY_HOST="$sandbox" DEFENDER_CA_FILE="$work/sandbox-ca.pem")
ctl="$dest/usr/bin/defenderctl"

# serve NAME ARGV_FILE [ENV=VALUE...]: start the plugin with ARGV_FILE's arguments on a free
# loopback port (their --listen rewritten), the environment given and nothing else of ours.
serve() {
  local name="$1" argv_file="$2" args=() arg next_is_listen=0
  shift 2
  while IFS= read -r arg; do
    if [ "$next_is_listen" = 1 ]; then arg=127.0.0.1:0; next_is_listen=0
    elif [ "$arg" = --listen ]; then next_is_listen=1
    elif [[ "$arg" == --listen=* ]]; then arg=--listen=127.0.0.1:0
    elif [[ "$arg" == --metrics-listen=* ]]; then arg=--metrics-listen=127.0.0.1:$metrics_port
    fi
    args+=("$arg")
  done <"$argv_file"
  env -i PATH=/usr/bin:/bin "$@" "${upstream[@]}" \
    "${args[@]}" --port-file "$work/$name.port" >"$work/$name.log" 2>&1 &
  pids+=($!)
  eval "${name}_pid=$!"
  wait_for_file "$work/$name.port"
}
quarantine() {  # quarantine PORT SHA1 [defenderctl TLS flags...]
  local port="$1" sha1="$2"
  shift 2
  "$ctl" quarantine --target "127.0.0.1:$port" "$@" \
    --machine 1e5bc9d7e413ddd7902c2932e418702b84d0cc07 --sha1 "$sha1" --comment "packaging test" \
    >"$work/quarantine.json" 2>"$work/quarantine.err"
}
stop() {  # stop NAME: SIGTERM, exit 0
  local pid
  eval "pid=\$${1}_pid"
  kill -TERM "$pid"
  wait "$pid" || fail "$1: exited $? on SIGTERM: $(tail -n 3 "$work/$1.log")"
}

# The unit's ExecStart as systemd would run it: the example env file (listen rewritten), the
# credentials in $CREDENTIALS_DIRECTORY, the journal in $STATE_DIRECTORY.
cp "$prefix/share/doc/defender-plugin/examples/defender-plugin.env" "$work/unit.env"
check unit "$unit" "$work/unit.env" "$materials" "$work/defender-plugin.help" "$work/unit.argv" \
  || fail "unit checks"
mkdir -m 0700 "$work/unit-state"
serve unit "$work/unit.argv" $(grep -v '^#' "$work/unit.env" | grep .) \
  STATE_DIRECTORY="$work/unit-state" CREDENTIALS_DIRECTORY="$materials"
grep -q "over TLS" "$work/unit.log" || fail "the unit's plugin does not serve TLS: $(cat "$work/unit.log")"
quarantine "$(cat "$work/unit.port")" 1111111111111111111111111111111111111111 \
  --tls-ca "$materials/tls.crt" || fail "quarantine through the unit's plugin: $(cat "$work/quarantine.err")"
[ -s "$work/unit-state/journal.sqlite3" ] || fail "the journal is not in \$STATE_DIRECTORY"
"$ctl" audit --state-dir "$work/unit-state" | grep -q 1111111111111111111111111111111111111111 \
  || fail "the unit's journal lacks the call"
unit_pid_value="$unit_pid"
kill -HUP "$unit_pid_value"   # what ExecReload sends
for _ in $(seq 100); do grep -q "configuration reloaded" "$work/unit.log" && break; sleep 0.1; done
grep -q "configuration reloaded" "$work/unit.log" || fail "SIGHUP did not reload"
stop unit
echo "unit: its ExecStart served a quarantine over TLS, journal in \$STATE_DIRECTORY, SIGHUP reloaded, SIGTERM exit 0"

# The installed examples as the plugin reads them (their credential paths moved to ours):
# --config plugin.json (a client secret and a client certificate) and --authz authz.json.
examples="$prefix/share/doc/defender-plugin/examples"
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=fabrikam -keyout "$work/fabrikam.key" \
  -out "$work/fabrikam.crt" 2>/dev/null || fail "openssl req fabrikam"
cat "$work/fabrikam.key" "$work/fabrikam.crt" >"$materials/fabrikam.pem"
printf 'soar-%s\n' "$RANDOM$RANDOM" >"$materials/soar-token"
for example in plugin.json authz.json; do
  sed "s#/run/credentials/defender-plugin.service#$materials#g" "$examples/$example" >"$work/$example"
done
printf '%s\n' "$prefix/bin/defender-plugin" --listen 127.0.0.1:0 --tls-cert "$materials/tls.crt" \
  --tls-key "$materials/tls.key" --client-ca "$work/runner.crt" --config "$work/plugin.json" \
  --authz "$work/authz.json" --state-dir "$work/examples-state" >"$work/examples.argv"
serve examples "$work/examples.argv"
stop examples
echo "examples: plugin.json and authz.json load"

# --- the Dockerfile.
ctx="$work/docker-context"
mkdir "$ctx"
check docker "$SRC/packaging/docker/Dockerfile" "$SRC" "$dest" "$ctx" "$work/defender-plugin.help" \
  "$work/docker.argv" || fail "Dockerfile checks"
# The builder's configure (its -D options) on exactly what it copies.
mapfile -t cmake_args <"$work/docker.argv.cmake-args"
cmake -S "$ctx" -B "$ctx/build" "${cmake_args[@]}" >"$work/docker-configure.log" 2>&1 \
  || fail "the Docker builder's sources do not configure: $(tail -n 5 "$work/docker-configure.log")"
[ -x "$ctx/scripts/build" ] && [ -x "$ctx/scripts/install-deps" ] || fail "the builder lacks scripts/"
check libs "$work/docker.argv.packages" "$dest/usr/bin/defender-plugin" "$dest/usr/bin/defenderctl" \
  || fail "the runtime image lacks libraries"
# The ENTRYPOINT, plus the client secret file the Dockerfile's usage adds, with the image's
# paths under a root of our own.
root="$work/docker-root"
mkdir -p "$root/etc/defender-plugin/tls" "$root/etc/defender-plugin/entra" "$root/state"
cp "$materials/tls.crt" "$materials/tls.key" "$root/etc/defender-plugin/tls/"
cp "$materials/client-secret" "$root/etc/defender-plugin/entra/"
{ sed "s#^/etc/#$root/etc/#; s#^/usr/bin/#$dest/usr/bin/#" "$work/docker.argv"
  echo --client-secret-file; echo "$root/etc/defender-plugin/entra/client-secret"; } >"$work/docker.run"
serve docker "$work/docker.run" AZURE_TENANT_ID=$zeros AZURE_CLIENT_ID=$zeros \
  DEFENDER_STATE_DIR="$root/state"
quarantine "$(cat "$work/docker.port")" 2222222222222222222222222222222222222222 \
  --tls-ca "$materials/tls.crt" || fail "quarantine through the ENTRYPOINT's plugin: $(cat "$work/quarantine.err")"
stop docker
echo "docker: its ENTRYPOINT served a quarantine over TLS"

# --- Kubernetes: the container's args and env, every mounted file laid out under a root.
k8s="$work/k8s-root"
check kubernetes "$SRC/packaging/kubernetes/defender-plugin.yaml" "$work/defender-plugin.help" \
  "$dest/usr/bin/defender-plugin" "$materials" "$k8s" "$work/k8s.argv" || fail "Kubernetes checks"
sed -i "1s#^/usr/bin/#$dest/usr/bin/#" "$work/k8s.argv"
metrics_port="$(/usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
serve k8s "$work/k8s.argv" $(cat "$work/k8s.argv.env")
# The liveness probe's HTTP GET, on the metrics port.
while read -r probe_port probe_path; do
  [ "$probe_port" = metrics ] || fail "an HTTP probe on port $probe_port, not the metrics port"
  /usr/bin/python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=5)' \
    "http://127.0.0.1:$metrics_port$probe_path" \
    || fail "the pod's HTTP probe GET $probe_path fails"
done <"$work/k8s.argv.probes"
[ -s "$work/k8s.argv.probes" ] || fail "no HTTP probe was checked"
grep -q "over mutual TLS" "$work/k8s.log" || fail "the pod's plugin does not serve mutual TLS"
port="$(cat "$work/k8s.port")"
quarantine "$port" 3333333333333333333333333333333333333333 --tls-ca "$materials/tls.crt" \
  --tls-cert "$work/runner.crt" --tls-key "$work/runner.key" \
  || fail "quarantine through the pod's plugin: $(cat "$work/quarantine.err")"
if quarantine "$port" 4444444444444444444444444444444444444444 --tls-ca "$materials/tls.crt" \
    --timeout-seconds 5; then
  fail "the pod's plugin let a caller without a client certificate through"
fi
stop k8s
echo "kubernetes: the container's args served a quarantine over mutual TLS, with --authz"

for log in "$work"/*.log; do
  if grep -q "$secret" "$log"; then fail "the client secret is in $(basename "$log")"; fi
done
echo "packaging_test: ok"
