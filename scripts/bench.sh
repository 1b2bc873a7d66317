#!/usr/bin/env bash
# The standard benchmark suite, in under 10 minutes on 2 cores:
#   1. micro-benchmarks of the hot path (criterion)
#   2. fan-out across two nodes through Redis (loss, duplicates, latency, CPU)
#   3. idle authenticated connections held by one node (memory per connection)
#   4. REST history reads
# then prints one summary table. Results land in $BENCH_OUT (default
# bench-results/<timestamp>), each scenario with results.json, summary.md
# and latency.png. Sizes are environment-overridable:
#   BENCH_ROOMS BENCH_SUBSCRIBERS BENCH_PUBLISHERS BENCH_RATE BENCH_DURATION
#   BENCH_WARMUP (seconds of publishing before the measured duration)
#   BENCH_CONNECTIONS (default 10000; the 100k target: BENCH_CONNECTIONS=100000)
#   BENCH_SKIP_MICRO=1 skips criterion.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$CONFAB_ROOT"

ROOMS=${BENCH_ROOMS:-10}
SUBS=${BENCH_SUBSCRIBERS:-500}
PUBS=${BENCH_PUBLISHERS:-10}
RATE=${BENCH_RATE:-20}
DURATION=${BENCH_DURATION:-20}
WARMUP=${BENCH_WARMUP:-5}
CONNECTIONS=${BENCH_CONNECTIONS:-10000}
OUT=${BENCH_OUT:-bench-results/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

ulimit -n 1048576 2>/dev/null || ulimit -n "$(ulimit -Hn)"
ensure_redis
ensure_ferretdb

log "building (release)"
cargo build --release -q -p confab -p confab-loadtest
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
CONFAB="$target_dir/release/confab"
LOADTEST="$target_dir/release/confab-loadtest"

if [ -z "${BENCH_SKIP_MICRO:-}" ]; then
  log "micro-benchmarks (criterion)"
  cargo bench -q --bench hot_path -- --noplot 2>/dev/null | grep -E -B1 "time:" | tee "$OUT/micro.txt"
fi

work=$(mktemp -d -t confab-bench.XXXXXX)
cleanup() {
  for f in "$work"/*.pid; do [ -f "$f" ] && stop_pidfile "$f"; done
  rm -rf "$work"
}
trap cleanup EXIT

rport=$(free_port); start_redis "$work" "$rport"
mport=$(free_port); start_ferretdb "$work" "$mport"
SECRET=$(python3 -c 'import secrets; print(secrets.token_hex(32))')

start_node() {
  # start_node NAME -> prints the port
  local name=$1 port
  port=$(free_port)
  # The history readers share one user and publishers may be fast: limits far
  # above the load keep the limiters' cost in the figures but never refuse.
  CONFAB_LISTEN="127.0.0.1:$port" CONFAB_REDIS_URL="redis://127.0.0.1:$rport" \
    CONFAB_REST_RATE_PER_MINUTE=1000000 CONFAB_SOCKET_RATE_PER_SEC=1000000 CONFAB_SOCKET_BURST=1000000 \
    CONFAB_MONGO_URL="mongodb://127.0.0.1:$mport" CONFAB_MONGO_DB=confab_bench CONFAB_JWT_SECRET="$SECRET" \
    CONFAB_NODE_ID="$name" CONFAB_LOG=warn "$CONFAB" serve >"$work/$name.log" 2>&1 &
  echo $! >"$work/$name.pid"
  wait_port "$port" 30 || die "$name did not start"
  for _ in $(seq 1 100); do curl -fs "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.1; done
  echo "$port"
}

p1=$(start_node bench-node-1)
p2=$(start_node bench-node-2)
pids=(--server-pid "$(cat "$work/bench-node-1.pid")" --server-pid "$(cat "$work/bench-node-2.pid")")

log "fan-out: $ROOMS rooms x $SUBS subscribers, $PUBS publishers, $RATE msgs/s, ${WARMUP}s warm-up + ${DURATION}s, two nodes"
"$LOADTEST" fanout --url "http://127.0.0.1:$p1" --url "http://127.0.0.1:$p2" --jwt-secret "$SECRET" "${pids[@]}" \
  --rooms "$ROOMS" --subscribers "$SUBS" --publishers "$PUBS" --rate "$RATE" --warmup "$WARMUP" --duration "$DURATION" \
  --out "$OUT/fanout" >/dev/null

log "connections: $CONNECTIONS idle authenticated sockets on a fresh node"
p3=$(start_node bench-node-3)
"$LOADTEST" connections --url "http://127.0.0.1:$p3" --jwt-secret "$SECRET" --server-pid "$(cat "$work/bench-node-3.pid")" \
  --connections "$CONNECTIONS" --hold 3 --out "$OUT/connections" >/dev/null

log "history: REST reads"
"$LOADTEST" history --url "http://127.0.0.1:$p1" --url "http://127.0.0.1:$p2" --jwt-secret "$SECRET" \
  --readers 16 --duration 10 --out "$OUT/history" >/dev/null

python3 - "$OUT" <<'PY' | tee "$OUT/summary.md"
import json, sys, os
out = sys.argv[1]
f = json.load(open(os.path.join(out, "fanout", "results.json")))
c = json.load(open(os.path.join(out, "connections", "results.json")))
h = json.load(open(os.path.join(out, "history", "results.json")))
l = f["latency"]
print("| scenario | figure |")
print("|---|---|")
p = f["params"]
print(f"| fan-out {p['rooms']}x{p['subscribers']}, {p['publishers']} pubs @ {p['rate']:.0f}/s, 2 nodes | "
      f"{f['delivered_per_sec']:.0f} deliveries/s; p50 {l['p50_ms']:.2f} ms, p99 {l['p99_ms']:.2f} ms, "
      f"p99.9 {l['p999_ms']:.2f} ms, max {l['max_ms']:.2f} ms; lost {f['lost']}, dup {f['duplicated']}; "
      f"{f['cpu_seconds_per_million']:.1f} CPU s per 1M deliveries |")
print(f"| {c['params']['connections']} idle connections, 1 node | {c['opened']} opened, {c['failures']} failed, "
      f"{c['connects_per_sec']:.0f} connects/s, {c['server_rss_bytes_per_connection']/1024:.1f} KiB RSS per connection |")
hl = h["latency"]
print(f"| history reads, 16 readers | {h['requests_per_sec']:.0f} req/s, p50 {hl['p50_ms']:.2f} ms, p99 {hl['p99_ms']:.2f} ms, errors {h['errors']} |")
PY
log "results in $OUT"
