#!/usr/bin/env bash
# The whole test suite, against real services: installs what is missing
# (Redis, nginx, FerretDB, the Autobahn runner, Schemathesis, promtool, npm,
# Chromium, cargo-fuzz),
# starts Redis and FerretDB on free ports in a temporary directory, runs
# lints, unit and integration tests, Schemathesis over the OpenAPI document,
# the SDK's tests and the web app in Chromium against a cluster, the RFC 6455
# conformance cases, fuzzes every parser briefly, checks that the load
# generator runs a small fan-out across two nodes without loss, runs the
# cross-node suites again on a three-master Redis Cluster, runs a
# two-minute chaos soak, then stops everything it started.
#
# Set REDIS_URL / MONGO_URL to test against servers of your own instead
# (a real mongod works unchanged).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$CONFAB_ROOT"

work="$(mktemp -d -t confab-test.XXXXXX)"
cleanup() {
  local rc=$?
  if [ -d "$work/sdk-cluster" ]; then
    CONFAB_CLUSTER_DIR="$work/sdk-cluster" scripts/cluster.sh down >/dev/null 2>&1 || true
  fi
  stop_pidfile "$work/echo-node.pid"
  stop_pidfile "$work/smoke-node-1.pid"
  stop_pidfile "$work/smoke-node-2.pid"
  stop_pidfile "$work/ferretdb.pid"
  stop_pidfile "$work/redis.pid"
  for f in "$work"/redis-cluster/*/redis.pid; do stop_pidfile "$f"; done
  if [ $rc -ne 0 ]; then
    for f in "$work"/*.log; do [ -f "$f" ] && { echo "--- tail of $f"; tail -n 30 "$f"; }; done
  fi
  rm -rf "$work"
  exit $rc
}
trap cleanup EXIT

log "checking tools"
ensure_redis
ensure_nginx
command -v docker-compose >/dev/null || apt_install docker-compose
command -v npm >/dev/null || apt_install npm
python3 -c 'import kosoku' 2>/dev/null || { log "installing kosoku (Autobahn cases)"; python3 -m pip install --quiet kosoku; }
# Run it through the interpreter: a fresh pip install may not be on PATH yet
# (pyenv shims, ~/.local/bin).
kosoku() { python3 -c 'import sys; from kosoku._cli import main; sys.argv[0] = "kosoku"; sys.exit(main())' "$@"; }
python3 -c 'import kosoku' || die "kosoku did not install"
ensure_promtool

if [ -z "${REDIS_URL:-}" ]; then
  port=$(free_port)
  start_redis "$work" "$port"
  export REDIS_URL="redis://127.0.0.1:$port"
fi
if [ -z "${MONGO_URL:-}" ]; then
  ensure_ferretdb
  port=$(free_port)
  start_ferretdb "$work" "$port"
  export MONGO_URL="mongodb://127.0.0.1:$port"
fi
log "Redis at $REDIS_URL, MongoDB-compatible server at $MONGO_URL"

log "lints: cargo fmt --check, cargo clippy, docker-compose config"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
# No Docker engine needed: the Compose file and what it mounts are checked
# as Compose reads them.
CONFAB_JWT_SECRET=compose-config-check docker-compose config -q
CONFAB_JWT_SECRET=compose-config-check docker-compose --profile monitoring config -q
CONFAB_JWT_SECRET=compose-config-check docker-compose --profile tls config -q

log "alert rules: promtool check rules, promtool test rules"
"$PROMTOOL_BIN" check rules deploy/prometheus/alerts.yml
(cd deploy/prometheus && "$PROMTOOL_BIN" test rules alerts.test.yml)

log "Kubernetes manifests: built as kubectl apply -k would, decoded strictly, offline"
(cd deploy/k8s/check && go run . ..)

log "unit and integration tests"
cargo test --workspace --all-targets

# The same nodes on a Redis Cluster of three masters: the suites whose
# behaviour rests on Redis (cross-node delivery and seqs, presence,
# sessions, rate limits, caches, receipts, notifications, jobs), with
# hash-tagged names and sharded channels. (tests/redis_topologies.rs starts
# clusters and sentinels of its own as well.)
log "cross-node suites again on a three-master Redis Cluster"
cluster_ports=("$(free_port)" "$(free_port)" "$(free_port)")
redis_cluster_url=$(start_redis_cluster "$work/redis-cluster" "${cluster_ports[@]}")
# The test binaries the line above built, run as they are (`cargo test
# --test …` alone would resolve features apart from the workspace and
# compile everything again). Tests of a single Redis going away (they
# start one of their own) are skipped: they are not about the cluster.
for suite in cluster presence sessions cache conversations notifications jobs; do
  bin=$(test_binary "$suite") || die "no test binary for $suite"
  log "  $suite"
  REDIS_URL="$redis_cluster_url" "$bin" --quiet --skip redis_restart --skip with_redis_down \
    --skip seqs_never_repeat --skip missing_from_the_live_stream --skip during_a_redis_outage \
    --skip redis_trouble --skip refuses_a_remembered_sender
done

# Every binary this script runs is built here: `cargo test` builds only what
# the tests need, and a fresh clone has nothing else.
log "building the binaries the checks below run"
cargo build --workspace --bins
target="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
bin="$target/debug/confab"
loadtest="$target/debug/confab-loadtest"
[ -x "$bin" ] && [ -x "$loadtest" ] || die "cargo build did not leave $bin and $loadtest"

log "the REST API against its OpenAPI document: Schemathesis over every operation"
CONFAB_BIN="$bin" scripts/schemathesis.sh

log "TypeScript SDK (clients/js): build, types, unit tests"
(cd clients/js && npm ci --no-audit --no-fund --loglevel=error && npm test)

log "TypeScript SDK against a two-node cluster: a node killed and Redis restarted mid-conversation"
sdk_state="$work/sdk-cluster"
sdk_url=$(env -u REDIS_URL -u MONGO_URL CONFAB_BIN="$bin" CONFAB_CLUSTER_DIR="$sdk_state" CONFAB_HTTP_PORT=0 \
  scripts/cluster.sh up | sed -n 's/^Confab is up: \([^ ]*\).*/\1/p')
[ -n "$sdk_url" ] || die "the SDK's cluster did not start"
CONFAB_URL="$sdk_url" CONFAB_CLUSTER_CTL="env CONFAB_CLUSTER_DIR=$sdk_state $CONFAB_ROOT/scripts/cluster.sh" \
  npm --prefix clients/js run --silent test:integration

log "web app (web/) in Chromium against the same cluster: two users through its nginx front"
[ -x /usr/bin/chromium ] || apt_install chromium
(cd web && npm ci --no-audit --no-fund --loglevel=error)
CONFAB_URL="$sdk_url" CONFAB_CLUSTER_DIR="$sdk_state" npm --prefix web run --silent test:browser
CONFAB_CLUSTER_DIR="$sdk_state" scripts/cluster.sh down >/dev/null 2>&1

log "RFC 6455 conformance (Autobahn cases) against a node's echo endpoint"
port=$(free_port)
# The cases send messages of up to 16 MiB; this node allows 20 MB. It offers
# permessage-deflate, which only 12.* and 13.* ask for, and compresses every
# message: the harness mishandles uncompressed ones on a compressed connection.
CONFAB_LISTEN="127.0.0.1:$port" CONFAB_REDIS_URL="$REDIS_URL" CONFAB_MONGO_URL="$MONGO_URL" \
  CONFAB_MONGO_DB="confab_conformance" CONFAB_JWT_SECRET="conformance-run-secret-0123456789abcdef" \
  CONFAB_ECHO_ENDPOINT=true CONFAB_MAX_MESSAGE_BYTES=20000000 CONFAB_LOG=warn \
  CONFAB_WS_DEFLATE=true CONFAB_WS_DEFLATE_MIN_BYTES=0 \
  "$bin" serve >"$work/echo-node.log" 2>&1 &
echo $! >"$work/echo-node.pid"
wait_port "$port" 30 || die "the conformance node did not start"
kosoku "ws://127.0.0.1:$port/ws/echo" -p 2 -o "$work/autobahn" | tail -n 3
stop_pidfile "$work/echo-node.pid"

log "fuzzing: every parser that takes outside bytes, 20 s each from its seed corpus"
# The long runs are docs/testing.md's ("Fuzzing"); this catches a parser
# change that breaks a target or fails on the first inputs.
scripts/fuzz.sh 20

log "load generator: a small fan-out across two nodes must lose nothing"
# Two fan-out lanes splitting from 4 receivers: the rooms' ~10 members per
# node go through the lanes, as a big room's would.
secret="loadtest-smoke-secret-0123456789abcdef"
urls=() pids=()
for n in 1 2; do
  port=$(free_port)
  CONFAB_LISTEN="127.0.0.1:$port" CONFAB_REDIS_URL="$REDIS_URL" CONFAB_MONGO_URL="$MONGO_URL" \
    CONFAB_MONGO_DB="confab_loadtest_smoke" CONFAB_JWT_SECRET="$secret" CONFAB_SESSIONLESS_TOKENS=true CONFAB_NODE_ID="smoke-$n" CONFAB_LOG=warn \
    CONFAB_FANOUT_LANES=2 CONFAB_FANOUT_SPLIT_AT=4 "$bin" serve >"$work/smoke-node-$n.log" 2>&1 &
  echo $! >"$work/smoke-node-$n.pid"
  wait_port "$port" 30 || die "smoke node $n did not start"
  urls+=(--url "http://127.0.0.1:$port") pids+=(--server-pid "$(cat "$work/smoke-node-$n.pid")")
done
"$loadtest" fanout "${urls[@]}" "${pids[@]}" --jwt-secret "$secret" \
  --rooms 2 --subscribers 20 --publishers 2 --rate 20 --warmup 2 --duration 3 --settle 0 \
  --out "$work/loadtest" >"$work/loadtest.log" 2>&1 || die "the load generator failed (see $work/loadtest.log)"
stop_pidfile "$work/smoke-node-1.pid"
stop_pidfile "$work/smoke-node-2.pid"
python3 - "$work/loadtest/results.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
problems = []
if r["connect_failures"] or r["subscriber_disconnects"]:
    problems.append(f"{r['connect_failures']} connect failures, {r['subscriber_disconnects']} disconnects")
if r["published"] < 80 or r["expected"] != r["published"] * 20:
    problems.append(f"published {r['published']}, expected {r['expected']} deliveries")
if r["lost"] or r["duplicated"] or r["delivered"] != r["expected"]:
    problems.append(f"delivered {r['delivered']} of {r['expected']}: {r['lost']} lost, {r['duplicated']} duplicated")
if not 0 < r["measured"] < r["delivered"]:
    problems.append(f"{r['measured']} of {r['delivered']} deliveries measured: the warm-up must be left out")
if r["latency"]["count"] != r["measured"] or r["cpu_seconds_per_million"] <= 0:
    problems.append("latency or CPU figures missing")
if problems:
    sys.exit("load generator smoke run: " + "; ".join(problems))
print(f"  {r['delivered']} deliveries, 0 lost, 0 duplicated, {r['measured']} measured")
EOF
log "chaos soak: three nodes, a worker, nginx; faults for 2 minutes, then exact accounting"
# A seed of its own each run (printed, with the schedule): CHAOS_SEED=N
# scripts/chaos.sh repeats one. Debug builds on FerretDB: a lighter load
# than the documented soak's. Anything lost, duplicated, reordered, stored
# twice or left unacknowledged fails it (docs/testing.md, "The chaos soak").
CONFAB_BIN="$bin" CONFAB_LOADTEST_BIN="$loadtest" CHAOS_DURATION=120 CHAOS_OUT="$work/chaos" \
  CHAOS_ARGS="--fault-min 15 --fault-max 25 --users 12 --rooms 3 --members 6 --dm-pairs 2 --rate 6 --history-rate 2 --drain 180" \
  scripts/chaos.sh >"$work/chaos.log" 2>&1 || {
  grep -v '^ *[0-9]*: \|^ *at ' "$work/chaos.log" | tail -n 60
  die "the chaos soak failed (report above)"
}
sed -n '/^| at (s)/,/^delivery latency/p' "$work/chaos/summary.md"

log "all tests passed"
