#!/usr/bin/env bash
# Runs the whole test suite twice: on SQLite (the embedded default) and on
# PostgreSQL, with a real S3-compatible server (moto) for object storage.
# Starts what it needs: PostgreSQL on 127.0.0.1:5432 if it is down, moto on a
# free loopback port (installed into a cached virtualenv on first use), and
# Chromium for the browser test, espeak-ng for offline speech and the desktop
# shell's build packages (scripts/desktop-deps.sh), installed with apt if missing.
# Usage: scripts/test.sh [extra nextest args, e.g. a test name filter]
set -euo pipefail
cd "$(dirname "$0")/.."

TOOLS_DIR="${ATELIER_TOOLS_DIR:-$HOME/.cache/atelier-tools}"
PG_URL="${ATELIER_TEST_PG_URL:-postgres://postgres@127.0.0.1:5432/test}"
export ATELIER_TEST_PG_URL="$PG_URL"

log() { printf '==> %s\n' "$*" >&2; }

ensure_postgres() {
  if pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then return; fi
  log "PostgreSQL is not answering on 127.0.0.1:5432; starting the local cluster"
  if command -v pg_ctlcluster >/dev/null; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -1)" main start || true
  fi
  for _ in $(seq 1 50); do pg_isready -h 127.0.0.1 -p 5432 -q && return; sleep 0.2; done
  echo "PostgreSQL did not come up on 127.0.0.1:5432" >&2; exit 1
}

ensure_moto() {
  if [ ! -x "$TOOLS_DIR/s3venv/bin/moto_server" ]; then
    log "installing moto[server] into $TOOLS_DIR/s3venv"
    mkdir -p "$TOOLS_DIR"
    python3 -m venv "$TOOLS_DIR/s3venv"
    "$TOOLS_DIR/s3venv/bin/pip" install -q 'moto[server]'
  fi
  # Schemathesis checks the served API description (scripts/api-conformance.sh);
  # pinned to the version the checks were last seen passing with.
  if [ ! -x "$TOOLS_DIR/s3venv/bin/st" ]; then
    log "installing schemathesis into $TOOLS_DIR/s3venv"
    "$TOOLS_DIR/s3venv/bin/pip" install -q 'schemathesis==4.32.5'
  fi
  local port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')
  "$TOOLS_DIR/s3venv/bin/moto_server" -H 127.0.0.1 -p "$port" >"${TMPDIR:-/tmp}/atelier-moto-$port.log" 2>&1 &
  MOTO_PID=$!
  trap 'kill "$MOTO_PID" 2>/dev/null || true' EXIT
  for _ in $(seq 1 100); do
    if curl -s -o /dev/null "http://127.0.0.1:$port/"; then
      export ATELIER_TEST_S3_ENDPOINT="http://127.0.0.1:$port"
      return
    fi
    sleep 0.1
  done
  echo "moto_server did not start" >&2; exit 1
}

# The ops console test drives a real headless Chromium (Debian's package).
ensure_chromium() {
  if command -v "${ATELIER_CHROMIUM:-chromium}" >/dev/null; then return; fi
  log "installing chromium (headless browser for the console test)"
  if command -v apt-get >/dev/null; then
    apt-get update -qq >/dev/null 2>&1 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  fi
  command -v "${ATELIER_CHROMIUM:-chromium}" >/dev/null || { echo "chromium is required (apt install chromium)" >&2; exit 1; }
}

# Offline text to speech is tested with the real espeak-ng (Debian's package).
ensure_espeak() {
  if command -v espeak-ng >/dev/null; then return; fi
  log "installing espeak-ng (offline text to speech)"
  if command -v apt-get >/dev/null; then
    apt-get update -qq >/dev/null 2>&1 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng >/dev/null
  fi
  command -v espeak-ng >/dev/null || { echo "espeak-ng is required (apt install espeak-ng)" >&2; exit 1; }
}

ensure_postgres
ensure_moto
ensure_chromium
ensure_espeak
scripts/desktop-deps.sh

# `cluster_pg` tests what only PostgreSQL provides (LISTEN/NOTIFY between
# nodes): left out of the SQLite run rather than passing there untested.
if cargo nextest --version >/dev/null 2>&1; then
  runner=(cargo nextest run --workspace --no-fail-fast)
  not_on_sqlite=(-E 'not test(/^cluster_pg::/)')
  not_on_sqlite_after=()
else
  runner=(cargo test --workspace --no-fail-fast)
  not_on_sqlite=()
  not_on_sqlite_after=()
  [ "$#" -eq 0 ] && not_on_sqlite_after=(-- --skip cluster_pg::)
fi

log "tests on SQLite"
ATELIER_TEST_DATABASE=sqlite "${runner[@]}" "${not_on_sqlite[@]}" "$@" "${not_on_sqlite_after[@]}"
log "tests on PostgreSQL ($PG_URL, one database per test)"
# The desktop shell embeds the service on SQLite only: its tests ran above.
ATELIER_TEST_DATABASE=postgres "${runner[@]}" --exclude atelier-desktop "$@"

# The served OpenAPI document against the running binary, on both stores
# (skipped when a test filter was given).
if [ "$#" -eq 0 ]; then
  BIN="${CARGO_TARGET_DIR:-target}/debug/atelier"
  cargo build --quiet --bin atelier
  log "API conformance (schemathesis) on SQLite"
  scripts/api-conformance.sh "$BIN" "$TOOLS_DIR/s3venv/bin/st"
  ST_DB="atelier_st_$$"
  psql "$PG_URL" -q -c "CREATE DATABASE $ST_DB" >/dev/null
  log "API conformance (schemathesis) on PostgreSQL"
  DATABASE_URL="${PG_URL%/*}/$ST_DB" scripts/api-conformance.sh "$BIN" "$TOOLS_DIR/s3venv/bin/st" || st_failed=1
  psql "$PG_URL" -q -c "DROP DATABASE $ST_DB WITH (FORCE)" >/dev/null
  [ -z "${st_failed:-}" ]
fi
