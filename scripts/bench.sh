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
#   BENCH_REDIS=cluster runs the nodes on a Redis Cluster of three masters
#   (sharded channels, hash-tagged names) instead of one Redis server.
#
# `scripts/bench.sh ingest` runs the ingest scenario instead: 2,000 rooms of
# three members on two nodes, the offered rate stepping up, and beside it the
# store's own insert ceiling, on FerretDB over PostgreSQL. Its sizes:
#   INGEST_ROOMS (2000) INGEST_MEMBERS (3) INGEST_STEPS (250,500,1000,1500,2000,3000,4000)
#   INGEST_STEP_SECS (10)
#
# `scripts/bench.sh volume` seeds a long history straight into the store
# (FerretDB over PostgreSQL), then times REST reads against two nodes:
# history pages deep and newest, the room list with unread counts, search;
# first on FerretDB's own indexes, then again with GIN indexes added in
# PostgreSQL (VOLUME_SKIP_GIN=1 skips that). Each store plan is printed. Sizes:
#   VOLUME_MESSAGES (1000000) VOLUME_ROOMS (10000) VOLUME_USERS (1000)
#   VOLUME_MEMBERS (10 a room) VOLUME_READERS (2) VOLUME_READ_SECS (10)
#
# `scripts/bench.sh scale` opens SCALE_CONNECTIONS (100000) idle
# authenticated sockets, each a different user, spread evenly over
# SCALE_NODES (6) nodes, one load generator process per node (one process
# may hold at most its open-file limit of sockets: 20,000 where this was
# measured, hence six). Once all are up it runs a fan-out across every node
# while they are held (SCALE_ROOMS 10 x SCALE_SUBSCRIBERS 100, 10 publishers
# at SCALE_RATE 20 msgs/s, SCALE_DURATION 30 s; SCALE_HOLD 240 s in all).
# It samples the nodes' open sockets and RSS each second and reports the
# connect rate, RSS per connection, and the fan-out's deliveries and loss.
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

MODE=${1:-standard}
case "$MODE" in standard | ingest | volume | scale) ;; *) die "usage: scripts/bench.sh [standard|ingest|volume|scale]" ;; esac

ulimit -n 1048576 2>/dev/null || ulimit -n "$(ulimit -Hn)"
ensure_redis
ensure_ferretdb
case "$MODE" in ingest | volume) ensure_postgresql ;; esac

log "building (release)"
cargo build --release -q -p confab -p confab-loadtest
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
CONFAB="$target_dir/release/confab"
LOADTEST="$target_dir/release/confab-loadtest"

if [ "$MODE" = standard ] && [ -z "${BENCH_SKIP_MICRO:-}" ]; then
  log "micro-benchmarks (criterion)"
  cargo bench -q --bench hot_path -- --noplot 2>/dev/null | grep -E -B1 "time:" | tee "$OUT/micro.txt"
fi

work=$(mktemp -d -t confab-bench.XXXXXX)
cleanup() {
  for f in "$work"/*.pid "$work"/redis-cluster/*/redis.pid; do [ -f "$f" ] && stop_pidfile "$f"; done
  # The servers' logs stay with the results.
  mkdir -p "$OUT/logs" && cp "$work"/*.log "$OUT/logs/" 2>/dev/null || true
  # PostgreSQL's data (start_ferretdb_pg) lives apart from $work.
  if [ -f "$work/postgres.dir" ]; then rm -rf "$(cat "$work/postgres.dir")"; fi
  rm -rf "$work"
}
trap cleanup EXIT

if [ "${BENCH_REDIS:-single}" = cluster ]; then
  redis_url=$(start_redis_cluster "$work/redis-cluster" "$(free_port)" "$(free_port)" "$(free_port)")
else
  rport=$(free_port); start_redis "$work" "$rport"
  redis_url="redis://127.0.0.1:$rport"
fi
mport=$(free_port)
case "$MODE" in standard | scale) start_ferretdb "$work" "$mport" ;; *) start_ferretdb_pg "$work" "$mport" ;; esac
SECRET=$(python3 -c 'import secrets; print(secrets.token_hex(32))')

start_node() {
  # start_node NAME -> prints the port
  local name=$1 port
  port=$(free_port)
  # The history readers share one user and publishers may be fast: limits far
  # above the load keep the limiters' cost in the figures but never refuse.
  CONFAB_LISTEN="127.0.0.1:$port" CONFAB_REDIS_URL="$redis_url" \
    CONFAB_REST_RATE_PER_MINUTE=1000000 CONFAB_SOCKET_RATE_PER_SEC=1000000 CONFAB_SOCKET_BURST=1000000 \
    CONFAB_MONGO_URL="mongodb://127.0.0.1:$mport" CONFAB_MONGO_DB=confab_bench CONFAB_JWT_SECRET="$SECRET" CONFAB_SESSIONLESS_TOKENS=true \
    CONFAB_NODE_ID="$name" CONFAB_LOG=warn "$CONFAB" serve >"$work/$name.log" 2>&1 &
  echo $! >"$work/$name.pid"
  wait_port "$port" 30 || die "$name did not start"
  for _ in $(seq 1 100); do curl -fs "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.1; done
  echo "$port"
}

if [ "$MODE" = scale ]; then
  total=${SCALE_CONNECTIONS:-100000} nodes=${SCALE_NODES:-6}
  per_node=$(((total + nodes - 1) / nodes))
  # The held sockets never read, so they cannot answer pings: the nodes ping
  # every 10 minutes instead of every 25 s for this run.
  export CONFAB_PING_INTERVAL_SECS=600
  urls=() node_pids=()
  for n in $(seq 1 "$nodes"); do
    port=$(start_node "scale-node-$n")
    urls+=("http://127.0.0.1:$port")
    node_pids+=("$(cat "$work/scale-node-$n.pid")")
  done
  # rss_kib PID... : the processes' resident memory together, in KiB.
  rss_kib() {
    local pid kib=0
    for pid in "$@"; do kib=$((kib + $(awk '/^VmRSS/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0))); done
    echo "$kib"
  }
  # One line a second: seconds, the nodes' open descriptors, their RSS in KiB.
  (
    start=$(date +%s.%N)
    while :; do
      fds=0
      for pid in "${node_pids[@]}"; do fds=$((fds + $(ls "/proc/$pid/fd" 2>/dev/null | wc -l))); done
      echo "$(awk -v now="$(date +%s.%N)" -v start="$start" 'BEGIN { printf "%.1f", now - start }') $fds $(rss_kib "${node_pids[@]}")"
      sleep 1
    done
  ) >"$OUT/scale-samples.txt" &
  sampler=$!
  sleep 2
  base_fds=$(tail -n 1 "$OUT/scale-samples.txt" | awk '{print $2}')
  log "scale: $((per_node * nodes)) idle authenticated sockets, $per_node on each of $nodes nodes, one generator process each"
  gen_pids=()
  for n in $(seq 1 "$nodes"); do
    "$LOADTEST" connections --url "${urls[$((n - 1))]}" --jwt-secret "$SECRET" --server-pid "${node_pids[$((n - 1))]}" \
      --connections "$per_node" --hold "${SCALE_HOLD:-240}" --out "$OUT/scale-idle-$n" >"$OUT/scale-idle-$n.txt" 2>&1 &
    gen_pids+=($!)
  done
  # Once every socket is up, a fan-out across all the nodes while they are held.
  for _ in $(seq 1 600); do
    now=$(tail -n 1 "$OUT/scale-samples.txt" | awk '{print $2}')
    [ $((now - base_fds)) -ge $((per_node * nodes * 99 / 100)) ] && break
    sleep 1
  done
  sleep 5
  at_peak=$(tail -n 1 "$OUT/scale-samples.txt")
  gen_rss=$(rss_kib "${gen_pids[@]}")
  fan=(--rooms "${SCALE_ROOMS:-10}" --subscribers "${SCALE_SUBSCRIBERS:-100}" --publishers 10 --rate "${SCALE_RATE:-20}"
    --warmup 5 --duration "${SCALE_DURATION:-30}" --settle 20 --settle-below 0.6)
  log "scale: fan-out across the $nodes nodes while the idle sockets are held (${fan[*]})"
  fanout_urls=()
  for u in "${urls[@]}"; do fanout_urls+=(--url "$u"); done
  "$LOADTEST" fanout "${fanout_urls[@]}" --jwt-secret "$SECRET" "${fan[@]}" --out "$OUT/scale-fanout" >"$OUT/scale-fanout.txt" 2>&1 || true
  after_fanout=$(tail -n 1 "$OUT/scale-samples.txt")
  failed=0
  for pid in "${gen_pids[@]}"; do wait "$pid" || failed=$((failed + 1)); done
  kill "$sampler" 2>/dev/null || true
  python3 - "$OUT" "$nodes" "$base_fds" "$at_peak" "$after_fanout" "$gen_rss" "$failed" <<'PY' | tee "$OUT/summary.md"
import json, os, sys
out, nodes, base_fds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
peak, after, gen_rss_kib, failed = sys.argv[4].split(), sys.argv[5].split(), int(sys.argv[6]), int(sys.argv[7])
samples = [tuple(map(float, l.split())) for l in open(os.path.join(out, "scale-samples.txt")) if len(l.split()) == 3]
base_rss = samples[0][2]
held = int(float(peak[1])) - base_fds
first = next(s for s in samples if s[1] > base_fds + 10)
full = next(s for s in samples if s[1] - base_fds >= 0.99 * held)
idle = [json.load(open(os.path.join(out, f"scale-idle-{n}", "results.json"))) for n in range(1, nodes + 1)
        if os.path.exists(os.path.join(out, f"scale-idle-{n}", "results.json"))]
print("| figure | value |\n|---|---|")
print(f"| idle sockets opened by the generators | {sum(r['opened'] for r in idle):,} ({sum(r['failures'] for r in idle)} failed; {len(idle)} of {nodes} generators reported, {failed} failed) |")
print(f"| sockets held by the nodes (open descriptors over the idle nodes') | {held:,} |")
print(f"| connect phase, all generators at once (first to 99%) | {full[0] - first[0]:.0f} s: {0.99 * held / max(full[0] - first[0], 1):,.0f} connections/s |")
rates = ", ".join(format(r["connects_per_sec"], ",.0f") for r in idle)
print(f"| per generator (each against its own node) | {rates} connections/s |")
print(f"| nodes' RSS, idle -> all connected | {base_rss / 1024:,.0f} MiB -> {float(peak[2]) / 1024:,.0f} MiB: {(float(peak[2]) - base_rss) / max(held, 1):.1f} KiB per connection |")
print(f"| generators' RSS with every socket open | {gen_rss_kib / 1024:,.0f} MiB |")
print(f"| nodes' RSS after the fan-out | {float(after[2]) / 1024:,.0f} MiB |")
fp = os.path.join(out, "scale-fanout", "results.json")
if os.path.exists(fp):
    f = json.load(open(fp)); l = f["latency"]; p = f["params"]
    print(f"| fan-out meanwhile: {p['rooms']} x {p['subscribers']}, {p['publishers']} pubs @ {p['rate']:.0f}/s over {nodes} nodes | "
          f"{f['delivered_per_sec']:,.0f} deliveries/s; p50 {l['p50_ms']:.1f} ms, p99 {l['p99_ms']:.1f} ms; "
          f"owed {f['expected']:,}, delivered {f['delivered']:,}, lost {f['lost']}, dup {f['duplicated']}, subscribers dropped {f['subscriber_disconnects']} |")
else:
    print("| fan-out meanwhile | FAILED (see scale-fanout.txt) |")
PY
  log "results in $OUT"
  [ "$failed" = 0 ] && [ -f "$OUT/scale-fanout/results.json" ] || die "a generator failed (see $OUT/scale-*.txt)"
  exit 0
fi

p1=$(start_node bench-node-1)
p2=$(start_node bench-node-2)
pids=(--server-pid "$(cat "$work/bench-node-1.pid")" --server-pid "$(cat "$work/bench-node-2.pid")")

if [ "$MODE" = ingest ]; then
  log "ingest: ${INGEST_ROOMS:-2000} rooms x ${INGEST_MEMBERS:-3} members, steps ${INGEST_STEPS:-250,500,1000,1500,2000,3000,4000} msgs/s, two nodes, FerretDB on PostgreSQL"
  "$LOADTEST" ingest --url "http://127.0.0.1:$p1" --url "http://127.0.0.1:$p2" --jwt-secret "$SECRET" "${pids[@]}" \
    --rooms "${INGEST_ROOMS:-2000}" --members "${INGEST_MEMBERS:-3}" --steps "${INGEST_STEPS:-250,500,1000,1500,2000,3000,4000}" \
    --step-secs "${INGEST_STEP_SECS:-10}" --mongo-url "mongodb://127.0.0.1:$mport" --mongo-db confab_bench \
    --out "$OUT/ingest" | tee "$OUT/ingest.txt"
  # The nodes' own view (store calls, fan-out, bus) of the same run.
  curl -fs "http://127.0.0.1:$p1/metrics" >"$OUT/ingest/metrics-node-1.txt" || true
  curl -fs "http://127.0.0.1:$p2/metrics" >"$OUT/ingest/metrics-node-2.txt" || true
  log "results in $OUT"
  exit 0
fi

if [ "$MODE" = volume ]; then
  sizes=(--messages "${VOLUME_MESSAGES:-1000000}" --rooms "${VOLUME_ROOMS:-10000}" --users "${VOLUME_USERS:-1000}"
    --members "${VOLUME_MEMBERS:-10}")
  store=(--mongo-url "mongodb://127.0.0.1:$mport" --mongo-db confab_bench)
  log "volume: seeding ${sizes[*]}, FerretDB on PostgreSQL"
  "$LOADTEST" seed "${sizes[@]}" "${store[@]}" --redis-url "$redis_url" --out "$OUT/seed" | tee "$OUT/seed.txt"
  log "volume: VACUUM ANALYZE, as autovacuum would soon after a bulk load"
  pg_vacuum "$work"
  volume_reads() {
    # volume_reads DIR READS : times READS (comma-separated) into $OUT/DIR, plans first
    "$LOADTEST" volume --url "http://127.0.0.1:$p1" --url "http://127.0.0.1:$p2" --jwt-secret "$SECRET" \
      "${sizes[@]}" "${store[@]}" --explain --readers "${VOLUME_READERS:-2}" --duration "${VOLUME_READ_SECS:-10}" \
      --reads "$2" --out "$OUT/$1" >/dev/null
    cat "$OUT/$1/summary.md"
  }
  # Without an index every read of a room scans the messages: the room list
  # and search (one such read per room) would take minutes; only plans for them.
  log "volume: reads on FerretDB's own indexes"
  volume_reads volume history_deep,history_newest,unread,search_room
  if [ -z "${VOLUME_SKIP_GIN:-}" ]; then
    log "volume: GIN indexes on the fields FerretDB passes to PostgreSQL, then the reads again"
    ferretdb_pg_gin "$work" confab_bench messages:_id messages:room_id room_members:_id room_members:user_id \
      rooms:_id rooms:type
    volume_reads volume-gin history_deep,history_newest,rooms,unread,search,search_room
  fi
  python3 - "$OUT" <<'PY' | tee "$OUT/summary.md"
import json, os, sys
out = sys.argv[1]
runs = [(name, os.path.join(out, d, "results.json")) for name, d in (("own indexes", "volume"), ("GIN", "volume-gin"))]
runs = [(name, {r["read"]: r for r in json.load(open(p))["reads"]}) for name, p in runs if os.path.exists(p)]
names = [r for _, reads in runs for r in reads]
print("| read | " + " | ".join(f"{n}: p50 ms | {n}: p99 ms | {n}: requests (errors)" for n, _ in runs) + " |")
print("|---|" + "---|---|---|" * len(runs))
for read in dict.fromkeys(names):
    cells = []
    for _, reads in runs:
        r = reads.get(read)
        if r is None:
            cells += ["-", "-", "not run"]
        else:
            l = r["latency"]
            cells += [f"{l['p50_ms']:.2f}", f"{l['p99_ms']:.2f}", f"{r['requests']} ({r['errors']})"]
    print(f"| {read} | " + " | ".join(cells) + " |")
PY
  log "results in $OUT"
  exit 0
fi

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
