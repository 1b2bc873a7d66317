#!/usr/bin/env bash
# Runs Confab locally: Redis, FerretDB (MongoDB wire protocol), N `confab serve`
# nodes and nginx in front of them, and one `confab worker`, all as the
# current user, all state in one directory.
#
#   scripts/cluster.sh up       build, start everything, print the URL
#   scripts/cluster.sh status   list what runs (exit 0 all up, 1 partly, 3 nothing)
#   scripts/cluster.sh down     stop everything this script started
#
# Faults, for trying clients against failures (on a running cluster):
#   scripts/cluster.sh kill-node N    SIGKILL node N (a crash: no goodbye)
#   scripts/cluster.sh start-node N   start node N again, on its port
#   scripts/cluster.sh restart-redis  stop and start the cluster's own Redis
#                                     (its append-only file keeps the data)
#
# Environment (all optional):
#   CONFAB_CLUSTER_DIR  state directory (default: .cluster in the repository)
#   CONFAB_NODES        number of nodes (default 2)
#   CONFAB_HTTP_PORT    nginx port on 127.0.0.1 (default 8080; 0 picks a free one)
#   CONFAB_TLS=1        nginx serves https:// and wss:// with a certificate for
#                       127.0.0.1 and localhost signed by a CA made on the spot
#                       (openssl; kept in STATE/tls, clients trust STATE/tls/ca.pem)
#   CONFAB_BIN          use this confab binary instead of `cargo build --release`
#   REDIS_URL           use this Redis instead of starting one
#   MONGO_URL           use this MongoDB instead of starting FerretDB
#   CONFAB_MONGO_DB     database name (default confab)
#   CONFAB_JWT_SECRET   token secret (default: random, kept in the state directory)
#   CONFAB_WEB_DIST     serve this built web app at / (a directory with
#                       index.html) instead of web/dist, which is built
#                       (npm ci, vite build) when missing or older than its
#                       sources (web/, clients/js/)
#   CONFAB_WEB=0        no web app: / answers the API's 404, as before it existed
# Other CONFAB_* node settings (e.g. CONFAB_LOG, CONFAB_TOKEN_TTL_SECS) pass
# through to the nodes. Progress goes to stderr; `up` prints one line on stdout.
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

STATE="${CONFAB_CLUSTER_DIR:-$CONFAB_ROOT/.cluster}"
TEMPLATE="$CONFAB_ROOT/nginx/confab.conf.template"

usage() {
  sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}" >&2
  exit 2
}

nginx_bin() { command -v nginx 2>/dev/null || echo /usr/sbin/nginx; }

# pid_alive FILE NAME : the pid in FILE runs and is a NAME process.
pid_alive() {
  local file=$1 name=$2 pid comm
  [ -f "$file" ] || return 1
  pid=$(cat "$file" 2>/dev/null) || return 1
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  comm=$(ps -o comm= -p "$pid" 2>/dev/null) || return 1
  [ "$comm" = "$name" ] || return 1
  # A killed process not yet reaped is gone for our purposes.
  [[ "$(ps -o stat= -p "$pid" 2>/dev/null)" != Z* ]]
}

# stop_owned FILE NAME : stop the process in FILE if it is still ours; a stale
# pid file (process gone, or the pid reused by something else) is just removed.
stop_owned() {
  local file=$1 name=$2
  [ -f "$file" ] || return 0
  if pid_alive "$file" "$name"; then
    log "stopping $name ($(basename "$file" .pid), pid $(cat "$file"))"
    stop_pidfile "$file"
  else
    rm -f "$file"
  fi
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# http_status URL : prints the HTTP status code (000 when nothing answers).
http_status() {
  local ca=()
  [ -f "$STATE/tls/ca.pem" ] && ca=(--cacert "$STATE/tls/ca.pem")
  curl -s "${ca[@]}" -o /dev/null -m 3 -w '%{http_code}' "$1" 2>/dev/null || true
}

tls_on() { [ "${CONFAB_TLS:-0}" = 1 ]; }

# make_certificate : a CA and a server certificate for 127.0.0.1 and
# localhost in $STATE/tls, unless one is there and valid for another day.
make_certificate() {
  local dir="$STATE/tls"
  if [ -f "$dir/server.pem" ] && openssl x509 -checkend 86400 -noout -in "$dir/server.pem" >/dev/null 2>&1; then
    return
  fi
  command -v openssl >/dev/null || apt_install openssl
  mkdir -p "$dir"
  log "making a CA and a certificate for 127.0.0.1 in $dir"
  local ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
  (
    cd "$dir"
    openssl req -x509 "${ec[@]}" -keyout ca.key -out ca.pem -days 30 -subj "/CN=Confab local CA" 2>/dev/null
    openssl req "${ec[@]}" -keyout server.key -out server.csr -subj "/CN=localhost" 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >server.ext
    openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 30 \
      -extfile server.ext 2>/dev/null
    chmod 600 ca.key server.key
  ) || die "openssl could not make the certificate (see $dir)"
}

sed_escape() { printf '%s' "$1" | sed -e 's/[\\|&]/\\&/g'; }

confab_binary() {
  if [ -n "${CONFAB_BIN:-}" ]; then
    [ -x "$CONFAB_BIN" ] || die "CONFAB_BIN=$CONFAB_BIN is not an executable file"
    printf '%s\n' "$CONFAB_BIN"
    return
  fi
  command -v cargo >/dev/null || die "cargo is needed to build confab (or set CONFAB_BIN)"
  log "building confab (cargo build --release)"
  (cd "$CONFAB_ROOT" && cargo build --release --bin confab >&2) || die "cargo build failed"
  local target
  target=$(cd "$CONFAB_ROOT" && cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])') ||
    die "cargo metadata failed"
  [ -x "$target/release/confab" ] || die "built binary not found at $target/release/confab"
  printf '%s\n' "$target/release/confab"
}

# web_sources_newer DIST : prints a web app source newer than DIST/index.html, if any.
web_sources_newer() {
  local web="$CONFAB_ROOT/web" sdk="$CONFAB_ROOT/clients/js"
  find "$web/index.html" "$web/package.json" "$web/package-lock.json" "$web/vite.config.mjs" \
    "$web/tsconfig.json" "$web/src" "$sdk/package.json" "$sdk/package-lock.json" "$sdk/src" \
    -newer "$1/index.html" -print -quit 2>/dev/null
}

# web_root : the directory nginx serves the web app from (see CONFAB_WEB_DIST
# and CONFAB_WEB above); builds web/ when its dist is missing or stale.
web_root() {
  if [ -n "${CONFAB_WEB_DIST:-}" ]; then
    [ -f "$CONFAB_WEB_DIST/index.html" ] || die "CONFAB_WEB_DIST=$CONFAB_WEB_DIST has no index.html"
    (cd "$CONFAB_WEB_DIST" && pwd)
    return
  fi
  if [ "${CONFAB_WEB:-1}" = 0 ]; then
    mkdir -p "$STATE/no-web"
    printf '%s\n' "$STATE/no-web"
    return
  fi
  local web="$CONFAB_ROOT/web"
  (
    # One build at a time: clusters started at once (the tests start
    # several) share web/, and two `npm ci` in one directory break each other.
    flock 9 || exit 1
    if [ ! -f "$web/dist/index.html" ] || [ -n "$(web_sources_newer "$web/dist")" ]; then
      command -v npm >/dev/null || apt_install npm
      log "building the web app (web/: npm ci, vite build)"
      cd "$web"
      # npm ci only when the lock file changed since the last install.
      if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
        npm ci --no-audit --no-fund --loglevel=error || exit 1
      fi
      npm run --silent build || exit 1
    fi
  ) 9>"$web/.build.lock" >&2 || die "the web app did not build (web/; or set CONFAB_WEB_DIST, or CONFAB_WEB=0)"
  printf '%s\n' "$web/dist"
}

jwt_secret() {
  if [ -n "${CONFAB_JWT_SECRET:-}" ]; then
    printf '%s\n' "$CONFAB_JWT_SECRET"
    return
  fi
  local file="$STATE/jwt_secret"
  if [ ! -s "$file" ]; then
    (umask 077 && od -An -N32 -tx1 /dev/urandom | tr -d ' \n' >"$file")
    log "generated a JWT secret in $file (kept across restarts)"
  fi
  cat "$file"
}

# nginx refuses to run its workers as an unprivileged user that cannot reach
# the temp directories (nor can such workers read the web app); as root, keep
# workers as root only when needed.
user_directive() {
  [ "$(id -u)" = 0 ] || { echo "# (not root: nginx workers run as $(id -un))"; return; }
  if command -v runuser >/dev/null && runuser -u nobody -- test -x "$STATE/nginx-tmp" 2>/dev/null &&
    runuser -u nobody -- test -r "$WEB_ROOT/index.html" -o ! -e "$WEB_ROOT/index.html" 2>/dev/null; then
    echo "# (root: workers run as nginx's default user, which can reach the state dir and the web app)"
  else
    echo "user root;"
  fi
}

render_nginx_conf() {
  # render_nginx_conf PORT NODE_PORT... : writes $STATE/nginx.conf
  local port=$1 servers="" p state_esc
  shift
  for p in "$@"; do
    [ -n "$servers" ] && servers+=$'\\\n        '
    servers+="server 127.0.0.1:$p;"
  done
  state_esc=$(sed_escape "$STATE")
  local listen_tls="" tls_settings="# plain HTTP (CONFAB_TLS=1 for https)"
  if tls_on; then
    listen_tls=" ssl"
    tls_settings="ssl_certificate $state_esc/tls/server.pem;\\n        ssl_certificate_key $state_esc/tls/server.key;"
    tls_settings+="\\n        include $(sed_escape "$CONFAB_ROOT/nginx")/confab-tls.conf;"
  fi
  sed -e "s|@USER_DIRECTIVE@|$(user_directive)|" \
    -e "s|@CONF_DIR@|$(sed_escape "$CONFAB_ROOT/nginx")|g" \
    -e "s|@STATE_DIR@|$state_esc|g" \
    -e "s|@LISTEN_PORT@|$port|g" \
    -e "s|@WEB_ROOT@|$(sed_escape "$WEB_ROOT")|" \
    -e "s|@LISTEN_TLS@|$listen_tls|" \
    -e "s|@TLS_SETTINGS@|$tls_settings|" \
    -e "s|@UPSTREAM_SERVERS@|$servers|" \
    "$TEMPLATE" >"$STATE/nginx.conf"
}

wait_ready() {
  # wait_ready NAME URL PIDFILE PROCNAME LOG : up to 60 s for 200 from URL
  local name=$1 url=$2 pidfile=$3 proc=$4 logfile=$5 i code=000
  for ((i = 0; i < 120; i++)); do
    code=$(http_status "$url")
    [ "$code" = 200 ] && return 0
    pid_alive "$pidfile" "$proc" || {
      printf '%s exited; last lines of %s:\n' "$name" "$logfile" >&2
      tail -n 30 "$logfile" >&2 || true
      return 1
    }
    sleep 0.5
  done
  printf '%s did not answer 200 on %s within 60 s (last status %s); last lines of %s:\n' \
    "$name" "$url" "$code" "$logfile" >&2
  tail -n 30 "$logfile" >&2 || true
  return 1
}

cluster_running() {
  local f
  for f in "$STATE"/nginx.pid "$STATE"/node-*.pid "$STATE"/worker.pid "$STATE"/ferretdb.pid "$STATE"/redis.pid; do
    [ -f "$f" ] || continue
    case "$(basename "$f")" in
      nginx.pid) pid_alive "$f" nginx && return 0 ;;
      node-*|worker.pid) pid_alive "$f" confab && return 0 ;;
      ferretdb.pid) pid_alive "$f" ferretdb && return 0 ;;
      redis.pid) pid_alive "$f" redis-server && return 0 ;;
    esac
  done
  return 1
}

up_failed() {
  local rc=$1
  [ "$rc" = 0 ] && return 0
  log "start-up failed; stopping what was started (logs stay in $STATE)"
  down >/dev/null 2>&1 || true
  exit "$rc"
}

up() {
  mkdir -p "$STATE"
  STATE=$(cd "$STATE" && pwd)
  if cluster_running; then
    if pid_alive "$STATE/nginx.pid" nginx && [ -s "$STATE/url" ] &&
      [ "$(http_status "$(cat "$STATE/url")/readyz")" = 200 ]; then
      local url
      url=$(cat "$STATE/url")
      log "already running (scripts/cluster.sh down stops it)"
      printf 'Confab is up: %s (ws://%s/ws)\n' "$url" "${url#http://}"
      return 0
    fi
    die "a partly running cluster is in $STATE; run scripts/cluster.sh down first"
  fi
  trap 'up_failed $?' EXIT

  local nodes=${CONFAB_NODES:-2}
  [[ "$nodes" =~ ^[1-9][0-9]*$ ]] || die "CONFAB_NODES must be a positive integer (got '$nodes')"
  local http_port=${CONFAB_HTTP_PORT:-8080}
  if ! [[ "$http_port" =~ ^[0-9]{1,5}$ ]] || [ "$http_port" -gt 65535 ]; then
    die "CONFAB_HTTP_PORT must be a port number or 0 (got '$http_port')"
  fi
  if [ "$http_port" = 0 ]; then
    http_port=$(free_port)
  elif port_busy "$http_port"; then
    die "port $http_port is already in use; set CONFAB_HTTP_PORT to another port, or 0 for a free one"
  fi
  [ -f "$TEMPLATE" ] || die "missing $TEMPLATE"
  command -v curl >/dev/null || apt_install curl

  local bin
  bin=$(confab_binary)
  WEB_ROOT=$(web_root)
  rm -f "$STATE/url" "$STATE/cluster.env"

  local redis_url mongo_url port
  if [ -n "${REDIS_URL:-}" ]; then
    redis_url=$REDIS_URL
    log "using Redis at $redis_url"
  else
    ensure_redis
    port=$(free_port)
    log "starting Redis on 127.0.0.1:$port"
    start_redis "$STATE" "$port" durable
    redis_url="redis://127.0.0.1:$port"
  fi
  if [ -n "${MONGO_URL:-}" ]; then
    mongo_url=$MONGO_URL
    log "using MongoDB at $mongo_url"
  else
    ensure_ferretdb
    port=$(free_port)
    log "starting FerretDB on 127.0.0.1:$port (data in $STATE/ferretdb)"
    start_ferretdb "$STATE" "$port"
    mongo_url="mongodb://127.0.0.1:$port"
  fi

  local secret mongo_db=${CONFAB_MONGO_DB:-confab}
  secret=$(jwt_secret)
  # The running cluster's secret, for start-node.
  (umask 077 && printf '%s\n' "$secret" >"$STATE/running_secret")
  {
    printf 'REDIS_URL=%s\nMONGO_URL=%s\nMONGO_DB=%s\nBIN=%s\n' "$redis_url" "$mongo_url" "$mongo_db" "$bin"
  } >"$STATE/cluster.env"

  local i node_ports=()
  for ((i = 1; i <= nodes; i++)); do
    port=$(free_port)
    while [[ " ${node_ports[*]} " == *" $port "* ]] || [ "$port" = "$http_port" ]; do port=$(free_port); done
    node_ports+=("$port")
    echo "NODE_$i=127.0.0.1:$port" >>"$STATE/cluster.env"
    : >"$STATE/node-$i.log"
    start_node "$i" "$port" "$bin" "$redis_url" "$mongo_url" "$mongo_db" "$secret"
  done
  for ((i = 1; i <= nodes; i++)); do
    wait_ready "node-$i" "http://127.0.0.1:${node_ports[i - 1]}/readyz" \
      "$STATE/node-$i.pid" confab "$STATE/node-$i.log" || exit 1
  done
  log "all $nodes node(s) ready"

  # One background worker: notification delivery (log sink), archive, summaries.
  local wport
  wport=$(free_port)
  while [[ " ${node_ports[*]} " == *" $wport "* ]] || [ "$wport" = "$http_port" ]; do wport=$(free_port); done
  log "starting a worker (metrics on 127.0.0.1:$wport)"
  CONFAB_REDIS_URL="$redis_url" \
    CONFAB_MONGO_URL="$mongo_url" \
    CONFAB_MONGO_DB="$mongo_db" \
    CONFAB_WORKER_ID="worker-1" \
    CONFAB_METRICS_LISTEN="127.0.0.1:$wport" \
    nohup "$bin" worker </dev/null >"$STATE/worker.log" 2>&1 &
  echo $! >"$STATE/worker.pid"
  echo "WORKER=127.0.0.1:$wport" >>"$STATE/cluster.env"
  wait_ready worker "http://127.0.0.1:$wport/healthz" "$STATE/worker.pid" confab "$STATE/worker.log" || exit 1

  ensure_nginx
  local nginx
  nginx=$(nginx_bin)
  mkdir -p "$STATE/nginx-tmp"
  local scheme=http ws=ws
  if tls_on; then
    make_certificate
    scheme=https ws=wss
  else
    rm -rf "$STATE/tls"
  fi
  render_nginx_conf "$http_port" "${node_ports[@]}"
  # -e (nginx >= 1.19.5) keeps nginx from opening its compiled-in error log
  # before it has read the configuration.
  local early_log=()
  case "$("$nginx" -h 2>&1)" in *"-e filename"*) early_log=(-e "$STATE/nginx-error.log") ;; esac
  local out
  out=$("$nginx" -t -q -c "$STATE/nginx.conf" -p "$STATE/" "${early_log[@]}" 2>&1) || {
    printf '%s\n' "$out" >&2
    die "nginx rejected $STATE/nginx.conf"
  }
  log "starting nginx on 127.0.0.1:$http_port"
  "$nginx" -c "$STATE/nginx.conf" -p "$STATE/" "${early_log[@]}" >&2 ||
    { tail -n 20 "$STATE/nginx-error.log" >&2 || true; die "nginx did not start"; }
  local url="$scheme://127.0.0.1:$http_port"
  for ((i = 0; i < 50; i++)); do [ -s "$STATE/nginx.pid" ] && break; sleep 0.1; done
  wait_ready nginx "$url/readyz" "$STATE/nginx.pid" nginx "$STATE/nginx-error.log" || exit 1
  echo "HTTP_PORT=$http_port" >>"$STATE/cluster.env"
  echo "$url" >"$STATE/url"
  trap - EXIT
  if tls_on; then
    printf 'Confab is up: %s (%s://127.0.0.1:%s/ws; CA certificate: %s)\n' "$url" "$ws" "$http_port" "$STATE/tls/ca.pem"
  else
    printf 'Confab is up: %s (%s://127.0.0.1:%s/ws)\n' "$url" "$ws" "$http_port"
  fi
}

# start_node I PORT BIN REDIS_URL MONGO_URL MONGO_DB SECRET : node-I on PORT.
start_node() {
  local i=$1 port=$2 bin=$3
  log "starting node-$i on 127.0.0.1:$port"
  CONFAB_LISTEN="127.0.0.1:$port" \
    CONFAB_REDIS_URL="$4" \
    CONFAB_MONGO_URL="$5" \
    CONFAB_MONGO_DB="$6" \
    CONFAB_JWT_SECRET="$7" \
    CONFAB_NODE_ID="node-$i" \
    nohup "$bin" serve </dev/null >>"$STATE/node-$i.log" 2>&1 &
  echo $! >"$STATE/node-$i.pid"
}

# env_value NAME : NAME's value in the running cluster's cluster.env.
env_value() {
  [ -f "$STATE/cluster.env" ] || die "no cluster is running in $STATE (scripts/cluster.sh up)"
  sed -n "s/^$1=//p" "$STATE/cluster.env"
}

kill_node() {
  local i=$1
  [ -f "$STATE/node-$i.pid" ] && pid_alive "$STATE/node-$i.pid" confab || die "node-$i is not running"
  kill -KILL "$(cat "$STATE/node-$i.pid")"
  local n
  for ((n = 0; n < 50; n++)); do pid_alive "$STATE/node-$i.pid" confab || break; sleep 0.1; done
  log "node-$i killed (scripts/cluster.sh start-node $i starts it again)"
}

restart_node() {
  local i=$1 addr
  addr=$(env_value "NODE_$i")
  [ -n "$addr" ] || die "the cluster has no node-$i"
  if [ -f "$STATE/node-$i.pid" ] && pid_alive "$STATE/node-$i.pid" confab; then
    die "node-$i is already running"
  fi
  start_node "$i" "${addr##*:}" "$(env_value BIN)" "$(env_value REDIS_URL)" "$(env_value MONGO_URL)" \
    "$(env_value MONGO_DB)" "$(cat "$STATE/running_secret")"
  wait_ready "node-$i" "http://$addr/readyz" "$STATE/node-$i.pid" confab "$STATE/node-$i.log" || exit 1
  log "node-$i ready"
}

restart_redis() {
  [ -f "$STATE/redis.pid" ] || die "this cluster uses an outside Redis; restart it yourself"
  local url port
  url=$(env_value REDIS_URL)
  port=${url##*:}
  stop_owned "$STATE/redis.pid" redis-server
  start_redis "$STATE" "$port" durable
  log "Redis restarted on 127.0.0.1:$port"
}

down() {
  [ -d "$STATE" ] || { log "nothing to stop ($STATE does not exist)"; return 0; }
  local f
  stop_owned "$STATE/nginx.pid" nginx
  for f in "$STATE"/node-*.pid; do
    [ -e "$f" ] || continue
    stop_owned "$f" confab
  done
  stop_owned "$STATE/worker.pid" confab
  stop_owned "$STATE/ferretdb.pid" ferretdb
  stop_owned "$STATE/redis.pid" redis-server
  rm -f "$STATE/url" "$STATE/cluster.env" "$STATE/running_secret"
  log "stopped (state, data and logs stay in $STATE)"
}

status() {
  if [ ! -d "$STATE" ]; then
    echo "not running ($STATE does not exist)"
    return 3
  fi
  local f name proc up=0 total=0 addr
  for f in "$STATE"/redis.pid "$STATE"/ferretdb.pid "$STATE"/node-*.pid "$STATE"/worker.pid "$STATE"/nginx.pid; do
    [ -e "$f" ] || continue
    name=$(basename "$f" .pid)
    case "$name" in
      redis) proc=redis-server addr=$(sed -n 's/^REDIS_URL=//p' "$STATE/cluster.env" 2>/dev/null) ;;
      ferretdb) proc=ferretdb addr=$(sed -n 's/^MONGO_URL=//p' "$STATE/cluster.env" 2>/dev/null) ;;
      node-*) proc=confab addr=$(sed -n "s/^NODE_${name#node-}=//p" "$STATE/cluster.env" 2>/dev/null) ;;
      worker) proc=confab addr=$(sed -n 's/^WORKER=//p' "$STATE/cluster.env" 2>/dev/null) ;;
      nginx) proc=nginx addr=$(cat "$STATE/url" 2>/dev/null || true) ;;
      *) continue ;;
    esac
    total=$((total + 1))
    if pid_alive "$f" "$proc"; then
      up=$((up + 1))
      printf '%-10s running  pid %-8s %s\n' "$name" "$(cat "$f")" "$addr"
    else
      printf '%-10s stopped  (stale pid file)\n' "$name"
    fi
  done
  if [ -f "$STATE/cluster.env" ]; then
    grep -q '^REDIS_URL=' "$STATE/cluster.env" && [ ! -e "$STATE/redis.pid" ] &&
      printf '%-10s external %s\n' redis "$(sed -n 's/^REDIS_URL=//p' "$STATE/cluster.env")"
    grep -q '^MONGO_URL=' "$STATE/cluster.env" && [ ! -e "$STATE/ferretdb.pid" ] &&
      printf '%-10s external %s\n' mongo "$(sed -n 's/^MONGO_URL=//p' "$STATE/cluster.env")"
  fi
  if [ "$total" = 0 ] || [ "$up" = 0 ]; then
    echo "not running"
    return 3
  fi
  if [ "$up" = "$total" ] && pid_alive "$STATE/nginx.pid" nginx; then
    echo "Confab is up: $(cat "$STATE/url" 2>/dev/null || echo '(url unknown)')"
    return 0
  fi
  echo "partly running (scripts/cluster.sh down, then up)"
  return 1
}

node_number() {
  [[ "${1:-}" =~ ^[1-9][0-9]*$ ]] || die "expected a node number (1, 2, ...), got '${1:-}'"
}

case "${1:-}" in
  kill-node | start-node) [ $# -eq 2 ] || usage; node_number "$2" ;;
  *) [ $# -eq 1 ] || usage ;;
esac
case "$1" in
  up) up ;;
  down) down ;;
  kill-node) kill_node "$2" ;;
  start-node) restart_node "$2" ;;
  restart-redis) restart_redis ;;
  status)
    rc=0
    status || rc=$?
    exit "$rc"
    ;;
  -h | --help | help) usage ;;
  *) usage ;;
esac
