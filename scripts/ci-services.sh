#!/usr/bin/env bash
# Starts a throwaway PostgreSQL cluster for the store tests and prints the variable that points the tests at it.
#
#   eval "$(scripts/ci-services.sh [ENV_FILE])"   # start (or reuse) the cluster; also writes the export to ENV_FILE
#   scripts/ci-services.sh stop                  # stop it and remove its files
#
# Installs the postgresql package with apt-get when no PostgreSQL binaries are found (needs root). As root the server
# runs as the `postgres` user (created if missing), since PostgreSQL refuses to run as root. The cluster lives in
# $CROSSROADS_PG_DIR (default /tmp/crossroads-ci-postgres), listens on 127.0.0.1 only, at a free port, with trust
# authentication and durability switched off (fsync=off): it is for tests only. Everything but the final
# `export ...` line goes to stderr.
set -euo pipefail

PG_DIR="${CROSSROADS_PG_DIR:-/tmp/crossroads-ci-postgres}"
DATA="$PG_DIR/data"
DB_NAME=crossroads_test
log() { echo "ci-services: $*" >&2; }

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

pick_port() {
  local port tries=0
  while [ "$tries" -lt 200 ]; do
    port=$(( 20000 + (RANDOM % 20000) ))
    if ! port_in_use "$port"; then echo "$port"; return 0; fi
    tries=$((tries + 1))
  done
  log "no free port found"; return 1
}

OWNER=postgres
if [ "$(id -u)" -ne 0 ]; then OWNER="$(id -un)"; fi

if ! BINDIR="$(find_bindir)"; then
  if [ "${1:-}" = "stop" ]; then exit 0; fi
  if [ "$(id -u)" -ne 0 ]; then log "PostgreSQL binaries not found and not root: install postgresql first"; exit 1; fi
  log "installing postgresql with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends postgresql >&2
  BINDIR="$(find_bindir)" || { log "PostgreSQL binaries still not found after installing"; exit 1; }
fi

if [ "${1:-}" = "stop" ]; then
  if [ -f "$DATA/PG_VERSION" ]; then
    OWNER="$(stat -c %U "$DATA")"
    as_owner "$BINDIR/pg_ctl" -D "$DATA" -m fast -w stop >&2 2>/dev/null || true
  fi
  rm -rf "$PG_DIR"
  log "stopped"
  exit 0
fi
ENV_FILE="${1:-}"

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
  chown "$OWNER" "$PG_DIR"
  chmod 700 "$PG_DIR"
  as_owner "$BINDIR/initdb" -D "$DATA" -U postgres --auth=trust --encoding=UTF8 --locale=C.UTF-8 --no-sync >/dev/null 2>&1 \
    || as_owner "$BINDIR/initdb" -D "$DATA" -U postgres --auth=trust --encoding=UTF8 --locale=C --no-sync >&2
  PORT="$(pick_port)"
  echo "$PORT" > "$PG_DIR/port"
  as_owner "$BINDIR/pg_ctl" -D "$DATA" -l "$PG_DIR/server.log" -w -t 30 start \
    -o "-c listen_addresses=127.0.0.1 -p $PORT -k $PG_DIR -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" >&2 \
    || { log "server did not start; its log:"; cat "$PG_DIR/server.log" >&2; exit 1; }
  log "started PostgreSQL ($("$BINDIR/postgres" --version)) in $DATA on 127.0.0.1:$PORT"
fi

if ! as_owner "$BINDIR/psql" -h 127.0.0.1 -p "$PORT" -U postgres -d postgres -tAc \
    "SELECT 1 FROM pg_database WHERE datname = '$DB_NAME'" | grep -q 1; then
  as_owner "$BINDIR/createdb" -h 127.0.0.1 -p "$PORT" -U postgres "$DB_NAME"
fi

LINE="export CROSSROADS_TEST_POSTGRES_URL=postgresql://postgres@127.0.0.1:$PORT/$DB_NAME"
if [ -n "$ENV_FILE" ]; then echo "$LINE" > "$ENV_FILE"; fi
echo "$LINE"
