#!/usr/bin/env bash
# The chaos soak: three nodes behind nginx, one worker, Redis and the store;
# users chat through nginx (rooms, direct messages, churn, REST history
# reads) while a seeded random schedule of faults breaks the cluster every
# 20-60 s, then every message is accounted for (`confab-loadtest chaos`).
#
#   scripts/chaos.sh                     10 minutes (CHAOS_DURATION=600)
#   CHAOS_DURATION=120 scripts/chaos.sh  the short soak the test command runs
#   CHAOS_SEED=42 scripts/chaos.sh       the same schedule again
#
# Faults: kill-node N (SIGKILL, restarted 2 s later), restart-redis (its
# append-only file keeps the keys), pause-redis S (SIGSTOP for S seconds),
# kill-subscriber N (CLIENT KILL of node N's Pub/Sub connection),
# restart-store, partition-node 3 (node 3 runs in a network namespace of its
# own; its packets to Redis are dropped for CHAOS_PARTITION_SECS, default
# 8, then let through again), slow-client (one client stops reading while
# its room is flooded, until its node cuts it off; it talks to node 1
# directly, as nginx's buffers would absorb the flood, and the nodes run
# with a 32 KB socket send buffer and a queue of 64 frames, so that the
# flood overflows them).
#
# Needs root for the network namespace (without it, or without iproute2 and
# iptables, node 3 runs beside the others and partition-node is left out).
# Everything listens on 127.0.0.1, or on 10.213.0.0/24 between this machine
# and the namespace it makes; all of it stops when the run ends.
#
# Environment (all optional):
#   CHAOS_DURATION  seconds of traffic and faults (600)
#   CHAOS_SEED      the fault schedule's seed (random; printed)
#   CHAOS_OUT       where the report goes (chaos-results): results.json,
#                   summary.md, timeline.png, and the nodes' logs
#   CHAOS_ARGS      more `confab-loadtest chaos` options (e.g. "--rate 40")
#   CHAOS_FAULTS    the fault kinds to draw from, comma-separated (all)
#   CONFAB_BIN, CONFAB_LOADTEST_BIN   binaries to use (default: cargo build
#                   --release of both)
#
# Exits non-zero if the accounting finds anything lost, duplicated, out of
# order, stored twice or unacknowledged, if a fault could not be carried
# out, if a node panicked, or if a node is not ready at the end.
#
# `scripts/chaos.sh fault KIND ARG` carries out one fault on a running soak
# (CHAOS_STATE names its state directory); the load generator calls it.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

NODES=3
SUBNET=10.213.0

# --- a running soak's state ---------------------------------------------

load_state() {
  [ -n "${CHAOS_STATE:-}" ] && [ -f "$CHAOS_STATE/chaos.env" ] || die "CHAOS_STATE names no running soak"
  # shellcheck disable=SC1091
  source "$CHAOS_STATE/chaos.env"
}

start_redis_here() {
  # Protected mode would refuse node 3 (not on loopback); Redis listens only
  # on loopback and the namespace's link.
  redis-server --port "$REDIS_PORT" --bind "$REDIS_BIND" --protected-mode no --save '' --appendonly yes --appendfsync everysec \
    --daemonize yes --pidfile "$CHAOS_STATE/redis.pid" --logfile "$CHAOS_STATE/redis.log" \
    --dir "$CHAOS_STATE/redis" >/dev/null
  wait_port "$REDIS_PORT" 20 || die "redis did not start"
}

start_store() {
  "$FERRETDB_BIN" --handler=sqlite \
    --sqlite-url="file:$CHAOS_STATE/ferretdb/?_pragma=busy_timeout(10000)&_pragma=journal_mode(wal)&_pragma=synchronous(normal)" \
    --listen-addr="$STORE_HOST:$STORE_PORT" --telemetry=disable --debug-addr=- \
    --state-dir="$CHAOS_STATE/ferretdb" --log-level=warn >>"$CHAOS_STATE/ferretdb.log" 2>&1 &
  echo $! >"$CHAOS_STATE/ferretdb.pid"
  for _ in $(seq 1 300); do
    (exec 3<>"/dev/tcp/$STORE_HOST/$STORE_PORT") 2>/dev/null && return 0
    sleep 0.1
  done
  die "FerretDB did not start"
}

# node_host N: where node N listens.
node_host() { if [ "$1" = "$NETNS_NODE" ] && [ -n "$NETNS" ]; then echo "$SUBNET.2"; else echo 127.0.0.1; fi; }

start_node() {
  local n=$1 port_var="NODE_${1}_PORT" host redis_host=127.0.0.1 prefix=()
  host=$(node_host "$n")
  if [ "$host" != 127.0.0.1 ]; then
    redis_host="$SUBNET.1"
    prefix=(ip netns exec "$NETNS")
  fi
  "${prefix[@]}" env CONFAB_LISTEN="$host:${!port_var}" CONFAB_NODE_ID="chaos-$n" \
    CONFAB_REDIS_URL="redis://$redis_host:$REDIS_PORT" CONFAB_MONGO_URL="mongodb://$STORE_HOST:$STORE_PORT" \
    CONFAB_MONGO_DB=confab_chaos CONFAB_JWT_SECRET="$SECRET" CONFAB_LOG="${CONFAB_LOG:-warn}" \
    CONFAB_AUTH_RATE_PER_MINUTE=100000 CONFAB_REST_RATE_PER_MINUTE=100000 \
    CONFAB_OUTBOUND_QUEUE=64 CONFAB_SOCKET_SEND_BUFFER_BYTES=32768 \
    "$CONFAB_BIN" serve >>"$CHAOS_STATE/node-$n.log" 2>&1 &
  echo $! >"$CHAOS_STATE/node-$n.pid"
}

# wait_node_ready N SECONDS
wait_node_ready() {
  local port_var="NODE_${1}_PORT" url i
  url="http://$(node_host "$1"):${!port_var}/readyz"
  for ((i = 0; i < $2 * 5; i++)); do
    [ "$(curl -s -o /dev/null -m 2 -w '%{http_code}' "$url" 2>/dev/null)" = 200 ] && return 0
    sleep 0.2
  done
  return 1
}

# subscriber_addrs N: the client addresses of node N's Pub/Sub connections
# as Redis lists them.
subscriber_addrs() {
  local n=$1 pid_file="$CHAOS_STATE/node-$1.pid" ports="" host
  host=$(node_host "$n")
  if [ "$host" = 127.0.0.1 ]; then
    # This node's own connections to Redis, by the ports it holds.
    ports=$(ss -tnpH state established "( dport = :$REDIS_PORT )" 2>/dev/null |
      awk -v pid="pid=$(cat "$pid_file")," '$0 ~ pid {print $3}' | sed 's/.*://' | tr '\n' ' ')
  fi
  redis-cli -p "$REDIS_PORT" client list | python3 -c '
import sys
host, ports = sys.argv[1], set(sys.argv[2].split())
for line in sys.stdin:
    f = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
    ip, _, port = f.get("addr", "").rpartition(":")
    subscribed = int(f.get("sub", 0)) + int(f.get("psub", 0)) + int(f.get("ssub", 0)) > 0
    if subscribed and ip == host and (host != "127.0.0.1" or port in ports):
        print(f["addr"])
' "$host" "$ports"
}

fault() {
  local kind=$1 arg=${2:-0}
  load_state
  case "$kind" in
    kill-node)
      kill -9 "$(cat "$CHAOS_STATE/node-$arg.pid")" 2>/dev/null || true
      sleep 2
      start_node "$arg"
      wait_node_ready "$arg" 60 || die "node $arg is not ready 60 s after its restart"
      echo "node $arg killed and restarted"
      ;;
    restart-redis)
      redis-cli -p "$REDIS_PORT" shutdown >/dev/null 2>&1 || true
      for _ in $(seq 1 100); do kill -0 "$(cat "$CHAOS_STATE/redis.pid" 2>/dev/null || echo 0)" 2>/dev/null || break; sleep 0.1; done
      sleep 1
      start_redis_here
      echo "redis restarted"
      ;;
    pause-redis)
      kill -STOP "$(cat "$CHAOS_STATE/redis.pid")"
      sleep "$arg"
      kill -CONT "$(cat "$CHAOS_STATE/redis.pid")"
      echo "redis paused for $arg s"
      ;;
    kill-subscriber)
      local addrs
      addrs=$(subscriber_addrs "$arg")
      [ -n "$addrs" ] || die "node $arg has no subscriber connection to kill"
      for a in $addrs; do redis-cli -p "$REDIS_PORT" client kill addr "$a" >/dev/null; done
      echo "node $arg's subscriber connection killed: $addrs"
      ;;
    restart-store)
      stop_pidfile "$CHAOS_STATE/ferretdb.pid"
      sleep 2
      start_store
      echo "store restarted"
      ;;
    partition-node)
      [ -n "$NETNS" ] && [ "$arg" = "$NETNS_NODE" ] || die "node $arg is not in a network namespace"
      local rule=(OUTPUT -p tcp -d "$SUBNET.1" --dport "$REDIS_PORT" -j DROP)
      ip netns exec "$NETNS" iptables -A "${rule[@]}"
      sleep "${CHAOS_PARTITION_SECS:-8}"
      ip netns exec "$NETNS" iptables -D "${rule[@]}"
      echo "node $arg cut off from redis for ${CHAOS_PARTITION_SECS:-8} s"
      ;;
    *) die "unknown fault $kind" ;;
  esac
}

if [ "${1:-}" = fault ]; then
  shift
  fault "$@"
  exit 0
fi

# --- a soak -----------------------------------------------------------

cd "$CONFAB_ROOT"
duration=${CHAOS_DURATION:-600}
out=${CHAOS_OUT:-chaos-results}
mkdir -p "$out"
out=$(cd "$out" && pwd)

ensure_redis
ensure_nginx
ensure_ferretdb
command -v ss >/dev/null || apt_install iproute2
if [ -z "${CONFAB_BIN:-}" ] || [ -z "${CONFAB_LOADTEST_BIN:-}" ]; then
  log "building confab and confab-loadtest (release)"
  cargo build --release --bin confab --bin confab-loadtest
  target="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
  CONFAB_BIN=${CONFAB_BIN:-$target/release/confab}
  CONFAB_LOADTEST_BIN=${CONFAB_LOADTEST_BIN:-$target/release/confab-loadtest}
fi

CHAOS_STATE=$(mktemp -d -t confab-chaos.XXXXXX)
export CHAOS_STATE
mkdir -p "$CHAOS_STATE/redis" "$CHAOS_STATE/ferretdb" "$CHAOS_STATE/nginx-tmp"
NETNS="" NETNS_NODE=3 veth_host="cxh$$"
cleanup() {
  local rc=$?
  [ -f "$CHAOS_STATE/nginx.pid" ] && kill "$(cat "$CHAOS_STATE/nginx.pid")" 2>/dev/null
  for n in $(seq 1 $NODES); do stop_pidfile "$CHAOS_STATE/node-$n.pid"; done
  stop_pidfile "$CHAOS_STATE/worker.pid"
  [ -f "$CHAOS_STATE/redis.pid" ] && kill -CONT "$(cat "$CHAOS_STATE/redis.pid")" 2>/dev/null
  stop_pidfile "$CHAOS_STATE/redis.pid"
  stop_pidfile "$CHAOS_STATE/ferretdb.pid"
  if [ -n "$NETNS" ]; then
    ip netns del "$NETNS" 2>/dev/null || true
    ip link del "$veth_host" 2>/dev/null || true
  fi
  for f in "$CHAOS_STATE"/*.log; do [ -f "$f" ] && cp "$f" "$out/"; done
  rm -rf "$CHAOS_STATE"
  exit $rc
}
trap cleanup EXIT

faults=${CHAOS_FAULTS:-kill-node,restart-redis,pause-redis,kill-subscriber,restart-store,partition-node,slow-client}
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  command -v ip >/dev/null || apt_install iproute2
  command -v iptables >/dev/null || apt_install iptables
fi
if [ "$(id -u)" = 0 ] && command -v ip >/dev/null && command -v iptables >/dev/null &&
  ip netns add "confab-chaos-$$" 2>/dev/null; then
  NETNS="confab-chaos-$$"
  ip link add "$veth_host" type veth peer name "cxn$$"
  ip link set "cxn$$" netns "$NETNS"
  ip addr add "$SUBNET.1/24" dev "$veth_host"
  ip link set "$veth_host" up
  ip netns exec "$NETNS" ip addr add "$SUBNET.2/24" dev "cxn$$"
  ip netns exec "$NETNS" ip link set "cxn$$" up
  ip netns exec "$NETNS" ip link set lo up
  log "node $NETNS_NODE runs in network namespace $NETNS ($SUBNET.2)"
  STORE_HOST="$SUBNET.1" REDIS_BIND="127.0.0.1 $SUBNET.1"
else
  log "no network namespace (needs root, iproute2 and iptables): node $NETNS_NODE runs beside the others, partition-node is left out"
  NETNS="" STORE_HOST=127.0.0.1 REDIS_BIND=127.0.0.1
  faults=$(echo "$faults" | tr , '\n' | grep -vx partition-node | paste -sd, -)
fi

REDIS_PORT=$(free_port)
STORE_PORT=$(free_port)
SECRET="chaos-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
{
  echo "NETNS=$NETNS NETNS_NODE=$NETNS_NODE STORE_HOST=$STORE_HOST REDIS_PORT=$REDIS_PORT STORE_PORT=$STORE_PORT"
  echo "REDIS_BIND='$REDIS_BIND' SECRET=$SECRET CONFAB_BIN='$CONFAB_BIN' FERRETDB_BIN='$FERRETDB_BIN'"
  for n in $(seq 1 $NODES); do echo "NODE_${n}_PORT=$(free_port)"; done
} >"$CHAOS_STATE/chaos.env"
load_state

log "starting Redis, FerretDB, $NODES nodes, a worker and nginx"
start_redis_here
start_store
for n in $(seq 1 $NODES); do start_node "$n"; done
for n in $(seq 1 $NODES); do wait_node_ready "$n" 60 || die "node $n did not become ready"; done
wport=$(free_port)
CONFAB_REDIS_URL="redis://127.0.0.1:$REDIS_PORT" CONFAB_MONGO_URL="mongodb://$STORE_HOST:$STORE_PORT" \
  CONFAB_MONGO_DB=confab_chaos CONFAB_JWT_SECRET="$SECRET" CONFAB_LOG=warn \
  CONFAB_METRICS_LISTEN="127.0.0.1:$wport" "$CONFAB_BIN" worker >"$CHAOS_STATE/worker.log" 2>&1 &
echo $! >"$CHAOS_STATE/worker.pid"

http_port=$(free_port)
upstreams=""
for n in $(seq 1 $NODES); do
  port_var="NODE_${n}_PORT"
  upstreams+="        server $(node_host "$n"):${!port_var} max_fails=1 fail_timeout=2s;"$'\n'
done
cat >"$CHAOS_STATE/nginx.conf" <<EOF
$([ "$(id -u)" = 0 ] && echo "user root;" || true)
worker_processes 1;
pid $CHAOS_STATE/nginx.pid;
error_log $CHAOS_STATE/nginx-error.log warn;
events { worker_connections 4096; }
http {
    client_body_temp_path $CHAOS_STATE/nginx-tmp/client_body;
    proxy_temp_path       $CHAOS_STATE/nginx-tmp/proxy;
    fastcgi_temp_path     $CHAOS_STATE/nginx-tmp/fastcgi;
    uwsgi_temp_path       $CHAOS_STATE/nginx-tmp/uwsgi;
    scgi_temp_path        $CHAOS_STATE/nginx-tmp/scgi;
    default_type application/octet-stream;
    include $CONFAB_ROOT/nginx/confab-http.conf;
    access_log off;
    upstream confab {
        least_conn;
$upstreams        keepalive 32;
    }
    server {
        listen 127.0.0.1:$http_port;
        include $CONFAB_ROOT/nginx/confab-server.conf;
    }
}
EOF
nginx=$(command -v nginx || echo /usr/sbin/nginx)
"$nginx" -c "$CHAOS_STATE/nginx.conf" -p "$CHAOS_STATE/" -e "$CHAOS_STATE/nginx-error.log" ||
  die "nginx did not start"
wait_port "$http_port" 20 || die "nginx does not listen"

log "the soak: $duration s, faults: $faults"
rc=0
"$CONFAB_LOADTEST_BIN" chaos --url "http://127.0.0.1:$http_port" --out "$out" \
  --duration "$duration" --nodes "$NODES" --partition-nodes "$NETNS_NODE" --faults "$faults" \
  --fault-cmd "$CONFAB_ROOT/scripts/chaos.sh fault" ${CHAOS_SEED:+--seed "$CHAOS_SEED"} \
  --slow-url "http://127.0.0.1:$NODE_1_PORT" \
  ${CHAOS_ARGS:-} || rc=$?

problems=()
[ "$rc" = 0 ] || problems+=("the load generator reported a failure (exit $rc)")
for n in $(seq 1 $NODES); do
  grep -q "panicked" "$CHAOS_STATE/node-$n.log" && problems+=("node $n panicked (see node-$n.log)")
  wait_node_ready "$n" 30 || problems+=("node $n is not ready at the end")
done
grep -q "panicked" "$CHAOS_STATE/worker.log" && problems+=("the worker panicked")
if [ ${#problems[@]} -gt 0 ]; then
  printf 'chaos: %s\n' "${problems[@]}" >&2
  exit 1
fi
log "chaos: passed; report in $out"
