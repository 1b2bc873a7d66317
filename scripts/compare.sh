#!/usr/bin/env bash
# Compares Confab with its peers on one fan-out scenario, same load for all:
#   confab      two `confab serve` nodes (Redis Pub/Sub, FerretDB for storage)
#   centrifugo  two Centrifugo v6 nodes on the same Redis (loadtest/peers/centrifugo)
#   socketio    two Socket.IO processes with the Redis adapter (loadtest/peers/socketio)
#   baseline    one confab-baseline process: one pre-encoded frame written to
#               every socket, no Redis, no storage (the ceiling)
# Installs what is missing (Redis, FerretDB, Centrifugo, the npm packages),
# builds the release binaries, starts one Redis (and FerretDB) in a temporary
# directory, runs `confab-loadtest fanout` against each system in turn, stops
# everything it started, and prints a Markdown table (also written to
# DIR/comparison.md; each system's own report is in DIR/results/NAME, and
# Confab's nodes' /metrics at the end of the run in DIR/results/confab).
#
#   scripts/compare.sh                   all four systems
#   scripts/compare.sh confab baseline   only those
#
# Environment (all optional):
#   COMPARE_ROOMS        rooms (default 10)
#   COMPARE_SUBSCRIBERS  subscribers per room (default 500)
#   COMPARE_PUBLISHERS   publishers in all (default 10)
#   COMPARE_RATE         messages per second over all publishers (default 20)
#   COMPARE_DURATION     seconds of measured publishing (default 20)
#   COMPARE_WARMUP       seconds of publishing before it, checked for loss but
#                        not measured (default 5)
#   COMPARE_PAYLOAD      bytes of content per message (default 100)
#   COMPARE_DIR          where logs and results go (default: a new temporary
#                        directory, kept and printed at the end)
#   COMPARE_SKIP_BUILD=1 use the binaries already built
#   COMPARE_PROFILE      cargo profile to build and run: release (default) or
#                        debug (quick checks of this script only)
#   CARGO_TARGET_DIR     as for cargo (default: target in the repository)
#   CENTRIFUGO_BIN       a Centrifugo v6 binary to use instead of installing one
#   COMPARE_STEPS        saturation mode: rates (msgs/s) to run each system at,
#                        e.g. "20 50 100 200 400"; prints p99 per rate, each
#                        system's highest load with p99 <= 50 ms and nothing
#                        lost (DIR/saturation.md), and draws DIR/saturation.png
#   COMPARE_DEFLATE=1    Confab's nodes offer permessage-deflate and its
#                        subscribers take it (publishers do not): bytes on the
#                        wire against CPU (docs/benchmarks.md)
#   COMPARE_STORE        the FerretDB backend started for Confab: postgresql
#                        (default; a PostgreSQL of its own, from Debian) or
#                        sqlite (the test suite's; its single-writer lock
#                        makes a few inserts wait 25-500 ms under load, which
#                        every delivery behind them inherits: docs/benchmarks.md)
#   MONGO_URL            Confab's store: use this MongoDB instead of starting
#                        FerretDB (every message is stored before delivery,
#                        so the store bounds Confab's publish rate and tail)
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$CONFAB_ROOT"

CENTRIFUGO_VERSION="v6.9.1"
CENTRIFUGO_BIN="${CENTRIFUGO_BIN:-$GOBIN/centrifugo}"
SOCKETIO_DIR="$CONFAB_ROOT/loadtest/peers/socketio"
CENTRIFUGO_CONFIG="$CONFAB_ROOT/loadtest/peers/centrifugo/config.yaml"

ROOMS="${COMPARE_ROOMS:-10}"
SUBSCRIBERS="${COMPARE_SUBSCRIBERS:-500}"
PUBLISHERS="${COMPARE_PUBLISHERS:-10}"
RATE="${COMPARE_RATE:-20}"
DURATION="${COMPARE_DURATION:-20}"
WARMUP="${COMPARE_WARMUP:-5}"
PAYLOAD="${COMPARE_PAYLOAD:-100}"

ALL_SYSTEMS=(confab centrifugo socketio baseline)
if [ $# -gt 0 ]; then SYSTEMS=("$@"); else SYSTEMS=("${ALL_SYSTEMS[@]}"); fi
for s in "${SYSTEMS[@]}"; do
  case " ${ALL_SYSTEMS[*]} " in *" $s "*) ;; *) die "unknown system '$s' (known: ${ALL_SYSTEMS[*]})" ;; esac
done
wants() { case " ${SYSTEMS[*]} " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
needs_redis() { [ "${SYSTEMS[*]}" != baseline ]; }

DIR="${COMPARE_DIR:-$(mktemp -d -t confab-compare.XXXXXX)}"
mkdir -p "$DIR/results"
DIR="$(cd "$DIR" && pwd)"

cleanup() {
  local rc=$? f
  for f in "$DIR"/*.pid; do [ -e "$f" ] && stop_pidfile "$f"; done
  [ -f "$DIR/postgres.dir" ] && rm -rf "$(cat "$DIR/postgres.dir")"
  if [ $rc -ne 0 ]; then
    for f in "$DIR"/*.log; do [ -f "$f" ] && { echo "--- tail of $f" >&2; tail -n 20 "$f" >&2; }; done
    echo "logs and partial results in $DIR" >&2
  fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Sockets: the generator and the servers each hold one per connection.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# --- what is missing ---------------------------------------------------------

log "checking tools"
command -v python3 >/dev/null || apt_install python3
if needs_redis; then ensure_redis; fi
STORE="${COMPARE_STORE:-postgresql}"
case "$STORE" in postgresql | sqlite) ;; *) die "COMPARE_STORE must be postgresql or sqlite" ;; esac
if wants confab && [ -z "${MONGO_URL:-}" ]; then
  ensure_ferretdb
  [ "$STORE" = sqlite ] || ensure_postgresql
fi
if wants centrifugo && ! { [ -x "$CENTRIFUGO_BIN" ] && "$CENTRIFUGO_BIN" version >/dev/null 2>&1; }; then
  command -v go >/dev/null || die "Go is needed to install Centrifugo (apt-get install golang-go), or set CENTRIFUGO_BIN"
  log "installing Centrifugo $CENTRIFUGO_VERSION (go install; this takes a few minutes)"
  mkdir -p "$(dirname "$CENTRIFUGO_BIN")"
  GOBIN="$(dirname "$CENTRIFUGO_BIN")" go install "github.com/centrifugal/centrifugo/v6@$CENTRIFUGO_VERSION" ||
    die "installing Centrifugo failed"
  [ -x "$CENTRIFUGO_BIN" ] || die "Centrifugo not found at $CENTRIFUGO_BIN after go install"
fi
if wants socketio; then
  command -v node >/dev/null || apt_install nodejs npm
  if [ ! -f "$SOCKETIO_DIR/node_modules/.package-lock.json" ] ||
    [ "$SOCKETIO_DIR/package-lock.json" -nt "$SOCKETIO_DIR/node_modules/.package-lock.json" ]; then
    log "installing the Socket.IO peer's packages (npm ci)"
    (cd "$SOCKETIO_DIR" && npm ci --no-audit --no-fund >&2) || die "npm ci failed in $SOCKETIO_DIR"
  fi
fi

TARGET_DIR="${CARGO_TARGET_DIR:-target}"
case "$TARGET_DIR" in /*) ;; *) TARGET_DIR="$CONFAB_ROOT/$TARGET_DIR" ;; esac
PROFILE="${COMPARE_PROFILE:-release}"
case "$PROFILE" in
  release) BIN="$TARGET_DIR/release" build_flags=(--release) ;;
  debug) BIN="$TARGET_DIR/debug" build_flags=() ;;
  *) die "COMPARE_PROFILE must be release or debug" ;;
esac
if [ "${COMPARE_SKIP_BUILD:-0}" != 1 ]; then
  log "building $PROFILE binaries (cargo build ${build_flags[*]} -p confab -p confab-loadtest)"
  cargo build "${build_flags[@]}" -p confab -p confab-loadtest >&2 || die "cargo build failed"
fi
for b in confab confab-loadtest confab-baseline; do
  [ -x "$BIN/$b" ] || die "$BIN/$b is missing (build it, or unset COMPARE_SKIP_BUILD)"
done

# --- shared services -----------------------------------------------------------

REDIS_PORT=""
if needs_redis; then
  REDIS_PORT=$(free_port)
  start_redis "$DIR" "$REDIS_PORT"
  log "Redis on 127.0.0.1:$REDIS_PORT"
fi
REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
if wants confab && [ -z "${MONGO_URL:-}" ]; then
  mongo_port=$(free_port)
  if [ "$STORE" = sqlite ]; then start_ferretdb "$DIR" "$mongo_port"; else start_ferretdb_pg "$DIR" "$mongo_port"; fi
  MONGO_URL="mongodb://127.0.0.1:$mongo_port"
  log "FerretDB ($STORE) on 127.0.0.1:$mongo_port"
fi

reset_redis() { [ -z "$REDIS_PORT" ] || redis-cli -p "$REDIS_PORT" flushall >/dev/null; }

# start NAME LOGNAME CMD... : runs CMD in the background, pid in DIR/LOGNAME.pid
start() {
  local log_name=$1
  shift
  "$@" >"$DIR/$log_name.log" 2>&1 &
  echo $! >"$DIR/$log_name.pid"
}

# run_load NAME PIDS URLS EXTRA... : the load generator against one system
run_load() {
  local name=$1 pids=$2 urls=$3
  shift 3
  local args=() p u
  for p in $pids; do args+=(--server-pid "$p"); done
  for u in $urls; do args+=(--url "$u"); done
  log "$name: fanout, $ROOMS rooms x $SUBSCRIBERS subscribers, $PUBLISHERS publishers, $RATE msgs/s, ${WARMUP}s warm-up + ${DURATION}s"
  "$BIN/confab-loadtest" fanout --target "$name" "${args[@]}" "$@" \
    --rooms "$ROOMS" --subscribers "$SUBSCRIBERS" --publishers "$PUBLISHERS" \
    --rate "$RATE" --warmup "$WARMUP" --duration "$DURATION" --payload "$PAYLOAD" \
    --out "$DIR/results/${RUN_OUT:-$name}" >"$DIR/loadtest-$name.log" 2>&1 ||
    { log "$name: the load generator failed (see $DIR/loadtest-$name.log)"; tail -n 5 "$DIR/loadtest-$name.log" >&2; return 1; }
}

# stop_all PREFIX : stops every process whose pid file starts with PREFIX
stop_all() {
  local f
  for f in "$DIR/$1"*.pid; do [ -e "$f" ] && stop_pidfile "$f"; done
  return 0
}

run_confab() {
  local secret pids="" urls="" n port deflate=false extra=()
  secret=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
  if [ "${COMPARE_DEFLATE:-0}" = 1 ]; then deflate=true extra=(--opt deflate=true); fi
  for n in 1 2; do
    port=$(free_port)
    start "confab-$n" env CONFAB_LISTEN="127.0.0.1:$port" CONFAB_REDIS_URL="$REDIS_URL" \
      CONFAB_MONGO_URL="$MONGO_URL" CONFAB_MONGO_DB="compare_$$" \
      CONFAB_JWT_SECRET="$secret" CONFAB_SESSIONLESS_TOKENS=true CONFAB_NODE_ID="compare-$n" CONFAB_LOG="${CONFAB_LOG:-warn}" \
      CONFAB_WS_DEFLATE="$deflate" "$BIN/confab" serve
    wait_port "$port" 60 || die "confab node $n did not start (see $DIR/confab-$n.log)"
    pids+="$(cat "$DIR/confab-$n.pid") "
    urls+="http://127.0.0.1:$port "
  done
  local rc=0
  run_load confab "$pids" "$urls" --jwt-secret "$secret" "${extra[@]}" || rc=$?
  # The nodes' own view of the run (store latency, seq gaps, slow consumers).
  n=1
  mkdir -p "$DIR/results/${RUN_OUT:-confab}"
  for u in $urls; do
    curl -fsS "$u/metrics" >"$DIR/results/${RUN_OUT:-confab}/metrics-node-$n.txt" 2>/dev/null || true
    n=$((n + 1))
  done
  return $rc
}

run_centrifugo() {
  local secret pids="" urls="" n port
  secret=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
  for n in 1 2; do
    port=$(free_port)
    start "centrifugo-$n" env CENTRIFUGO_ENGINE_REDIS_ADDRESS="$REDIS_URL" \
      CENTRIFUGO_CLIENT_TOKEN_HMAC_SECRET_KEY="$secret" \
      "$CENTRIFUGO_BIN" --config "$CENTRIFUGO_CONFIG" --http_server.address 127.0.0.1 --http_server.port "$port"
    wait_port "$port" 60 || die "centrifugo node $n did not start (see $DIR/centrifugo-$n.log)"
    pids+="$(cat "$DIR/centrifugo-$n.pid") "
    urls+="ws://127.0.0.1:$port/connection/websocket "
  done
  run_load centrifugo "$pids" "$urls" --opt "centrifugo_hmac_secret=$secret"
}

run_socketio() {
  local pids="" urls="" n port
  for n in 1 2; do
    port=$(free_port)
    start "socketio-$n" env PORT="$port" HOST=127.0.0.1 REDIS_URL="$REDIS_URL" NODE_ENV=production \
      node "$SOCKETIO_DIR/server.js"
    wait_port "$port" 60 || die "socket.io process $n did not start (see $DIR/socketio-$n.log)"
    pids+="$(cat "$DIR/socketio-$n.pid") "
    urls+="ws://127.0.0.1:$port "
  done
  run_load socketio "$pids" "$urls"
}

run_baseline() {
  local port
  port=$(free_port)
  start "baseline-1" "$BIN/confab-baseline" --listen "127.0.0.1:$port"
  wait_port "$port" 30 || die "confab-baseline did not start (see $DIR/baseline-1.log)"
  run_load baseline "$(cat "$DIR/baseline-1.pid")" "ws://127.0.0.1:$port"
}

# --- saturation: each system at each rate --------------------------------------

if [ -n "${COMPARE_STEPS:-}" ]; then
  for s in "${SYSTEMS[@]}"; do
    for r in $COMPARE_STEPS; do
      reset_redis
      RATE=$r RUN_OUT="$s/r$r" "run_$s" || true
      stop_all "$s-"
    done
  done
  series=()
  for s in "${SYSTEMS[@]}"; do series+=(--series "$s=$DIR/results/$s"); done
  "$BIN/confab-loadtest" plot "${series[@]}" --limit-ms 50 --out "$DIR/saturation.png" ||
    log "the saturation plot could not be drawn"
  python3 - "$DIR" "$COMPARE_STEPS" "${SYSTEMS[@]}" <<'EOF' | tee "$DIR/saturation.md"
import json, os, sys

out, steps, systems = sys.argv[1], [int(s) for s in sys.argv[2].split()], sys.argv[3:]
def load(s, r):
    try:
        with open(os.path.join(out, "results", s, f"r{r}", "results.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None
print("# Saturation\n")
print("p99 at each publishing rate (deliveries/s measured in brackets); a run that lost or duplicated messages is marked.\n")
print("| msgs/s | " + " | ".join(systems) + " |")
print("|---:|" + "---:|" * len(systems))
best = {s: None for s in systems}
for r in steps:
    cells = []
    for s in systems:
        res = load(s, r)
        if not res:
            cells.append("–")
            continue
        p99, lost, dup = res["latency"]["p99_ms"], res.get("lost", 0), res.get("duplicated", 0)
        rate = res.get("delivered_per_sec", 0)
        cell = f"{p99:.1f} ms ({rate:,.0f}/s)"
        if lost or dup:
            cell += f" **{lost} lost, {dup} dup**"
        elif p99 <= 50:
            best[s] = max(best[s] or 0, rate)
        cells.append(cell)
    print(f"| {r} | " + " | ".join(cells) + " |")
print()
for s in systems:
    b = best[s]
    print(f"- {s}: highest load with p99 ≤ 50 ms and nothing lost: " + (f"{b:,.0f} deliveries/s" if b else "none of the rates"))
print(f"\nPlot: {os.path.join(out, 'saturation.png')}")
EOF
  exit 0
fi

# --- the runs ------------------------------------------------------------------

for s in "${SYSTEMS[@]}"; do
  reset_redis
  "run_$s" || true
  stop_all "$s-"
done

# --- the table -----------------------------------------------------------------

python3 - "$DIR" "${SYSTEMS[@]}" <<'EOF' | tee "$DIR/comparison.md"
import json, os, sys

out, systems = sys.argv[1], sys.argv[2:]
res = {}
for s in systems:
    p = os.path.join(out, "results", s, "results.json")
    try:
        with open(p) as f:
            res[s] = json.load(f)
    except (OSError, ValueError):
        res[s] = None

def per_cpu_second(r):
    c = r.get("cpu_seconds_per_million") or 0
    return 1e6 / c if c > 0 else None

def num(v, fmt="{:.0f}"):
    return "–" if v is None else fmt.format(v)

first = next((r for r in res.values() if r), None)
if first:
    p = first.get("params", {})
    print(f"# Fan-out comparison\n")
    print(f"{p.get('rooms')} rooms × {p.get('subscribers')} subscribers, {p.get('publishers')} publishers "
          f"at {p.get('rate')} msgs/s for {p.get('duration')} s after {p.get('warmup', 0)} s of warm-up, "
          f"{p.get('payload')} B payload; "
          f"two nodes each (baseline: one process), one shared Redis.\n")
print("| system | delivered msgs/s | p50 ms | p99 ms | CPU s per 1M deliveries | RSS per connection KiB "
      "| wire B per delivery | lost | dup | deliveries per CPU-s | Confab ÷ system (deliveries per CPU-s) |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
confab = res.get("confab")
confab_eff = per_cpu_second(confab) if confab else None
for s in systems:
    r = res[s]
    if r is None:
        print(f"| {s} | failed | | | | | | | | | |")
        continue
    lat = r.get("latency", {})
    eff = per_cpu_second(r)
    ratio = confab_eff / eff if (confab_eff and eff) else None
    rss = r.get("server_rss_bytes_per_connection")
    print(f"| {s} | {num(r.get('delivered_per_sec'))} | {num(lat.get('p50_ms'), '{:.2f}')} "
          f"| {num(lat.get('p99_ms'), '{:.2f}')} | {num(r.get('cpu_seconds_per_million'), '{:.1f}')} "
          f"| {num(rss / 1024 if rss is not None else None, '{:.1f}')} "
          f"| {num(r.get('wire_bytes_per_delivery'))} | {r.get('lost', '–')} "
          f"| {r.get('duplicated', '–')} | {num(eff)} | {num(ratio, '{:.2f}')} |")
base = res.get("baseline")
if confab and base:
    be = per_cpu_second(base)
    lines = []
    if confab_eff and be:
        lines.append(f"Confab ÷ baseline, deliveries per CPU-second: {confab_eff / be:.2f}")
    cp, bp = confab.get("latency", {}).get("p99_ms"), base.get("latency", {}).get("p99_ms")
    if cp and bp:
        lines.append(f"Confab ÷ baseline, p99 latency: {cp / bp:.2f}")
    if lines:
        print()
        for l in lines:
            print(f"- {l}")
print()
print("CPU and RSS are the server processes' own (sum over nodes); Redis, Confab's store and the load "
      "generator are not counted. Confab stores every message before fanning it out; the peers store "
      "nothing. A ratio above 1 means Confab delivers more per CPU-second. Wire bytes: what the "
      "subscribers' sockets read per delivery, WebSocket framing included, TCP/IP headers not.")
EOF
log "results in $DIR (comparison.md, results/NAME/)"
