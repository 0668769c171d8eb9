#!/usr/bin/env bash
# Starts a throwaway PostgreSQL cluster and a throwaway Redis server for the tests and prints the variables that point
# the tests at them.
#
#   eval "$(scripts/ci-services.sh [ENV_FILE])"   # start (or reuse) both; also writes the exports to ENV_FILE
#   scripts/ci-services.sh stop [postgres] [redis]   # stop them (default: both) and remove their files
#
# Installs the postgresql package with apt-get when no PostgreSQL binaries are found (needs root); apt-get's output
# goes to $CROSSROADS_CI_INSTALL_LOG (default /tmp/crossroads-ci-install.log), not the terminal. As root the server
# runs as the `postgres` user (created if missing), since PostgreSQL refuses to run as root. The cluster lives in
# $CROSSROADS_PG_DIR (default /tmp/crossroads-ci-postgres), listens on 127.0.0.1 only, at a free port, with trust
# authentication and durability switched off (fsync=off): it is for tests only.
#
# Redis: installs Debian's redis-server package with apt-get when redis-server is missing (needs root). The server
# lives in $CROSSROADS_REDIS_DIR (default /tmp/crossroads-ci-redis), listens on 127.0.0.1 only, at a free port, with
# persistence off (no RDB snapshots, no AOF): it is for tests only.
#
# Everything but the final three lines goes to stderr: two `export ...` lines (PostgreSQL, then Redis), then
# CROSSROADS_SERVICES_STARTED="..." naming those this run started (not reused), so that a caller can stop what it
# started (scripts/test does) and nothing else. When starting fails, what this run started is stopped again.
set -euo pipefail

PG_DIR="${CROSSROADS_PG_DIR:-/tmp/crossroads-ci-postgres}"
DATA="$PG_DIR/data"
DB_NAME=crossroads_test
REDIS_DIR="${CROSSROADS_REDIS_DIR:-/tmp/crossroads-ci-redis}"
INSTALL_LOG="${CROSSROADS_CI_INSTALL_LOG:-/tmp/crossroads-ci-install.log}"
STARTED=""
log() { echo "ci-services: $*" >&2; }

# apt_install PACKAGE: install it with apt-get, the output kept in $INSTALL_LOG.
apt_install() {
  log "installing $1 with apt-get (output in $INSTALL_LOG)"
  export DEBIAN_FRONTEND=noninteractive
  if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends "$1"; } >>"$INSTALL_LOG" 2>&1; then
    log "apt-get failed; the end of $INSTALL_LOG:"
    tail -n 25 "$INSTALL_LOG" >&2
    exit 1
  fi
}

find_bindir() {
  local dir
  if command -v pg_config >/dev/null 2>&1; then
    dir="$(pg_config --bindir 2>/dev/null || true)"
    if [ -n "$dir" ] && [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ]; then echo "$dir"; return 0; fi
  fi
  # Debian keeps the server binaries per major version; take the newest.
  for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    if [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ]; then echo "$dir"; return 0; fi
  done
  return 1
}

# as_owner CMD...: run CMD as the cluster's owner (the postgres user when we are root).
as_owner() {
  if [ "$(id -u)" -eq 0 ]; then
    if command -v runuser >/dev/null 2>&1; then runuser -u "$OWNER" -- "$@"; else su -s /bin/sh "$OWNER" -c "$(printf '%q ' "$@")"; fi
  else
    "$@"
  fi
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# A port below the kernel's ephemeral range (ip_local_port_range, 32768-60999 by default): the tests' fakes and
# gateways bind port 0 and their clients connect from ephemeral ports, so a port picked inside that range could be
# taken between this check and the server's bind (a Redis that failed with "Address already in use").
pick_port() {
  local port tries=0 low=32768 span
  read -r low _ < /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || low=32768
  span=$(( low - 20000 ))
  if [ "$span" -lt 1000 ]; then span=20000; fi  # an unusual range: as before
  while [ "$tries" -lt 200 ]; do
    port=$(( 20000 + (RANDOM % span) ))
    if ! port_in_use "$port"; then echo "$port"; return 0; fi
    tries=$((tries + 1))
  done
  log "no free port found"; return 1
}

# redis_ping PORT: whether a Redis server answers PING on 127.0.0.1:PORT (plain bash, no redis-cli needed).
# In a subshell, so that a refused connection cannot end the script.
redis_ping() {
  (
    exec 4<>"/dev/tcp/127.0.0.1/$1" || exit 1
    printf 'PING\r\n' >&4
    reply=""
    read -r -t 2 reply <&4 || true
    [ "${reply%$'\r'}" = "+PONG" ]
  ) 2>/dev/null
}

# is_redis PID: whether PID is a live redis-server (a stale pid file may name an unrelated process by now).
is_redis() { [ -n "$1" ] && [ "$(ps -p "$1" -o comm= 2>/dev/null)" = "redis-server" ]; }

stop_redis() {
  local pid
  if [ -f "$REDIS_DIR/redis.pid" ]; then
    pid="$(cat "$REDIS_DIR/redis.pid")"
    if is_redis "$pid"; then
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
  fi
  rm -rf "$REDIS_DIR"
}

# start_redis: start (or reuse) the Redis server and set REDIS_PORT.
start_redis() {
  local pid
  if [ -f "$REDIS_DIR/port" ] && [ -f "$REDIS_DIR/redis.pid" ]; then
    REDIS_PORT="$(cat "$REDIS_DIR/port")"
    pid="$(cat "$REDIS_DIR/redis.pid")"
    if is_redis "$pid" && redis_ping "$REDIS_PORT"; then
      log "reusing the running Redis in $REDIS_DIR on port $REDIS_PORT"
      return 0
    fi
  fi
  stop_redis  # a stale server or leftover files: start afresh
  if ! command -v redis-server >/dev/null 2>&1; then
    if [ "$(id -u)" -ne 0 ]; then log "redis-server not found and not root: install redis-server first"; exit 1; fi
    apt_install redis-server
    command -v redis-server >/dev/null 2>&1 || { log "redis-server still not found after installing"; exit 1; }
  fi
  mkdir -p "$REDIS_DIR"
  chmod 700 "$REDIS_DIR"
  REDIS_PORT="$(pick_port)"
  echo "$REDIS_PORT" > "$REDIS_DIR/port"
  STARTED="$STARTED redis"
  # save "" and appendonly no: nothing is ever written to disk.
  redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no --dir "$REDIS_DIR" \
    --daemonize yes --pidfile "$REDIS_DIR/redis.pid" --logfile "$REDIS_DIR/redis.log" >&2 \
    || { log "redis-server did not start"; exit 1; }
  for _ in $(seq 100); do
    if redis_ping "$REDIS_PORT"; then
      log "started Redis $(redis-server --version | sed -n 's/.* v=\([^ ]*\).*/\1/p') in $REDIS_DIR on 127.0.0.1:$REDIS_PORT"
      return 0
    fi
    sleep 0.1
  done
  log "Redis did not answer; its log:"; cat "$REDIS_DIR/redis.log" >&2 2>/dev/null || true
  exit 1
}

stop_postgres() {
  local bindir
  if [ -f "$DATA/PG_VERSION" ] && bindir="$(find_bindir)"; then
    OWNER="$(stat -c %U "$DATA")"
    as_owner "$bindir/pg_ctl" -D "$DATA" -m fast -w stop >/dev/null 2>&1 || true
  fi
  rm -rf "$PG_DIR"
}

if [ "${1:-}" = "stop" ]; then
  shift
  which=" ${*:-postgres redis} "
  if [[ "$which" == *" redis "* ]]; then stop_redis; log "stopped Redis"; fi
  if [[ "$which" == *" postgres "* ]]; then stop_postgres; log "stopped PostgreSQL"; fi
  exit 0
fi
ENV_FILE="${1:-}"

# A failed start stops what this run started (and only that).
on_exit() {
  local status=$?
  if [ "$status" -ne 0 ]; then
    if [[ "$STARTED" == *redis* ]]; then stop_redis; fi
    if [[ "$STARTED" == *postgres* ]]; then stop_postgres; fi
  fi
}
trap on_exit EXIT

OWNER=postgres
if [ "$(id -u)" -ne 0 ]; then OWNER="$(id -un)"; fi

if ! BINDIR="$(find_bindir)"; then
  if [ "$(id -u)" -ne 0 ]; then log "PostgreSQL binaries not found and not root: install postgresql first"; exit 1; fi
  apt_install postgresql
  BINDIR="$(find_bindir)" || { log "PostgreSQL binaries still not found after installing"; exit 1; }
fi

if [ "$(id -u)" -eq 0 ] && ! id "$OWNER" >/dev/null 2>&1; then
  log "creating system user $OWNER"
  useradd --system --no-create-home --shell /usr/sbin/nologin "$OWNER"
fi

if [ -f "$PG_DIR/port" ] && [ -f "$DATA/PG_VERSION" ] && as_owner "$BINDIR/pg_ctl" -D "$DATA" status >/dev/null 2>&1; then
  PORT="$(cat "$PG_DIR/port")"
  log "reusing the running cluster in $DATA on port $PORT"
else
  if [ -f "$DATA/PG_VERSION" ]; then  # a stale cluster (e.g. after a reboot): start afresh
    as_owner "$BINDIR/pg_ctl" -D "$DATA" -m immediate stop >/dev/null 2>&1 || true
  fi
  rm -rf "$PG_DIR"
  mkdir -p "$PG_DIR"
  STARTED="$STARTED postgres"
  chown "$OWNER" "$PG_DIR"
  chmod 700 "$PG_DIR"
  as_owner "$BINDIR/initdb" -D "$DATA" -U postgres --auth=trust --encoding=UTF8 --locale=C.UTF-8 --no-sync >/dev/null 2>&1 \
    || as_owner "$BINDIR/initdb" -D "$DATA" -U postgres --auth=trust --encoding=UTF8 --locale=C --no-sync >&2
  PORT="$(pick_port)"
  echo "$PORT" > "$PG_DIR/port"
  as_owner "$BINDIR/pg_ctl" -D "$DATA" -l "$PG_DIR/server.log" -w -t 30 start \
    -o "-c listen_addresses=127.0.0.1 -p $PORT -k $PG_DIR -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" >/dev/null \
    || { log "server did not start; its log:"; cat "$PG_DIR/server.log" >&2; exit 1; }
  log "started PostgreSQL ($("$BINDIR/postgres" --version)) in $DATA on 127.0.0.1:$PORT"
fi

if ! as_owner "$BINDIR/psql" -h 127.0.0.1 -p "$PORT" -U postgres -d postgres -tAc \
    "SELECT 1 FROM pg_database WHERE datname = '$DB_NAME'" | grep -q 1; then
  as_owner "$BINDIR/createdb" -h 127.0.0.1 -p "$PORT" -U postgres "$DB_NAME"
fi

start_redis

LINE="export CROSSROADS_TEST_POSTGRES_URL=postgresql://postgres@127.0.0.1:$PORT/$DB_NAME"
REDIS_LINE="export CROSSROADS_TEST_REDIS_URL=redis://127.0.0.1:$REDIS_PORT/0"
if [ -n "$ENV_FILE" ]; then printf '%s\n%s\n' "$LINE" "$REDIS_LINE" > "$ENV_FILE"; fi
echo "$LINE"
echo "$REDIS_LINE"
echo "CROSSROADS_SERVICES_STARTED=\"${STARTED# }\""
