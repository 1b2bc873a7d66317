# Shared helpers for scripts/test.sh and scripts/cluster.sh: install what is
# missing, find free ports, start and stop Redis and FerretDB in a directory.
# Source it; it defines functions only.

CONFAB_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
FERRETDB_VERSION="v1.24.2"
GOBIN="${GOBIN:-$(go env GOPATH 2>/dev/null || echo "$HOME/go")/bin}"
FERRETDB_BIN="${FERRETDB_BIN:-$GOBIN/ferretdb}"

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

apt_install() {
  # apt_install PKG... : installs the Debian packages that are missing.
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing ${missing[*]}"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${missing[@]}" >/dev/null
}

ensure_redis() { command -v redis-server >/dev/null || apt_install redis-server; }
ensure_nginx() { command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || apt_install nginx; }

# FerretDB's module source lacks the version file its build embeds, so
# `go install` gives a binary that refuses to start. Build it from the module
# cache with the version written in.
PROMTOOL_VERSION="v0.316.0"
PROMTOOL_BIN="${PROMTOOL_BIN:-$GOBIN/promtool}"

ensure_promtool() {
  # Prometheus's rule checker, built from the Go module proxy (a few minutes, once).
  if [ -x "$PROMTOOL_BIN" ] && "$PROMTOOL_BIN" --version >/dev/null 2>&1; then return 0; fi
  command -v go >/dev/null || die "Go is needed to build promtool (apt-get install golang-go)"
  log "building promtool $PROMTOOL_VERSION"
  GOBIN="$(dirname "$PROMTOOL_BIN")" GOFLAGS=-mod=mod go install "github.com/prometheus/prometheus/cmd/promtool@$PROMTOOL_VERSION" ||
    die "promtool did not build"
}

ensure_ferretdb() {
  if [ -x "$FERRETDB_BIN" ] && "$FERRETDB_BIN" --version >/dev/null 2>&1; then return 0; fi
  command -v go >/dev/null || die "Go is needed to build FerretDB (apt-get install golang-go)"
  log "building FerretDB $FERRETDB_VERSION"
  local modcache src tmp
  GOFLAGS=-mod=mod go mod download "github.com/FerretDB/FerretDB@$FERRETDB_VERSION" >/dev/null 2>&1 || true
  modcache="$(go env GOMODCACHE)"
  src="$modcache/github.com/!ferret!d!b/!ferret!d!b@$FERRETDB_VERSION"
  [ -d "$src" ] || die "FerretDB $FERRETDB_VERSION source not found in the Go module cache"
  tmp="$(mktemp -d)"
  cp -r "$src" "$tmp/ferretdb" && chmod -R u+w "$tmp/ferretdb"
  echo "$FERRETDB_VERSION" > "$tmp/ferretdb/build/version/version.txt"
  mkdir -p "$(dirname "$FERRETDB_BIN")"
  (cd "$tmp/ferretdb" && go build -o "$FERRETDB_BIN" ./cmd/ferretdb) || die "building FerretDB failed"
  rm -rf "$tmp"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

wait_port() {
  # wait_port PORT [SECONDS]
  local port=$1 secs=${2:-30} i
  for ((i = 0; i < secs * 10; i++)); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}

start_redis() {
  # start_redis DIR PORT [durable] : a Redis, pid in DIR/redis.pid; throwaway
  # (no persistence) unless `durable`: then an append-only file in DIR keeps
  # its keys (sessions among them) across restarts.
  local dir=$1 port=$2 aof=no
  [[ ${3:-} == durable ]] && aof=yes
  mkdir -p "$dir"
  redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly "$aof" --daemonize yes \
    --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" --dir "$dir" >/dev/null
  wait_port "$port" 20 || die "redis did not start (see $dir/redis.log)"
}

start_redis_cluster() {
  # start_redis_cluster DIR PORT... : a Redis Cluster of one master per port
  # (no replicas, no persistence), each in DIR/<port> with its pid in
  # DIR/<port>/redis.pid; returns once every slot is served. Prints the
  # cluster's URL (redis-cluster://...). Each server's cluster bus gets a
  # free port of its own (the default, PORT + 10000, may be past 65535).
  local dir=$1 port url sep i
  shift
  for port in "$@"; do
    mkdir -p "$dir/$port"
    redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --daemonize yes \
      --cluster-enabled yes --cluster-port "$(free_port)" \
      --cluster-config-file "$dir/$port/nodes.conf" --cluster-node-timeout 2000 \
      --pidfile "$dir/$port/redis.pid" --logfile "$dir/$port/redis.log" --dir "$dir/$port" >/dev/null
    wait_port "$port" 20 || die "redis (cluster, port $port) did not start (see $dir/$port/redis.log)"
  done
  redis-cli --cluster create $(printf '127.0.0.1:%s ' "$@") --cluster-replicas 0 --cluster-yes \
    >"$dir/create.log" 2>&1 || die "redis-cli --cluster create failed (see $dir/create.log)"
  for ((i = 0; i < 100; i++)); do
    redis-cli -p "$1" cluster info 2>/dev/null | grep -q '^cluster_state:ok' && break
    sleep 0.1
  done
  redis-cli -p "$1" cluster info | grep -q '^cluster_state:ok' || die "the Redis Cluster did not become ready"
  url="redis-cluster://127.0.0.1:$1" sep='?'
  for port in "${@:2}"; do url+="${sep}node=127.0.0.1:$port" sep='&'; done
  echo "$url"
}

test_binary() {
  # test_binary NAME : the path of the integration test NAME as
  # `cargo test --workspace --all-targets` built it (nothing is compiled).
  cargo test --workspace --all-targets --no-run --message-format=json 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    t = m.get("target", {})
    if m.get("reason") == "compiler-artifact" and m.get("executable") and t.get("kind") == ["test"] and t.get("name") == sys.argv[1]:
        print(m["executable"])
        sys.exit(0)
sys.exit(1)
' "$1"
}

start_ferretdb() {
  # start_ferretdb DIR PORT : FerretDB on SQLite files in DIR/ferretdb, pid in DIR/ferretdb.pid
  # WAL with synchronous=NORMAL: a commit does not wait for fsync (the WAL is
  # synced at checkpoints), like mongod's default acknowledged write, which
  # reaches the journal within 100 ms rather than before the reply.
  local dir=$1 port=$2
  mkdir -p "$dir/ferretdb"
  run_ferretdb "$dir" "$port" "$dir/ferretdb" --handler=sqlite \
    --sqlite-url="file:$dir/ferretdb/?_pragma=busy_timeout(10000)&_pragma=journal_mode(wal)&_pragma=synchronous(normal)"
}

run_ferretdb() {
  # run_ferretdb DIR PORT STATE_DIR BACKEND_ARGS... : FerretDB on 127.0.0.1:PORT
  # in the background, log in DIR/ferretdb.log, pid in DIR/ferretdb.pid
  local dir=$1 port=$2 state=$3
  shift 3
  "$FERRETDB_BIN" "$@" --listen-addr="127.0.0.1:$port" \
    --telemetry=disable --debug-addr=- --state-dir="$state" --log-level=warn \
    >"$dir/ferretdb.log" 2>&1 &
  echo $! >"$dir/ferretdb.pid"
  wait_port "$port" 30 || die "FerretDB did not start (see $dir/ferretdb.log)"
}

# PostgreSQL from Debian, for FerretDB's PostgreSQL backend (benchmarks).
ensure_postgresql() {
  pg_bindir >/dev/null 2>&1 || apt_install postgresql
  pg_bindir >/dev/null || die "PostgreSQL's server binaries not found after installing postgresql"
}

pg_bindir() {
  # The newest installed server's bin directory (Debian keeps them apart).
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  [ -n "$d" ] && [ -x "$d/postgres" ] && echo "$d"
}

start_ferretdb_pg() {
  # start_ferretdb_pg DIR PORT : FerretDB on a PostgreSQL of its own whose
  # data lives in a new temporary directory (printed to DIR/postgres.dir);
  # pids in DIR/ferretdb.pid and DIR/postgres.pid. Commits do not wait for
  # fsync (synchronous_commit=off), like the SQLite setup above and like
  # mongod's default acknowledged write.
  local dir=$1 port=$2 bin pgdir pgport run=()
  bin=$(pg_bindir)
  pgport=$(free_port)
  pgdir=$(mktemp -d -t confab-pg.XXXXXX)
  echo "$pgdir" >"$dir/postgres.dir"
  echo "$pgport" >"$dir/postgres.port"
  if [ "$(id -u)" = 0 ]; then
    # initdb and postgres refuse to run as root.
    chown postgres "$pgdir"
    run=(runuser -u postgres --)
  fi
  "${run[@]}" "$bin/initdb" -D "$pgdir/data" -A trust -U postgres >"$dir/postgres-init.log" 2>&1 ||
    die "initdb failed (see $dir/postgres-init.log)"
  "${run[@]}" "$bin/postgres" -D "$pgdir/data" -p "$pgport" -k "$pgdir" -c listen_addresses=127.0.0.1 \
    -c synchronous_commit=off -c max_connections=300 >"$dir/postgres.log" 2>&1 &
  echo $! >"$dir/postgres.pid"
  wait_port "$pgport" 30 || die "PostgreSQL did not start (see $dir/postgres.log)"
  for _ in $(seq 1 50); do "$bin/pg_isready" -h 127.0.0.1 -p "$pgport" -q && break; sleep 0.1; done
  "${run[@]}" "$bin/createdb" -h 127.0.0.1 -p "$pgport" -U postgres ferretdb || die "createdb failed"
  run_ferretdb "$dir" "$port" "$pgdir" --handler=postgresql \
    --postgresql-url="postgres://postgres@127.0.0.1:$pgport/ferretdb"
}

ferretdb_pg_gin() {
  # ferretdb_pg_gin DIR DB COLLECTION:FIELD... : a GIN index on each given
  # top-level field, made in the PostgreSQL that start_ferretdb_pg DIR started.
  # FerretDB 1.x passes an equality to PostgreSQL as `_jsonb->'f' @> value`,
  # which the B-tree indexes FerretDB makes cannot serve; a GIN index can.
  # FerretDB does not know these indexes; dropping the collection drops them.
  local dir=$1 db=$2 bin port pair coll field table psql
  shift 2
  bin=$(pg_bindir)
  port=$(cat "$dir/postgres.port")
  psql=("$bin/psql" -h 127.0.0.1 -p "$port" -U postgres -d ferretdb -v ON_ERROR_STOP=1 -Atq)
  for pair in "$@"; do
    coll=${pair%%:*} field=${pair#*:}
    table=$("${psql[@]}" -c "SELECT _jsonb->>'table' FROM \"$db\"._ferretdb_database_metadata WHERE _jsonb->>'_id' = '$coll'")
    [ -n "$table" ] || die "no collection $coll in database $db"
    "${psql[@]}" -c "CREATE INDEX IF NOT EXISTS \"${table}_${field}_gin\" ON \"$db\".\"$table\" USING gin ((_jsonb->'$field') jsonb_path_ops)" ||
      die "creating a GIN index on $coll.$field failed"
  done
  "${psql[@]}" -c "ANALYZE" || die "ANALYZE failed"
}

pg_vacuum() {
  # pg_vacuum DIR : VACUUM ANALYZE in the PostgreSQL that start_ferretdb_pg DIR
  # started: after a bulk load, the state of a store that has lived with its
  # data (else autovacuum does it during whatever is measured next).
  local bin port
  bin=$(pg_bindir)
  port=$(cat "$1/postgres.port")
  "$bin/psql" -h 127.0.0.1 -p "$port" -U postgres -d ferretdb -v ON_ERROR_STOP=1 -q -c "VACUUM (ANALYZE)" ||
    die "VACUUM failed"
}

stop_pidfile() {
  # stop_pidfile FILE : TERM the process, KILL it if it lingers
  local f=$1 pid i
  [ -f "$f" ] || return 0
  pid=$(cat "$f")
  if kill "$pid" 2>/dev/null; then
    for ((i = 0; i < 50; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}
