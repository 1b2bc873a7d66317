#!/usr/bin/env bash
# Schemathesis against one node: every operation of the node's own
# /openapi.json, with generated valid and invalid inputs, authenticated with
# a user's bearer token (the user is an administrator, so /admin is reached
# too) and a server API key. Fails on any 5xx, any status, content type or
# body that the document does not describe.
#
#   CONFAB_BIN=target/debug/confab scripts/schemathesis.sh [STATE_DIR]
#
# Builds nothing: CONFAB_BIN is the binary to test. STATE_DIR (default
# ~/.cache/confab) keeps the Schemathesis virtualenv between runs, and the
# last run's log and reports. Starts Redis and FerretDB on free ports in a
# temporary directory, unless REDIS_URL / MONGO_URL name servers of your own
# (a fresh database and key prefix are used there), and stops all it started.
#
# Bounds: SCHEMATHESIS_MAX_EXAMPLES per operation (default 20) and
# SCHEMATHESIS_TIMEOUT seconds for the whole run (default 1200);
# SCHEMATHESIS_SEED repeats a run.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$CONFAB_ROOT"

bin="${CONFAB_BIN:-}"
[ -n "$bin" ] || die "set CONFAB_BIN to the confab binary to test (e.g. target/debug/confab)"
[ -x "$bin" ] || die "CONFAB_BIN=$bin is not an executable"
bin="$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")"
state="${1:-${XDG_CACHE_HOME:-$HOME/.cache}/confab}"
mkdir -p "$state"
state="$(cd "$state" && pwd)"
max_examples="${SCHEMATHESIS_MAX_EXAMPLES:-20}"
time_bound="${SCHEMATHESIS_TIMEOUT:-1200}"

command -v curl >/dev/null || apt_install curl
venv="$state/schemathesis-venv"
if ! "$venv/bin/schemathesis" --version >/dev/null 2>&1; then
  log "installing Schemathesis into $venv"
  # Debian's python3 makes virtualenvs only with python3-venv.
  python3 -m venv "$venv" 2>/dev/null || { apt_install python3-venv && python3 -m venv --clear "$venv"; }
  "$venv/bin/pip" install --quiet --upgrade pip
  "$venv/bin/pip" install --quiet schemathesis
fi
"$venv/bin/schemathesis" --version >/dev/null || die "Schemathesis did not install"

work="$(mktemp -d -t confab-schemathesis.XXXXXX)"
cleanup() {
  local rc=$?
  stop_pidfile "$work/node.pid"
  stop_pidfile "$work/ferretdb.pid"
  stop_pidfile "$work/redis.pid"
  if [ $rc -ne 0 ] && [ -f "$work/node.log" ]; then
    echo "--- tail of the node's log"
    tail -n 40 "$work/node.log"
  fi
  [ -f "$work/node.log" ] && cp "$work/node.log" "$state/schemathesis-node.log"
  rm -rf "$work"
  exit $rc
}
trap cleanup EXIT

if [ -z "${REDIS_URL:-}" ]; then
  ensure_redis
  port=$(free_port)
  start_redis "$work" "$port"
  REDIS_URL="redis://127.0.0.1:$port"
fi
if [ -z "${MONGO_URL:-}" ]; then
  ensure_ferretdb
  port=$(free_port)
  start_ferretdb "$work" "$port"
  MONGO_URL="mongodb://127.0.0.1:$port"
fi
log "Redis at $REDIS_URL, MongoDB-compatible server at $MONGO_URL"

run_id="st$(date +%s)$$"
export CONFAB_REDIS_URL="$REDIS_URL" CONFAB_MONGO_URL="$MONGO_URL" CONFAB_MONGO_DB="confab_$run_id"
export CONFAB_KEY_PREFIX="confab-$run_id"
port=$(free_port)
base="http://127.0.0.1:$port"
log "starting a node at $base"
# Every rate limit generous: thousands of generated requests come from one
# user, one key and one address, and failed logins are part of them.
CONFAB_LISTEN="127.0.0.1:$port" CONFAB_JWT_SECRET="schemathesis-run-secret-0123456789abcdef" \
  CONFAB_NODE_ID="schemathesis" CONFAB_LOG="${CONFAB_LOG:-warn}" \
  CONFAB_REST_RATE_PER_MINUTE=1000000 CONFAB_API_RATE_PER_MINUTE=1000000 \
  CONFAB_AUTH_RATE_PER_MINUTE=1000000 CONFAB_LOGIN_MAX_FAILURES=1000000 \
  "$bin" serve >"$work/node.log" 2>&1 &
echo $! >"$work/node.pid"
wait_port "$port" 60 || die "the node did not start"
for _ in $(seq 1 100); do
  curl -fsS "$base/readyz" >/dev/null 2>&1 && break
  sleep 0.2
done
curl -fsS "$base/readyz" >/dev/null || die "the node is not ready"

log "a user (an administrator) and an API key"
user="schemathesis"
password="schemathesis-password-1"
curl -fsS -X POST "$base/register" -H 'Content-Type: application/json' \
  -d "{\"username\":\"$user\",\"email\":\"$user@example.com\",\"password\":\"$password\"}" >/dev/null ||
  die "registering the user failed"
"$bin" user promote "$user" >/dev/null || die "confab user promote failed"
api_key="$("$bin" apikey create --name schemathesis 2>/dev/null)"
[[ $api_key == ck_* ]] || die "confab apikey create printed no key"

# Things for the generated requests to find: another user, rooms of each
# kind, messages. Their ids are offered (half the time) wherever an id goes,
# so that requests get past "not found" to the handlers' own logic.
call() {
  # call METHOD PATH TOKEN BODY FIELD: the answer's top-level FIELD,
  # failing on any answer but 2xx.
  local method=$1 path=$2 token=$3 body=$4 field=$5 out
  out=$(curl -fsS -X "$method" "$base$path" -H "Authorization: Bearer $token" \
    -H 'Content-Type: application/json' ${body:+-d "$body"}) || die "$method $path failed"
  python3 -c 'import json, sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$out" "$field"
}
login() {
  curl -fsS -X POST "$base/login" -H 'Content-Type: application/json' \
    -d "{\"username\":\"$1\",\"password\":\"$password\"}" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["access_token"])'
}
curl -fsS -X POST "$base/register" -H 'Content-Type: application/json' \
  -d "{\"username\":\"peer\",\"email\":\"peer@example.com\",\"password\":\"$password\"}" >/dev/null ||
  die "registering a second user failed"
token=$(login "$user") || die "logging in failed"
peer_token=$(login peer) || die "logging in failed"
me=$(call GET /users/me "$token" "" id)
peer=$(call GET /users/me "$peer_token" "" id)
public=$(call POST /rooms "$token" '{"name":"general","type":"public"}' id)
private=$(call POST /rooms "$token" '{"name":"backstage","type":"private"}' id)
call POST "/rooms/$public/join" "$peer_token" "" room_id >/dev/null
call POST "/rooms/$private/members" "$token" "{\"user_id\":\"$peer\"}" room_id >/dev/null
ids=("$me" "$peer" "$public" "$private")
for room in "$public" "$private"; do
  for n in 1 2; do
    ids+=("$(call POST /messages "$token" "{\"room_id\":\"$room\",\"content\":\"hello $n\"}" id)")
    ids+=("$(call POST /messages "$peer_token" "{\"room_id\":\"$room\",\"content\":\"hi @$user\"}" id)")
  done
done
ids+=("$(call POST /messages "$peer_token" "{\"to_user_id\":\"$me\",\"content\":\"psst\"}" room_id)")
call PUT "/contacts/$peer" "$token" "" id >/dev/null
id_list=$(printf '"%s", ' "${ids[@]}")

# Bearer: a token from POST /login, fetched again whenever an answer is 401
# (the run's own /logout, /logout/all and the like end the session it
# used). API key: the whole `ApiKey <key>` header value.
cat >"$work/schemathesis.toml" <<EOF
[auth]
auto-signup = false

[auth.dynamic.openapi.bearer]
path = "/login"
method = "post"
payload = { username = "$user", password = "$password" }
extract_selector = "/access_token"

[auth.openapi.apikey]
api_key = "ApiKey $api_key"

[dictionaries.ids]
values = [${id_list%, }]

[parameters]
"path.id" = { dictionary = "ids", probability = 0.5 }
"path.user_id" = { dictionary = "ids", probability = 0.5 }
"query.room_id" = { dictionary = "ids", probability = 0.5 }
"query.peer" = { dictionary = "ids", probability = 0.5 }
"query.before" = { dictionary = "ids", probability = 0.3 }
"query.after" = { dictionary = "ids", probability = 0.3 }
"query.actor" = { dictionary = "ids", probability = 0.5 }
"body.room_id" = { dictionary = "ids", probability = 0.5 }
"body.user_id" = { dictionary = "ids", probability = 0.5 }
"body.to_user_id" = { dictionary = "ids", probability = 0.5 }
"body.message_id" = { dictionary = "ids", probability = 0.5 }
EOF

seed=()
[ -n "${SCHEMATHESIS_SEED:-}" ] && seed=(--seed "$SCHEMATHESIS_SEED")
log "schemathesis: every operation, at most $max_examples examples each, at most ${time_bound}s"
set +e
# From the state directory, where Schemathesis keeps its cache of crashes.
(cd "$state" && timeout --kill-after=30 "$time_bound" \
  "$venv/bin/schemathesis" --config-file "$work/schemathesis.toml" run "$base/openapi.json" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
  --max-examples "$max_examples" --request-timeout 30 --no-color \
  --report junit,ndjson --report-dir "$state/schemathesis-report" "${seed[@]}") 2>&1 |
  tee "$state/schemathesis.log"
rc=${PIPESTATUS[0]}
set -e
if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
  die "schemathesis did not finish within ${time_bound}s"
fi
[ "$rc" -eq 0 ] || die "schemathesis found failures (exit $rc; log in $state/schemathesis.log)"
log "schemathesis: no failures"
