#!/usr/bin/env bash
# Three defender-plugin replicas sharing one rate budget and one memory of request_ids in a
# real redis-server
# (--redis-url), against the sandbox:
# (d) one request_id sent to all three at once: one POST, the same action everywhere;
#     repeats on each replica are replays; other parameters are REQUEST_ID_REUSED;
# (a) a burst over the budget spread across the replicas: the sandbox receives exactly
#     the budget, the rest are RESOURCE_EXHAUSTED [RATE_LIMITED];
# (b) Redis stopped: every replica stays up, says so (log, health "redis" NOT_SERVING),
#     and keeps a local 1/3 share: a burst gets exactly 3 x floor(budget / 3) through;
# (c) Redis started again: health SERVING, the budget is shared again (exactly the budget).
# Usage: replicas_test.sh BUILD_DIR
set -euo pipefail
BIN="$1"
. "$(dirname "$0")/../testlib.sh"  # $work, $pids, fail, start_sandbox, sb, start_plugin ...
PY=/usr/bin/python3
REDIS_SERVER="$(command -v redis-server || echo /usr/bin/redis-server)"
[ -x "$REDIS_SERVER" ] || fail "no redis-server (apt-get install redis-server)"

# A free port for Redis (it cannot report one it picked itself).
redis_port="$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
redis_pid=""
start_redis() {
  "$REDIS_SERVER" --bind 127.0.0.1 --port "$redis_port" --save "" --appendonly no \
    --daemonize no --logfile "$work/redis.log" &
  redis_pid=$!
  pids+=("$redis_pid")
  for _ in $(seq 100); do
    "$PY" -c 'import socket, sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 1)' \
      "$redis_port" 2>/dev/null && return 0
    sleep 0.1
  done
  fail "redis-server did not start: $(cat "$work/redis.log")"
}
stop_redis() { kill "$redis_pid"; wait "$redis_pid" 2>/dev/null || true; }

# health NAME SERVICE: the plugin's grpc.health.v1 status of SERVICE (stubs from grpc-proto).
# (A copy at the import root: generated as grpc/health/v1 it would hide grpcio's own grpc package.)
mkdir -p "$work/health"
cp /usr/share/grpc-proto/grpc/health/v1/health.proto "$work/health/"
protoc --proto_path="$work/health" --python_out="$work/health" --grpc_python_out="$work/health" \
  --plugin=protoc-gen-grpc_python=/usr/bin/grpc_python_plugin \
  "$work/health/health.proto" || fail "protoc of health.proto"
health() {
  PYTHONPATH="$work/health" "$PY" - "127.0.0.1:$(cat "$work/$1.port")" "$2" <<'PY'
import sys, grpc
import health_pb2, health_pb2_grpc
stub = health_pb2_grpc.HealthStub(grpc.insecure_channel(sys.argv[1]))
reply = stub.Check(health_pb2.HealthCheckRequest(service=sys.argv[2]), timeout=5)
print(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
PY
}
wait_health() {  # wait_health NAME STATUS: until the replica's "redis" health is STATUS (20 s)
  for _ in $(seq 100); do [ "$(health "$1" redis)" = "$2" ] && return 0; sleep 0.2; done
  fail "$1: health of redis is $(health "$1" redis), not $2"
}

plugin_pids=()
once_jobs=()
budget=6  # a minute, per tenant and API, for the whole cluster
start_sandbox
start_redis
for r in r1 r2 r3; do
  start_plugin "$r" --redis-url "redis://127.0.0.1:$redis_port" --redis-replicas 3 \
    --rate-per-minute "$budget"
  plugin_pids+=("${pids[-1]}")
done
for r in r1 r2 r3; do wait_health "$r" SERVING; done
machine=1e5bc9d7e413ddd7902c2932e418702b84d0cc07

# burst NAME N: N quarantines of distinct files, spread round-robin over the replicas at
# once; counts answers in $ok and RATE_LIMITED refusals in $limited.
burst() {
  local name="$1" n="$2" i r
  mkdir -p "$work/$name"
  for i in $(seq "$n"); do
    r="r$(( (i - 1) % 3 + 1 ))"
    sha1="$(printf '%s-%s' "$name" "$i" | sha1sum | cut -c1-40)"
    "$BIN/tools/defenderctl" quarantine --target "127.0.0.1:$(cat "$work/$r.port")" \
      --timeout-seconds 10 --machine "$machine" --sha1 "$sha1" --comment "$name $i" \
      >"$work/$name/$i.out" 2>"$work/$name/$i.err" &
  done
  for job in $(jobs -p); do
    case " ${pids[*]} " in *" $job "*) continue ;; esac
    wait "$job" || true
  done
  ok=$(grep -l '"id"' "$work/$name"/*.out 2>/dev/null | wc -l)
  limited=$(grep -l "RATE_LIMITED" "$work/$name"/*.err 2>/dev/null | wc -l)
  echo "$name: $n calls, $ok answered, $limited RATE_LIMITED"
}

# (d) one request_id sent to all three at once, while the first POST is still being
# answered (the sandbox sends its body slowly): one POST, the same action from every
# replica; then again to each, one after the other: replays, nothing sent.
sb -X DELETE "$sandbox/sandbox/requests" >/dev/null
sb -X POST -H 'Content-Type: application/json' \
  --data '{"method":"POST","path_regex":"/StopAndQuarantineFile$","times":1,"kind":"slow","delay_ms":40}' \
  "$sandbox/sandbox/faults" >/dev/null || fail "could not set the slow fault"
mkdir -p "$work/once"
for r in r1 r2 r3; do
  "$BIN/tools/defenderctl" quarantine --target "127.0.0.1:$(cat "$work/$r.port")" --timeout-seconds 30 \
    --machine "$machine" --sha1 5555555555555555555555555555555555555555 --comment "once" \
    --request-id shared-once-1 >"$work/once/$r.out" 2>"$work/once/$r.err" &
  once_jobs+=($!)
done
for job in "${once_jobs[@]}"; do wait "$job" || fail "a replica failed the shared request_id: $(cat "$work"/once/*.err)"; done
sb -X DELETE "$sandbox/sandbox/faults" >/dev/null
action_of() { sed -n 's/.*"id": *"\([^"]*\)".*/\1/p' "$1" | head -n 1; }
first="$(action_of "$work/once/r1.out")"
[ -n "$first" ] || fail "no action from r1: $(cat "$work/once/r1.out")"
for r in r2 r3; do
  [ "$(action_of "$work/once/$r.out")" = "$first" ] || fail "$r answered another action than r1"
done
posts="$(upstream_posts)"
[ "$posts" -eq 1 ] || fail "one request_id on three replicas sent $posts POSTs, not one"
for r in r3 r2 r1; do
  "$BIN/tools/defenderctl" quarantine --target "127.0.0.1:$(cat "$work/$r.port")" --timeout-seconds 10 \
    --machine "$machine" --sha1 5555555555555555555555555555555555555555 --comment "once" \
    --request-id shared-once-1 >"$work/once/again-$r.out" 2>&1 || fail "$r: the repeat failed"
  [ "$(action_of "$work/once/again-$r.out")" = "$first" ] || fail "$r: the repeat gave another action"
done
posts="$(upstream_posts)"
[ "$posts" -eq 1 ] || fail "repeats of the request_id sent $((posts - 1)) more POSTs"
# The same request_id with other parameters, on another replica: REQUEST_ID_REUSED.
if "$BIN/tools/defenderctl" quarantine --target "127.0.0.1:$(cat "$work/r2.port")" --timeout-seconds 10 \
  --machine "$machine" --sha1 6666666666666666666666666666666666666666 --comment "once" \
  --request-id shared-once-1 >"$work/once/reused.out" 2>&1; then fail "a reused request_id was accepted"; fi
grep -q REQUEST_ID_REUSED "$work/once/reused.out" || fail "no REQUEST_ID_REUSED: $(cat "$work/once/reused.out")"
echo "shared request_id: one POST, action $first from all three"

# (a) 15 calls, 5 per replica: with the one slot (d) used, exactly budget - 1 reach Defender.
sb -X DELETE "$sandbox/sandbox/requests" >/dev/null
burst shared 15
posts="$(upstream_posts)"
left=$((budget - 1))
[ "$posts" -eq "$left" ] || fail "shared: the sandbox got $posts POSTs, not the $left left of the budget"
[ "$ok" -eq "$left" ] && [ "$limited" -eq $((15 - left)) ] \
  || fail "shared: $ok answered, $limited RATE_LIMITED (want $left and $((15 - left)))"

# (b) Redis stops: no replica falls over; each says so and keeps 1/3 of the budget.
stop_redis
for r in r1 r2 r3; do wait_health "$r" NOT_SERVING; done
for r in r1 r2 r3; do
  [ "$(health "$r" defender.v1.ResponseService)" = SERVING ] || fail "$r stopped serving the API"
  grep -q "shared budget DEGRADED" "$work/$r.log" || fail "$r did not log the degradation"
done
sb -X DELETE "$sandbox/sandbox/requests" >/dev/null
burst degraded 15
posts="$(upstream_posts)"
share=$((budget / 3 * 3))
[ "$posts" -eq "$share" ] || fail "degraded: the sandbox got $posts POSTs, not 3 x $((budget / 3))"
[ "$limited" -eq $((15 - share)) ] || fail "degraded: $limited RATE_LIMITED, not $((15 - share))"

# (c) Redis is back (empty: no persistence): shared again, exactly the budget.
start_redis
for r in r1 r2 r3; do wait_health "$r" SERVING; done
for r in r1 r2 r3; do grep -q "Redis is reachable again" "$work/$r.log" || fail "$r did not log the recovery"; done
sb -X DELETE "$sandbox/sandbox/requests" >/dev/null
burst recovered 15
posts="$(upstream_posts)"
[ "$posts" -eq "$budget" ] || fail "recovered: the sandbox got $posts POSTs, not the budget $budget"

# Every replica is still up, and nothing secret was logged.
for pid in "${plugin_pids[@]}"; do kill -0 "$pid" 2>/dev/null || fail "a replica died (pid $pid)"; done
if grep -l "sandbox-secret" "$work"/*.log; then fail "the client secret appears in a log"; fi
echo "replicas_test: ok"
