#!/usr/bin/env bash
# Read-path benchmark: requests/s of authenticated list endpoints as a ratio of
# the same server's GET /health, measured with wrk in one run on loopback.
# Usage: scripts/bench-read-path.sh [duration_seconds=10] [connections=32]
#        (ROUNDS=3 by default; ATELIER_BIN=path measures that binary)
# Prints a Markdown table (paste into docs/performance.md).
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${1:-10}"
CONNS="${2:-32}"
PROJECTS=50

command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
# ATELIER_BIN: measure another build (e.g. an earlier commit's) instead.
if [ -n "${ATELIER_BIN:-}" ]; then
  BIN="$ATELIER_BIN"
else
  cargo build --release --quiet
  BIN="${CARGO_TARGET_DIR:-target}/release/atelier"
fi

DATA=$(mktemp -d)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')
BASE="http://127.0.0.1:$PORT"
RUST_LOG=warn env ${BENCH_ENV:-} "$BIN" --data-dir "$DATA" serve --bind "127.0.0.1:$PORT" >"$DATA/serve.log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null || true; rm -rf "$DATA"' EXIT
for _ in $(seq 1 100); do curl -s -o /dev/null "$BASE/health" && break; sleep 0.1; done

TOKEN=$(curl -s -X POST "$BASE/auth/token" -H 'content-type: application/json' -d '{"label":"bench"}' \
  | python3 -c 'import sys,json; print(json.load(sys.stdin)["auth_token"]["token"])')
for i in $(seq 1 $PROJECTS); do
  curl -s -o /dev/null -X POST "$BASE/api/projects" -H "authorization: Bearer $TOKEN" \
    -H 'content-type: application/json' -d "{\"name\":\"Book $i\",\"description\":\"Volume $i of the saga\"}"
done
# 20 finished runs in book_1 (2 scenes x 2 stages x 2 candidates each), as
# a frontend polling one project would see it.
RUNS=20
for _ in $(seq 1 $RUNS); do
  curl -sf -o /dev/null -X POST "$BASE/api/projects/book_1/runs/trigger" -H "authorization: Bearer $TOKEN" \
    -H 'content-type: application/json' \
    -d '{"mode":"run","scene_refs":["sample:1@64x48","sample:2@64x48"],"stage":"time","candidates":2,"wait":true}'
done
RUN=$(curl -sf "$BASE/api/projects/book_1/runs?limit=1" -H "authorization: Bearer $TOKEN" \
  | python3 -c 'import sys,json; print(json.load(sys.stdin)["runs"][0]["id"])')
JOB=$(curl -sf "$BASE/api/projects/book_1/runs/$RUN/jobs" -H "authorization: Bearer $TOKEN" \
  | python3 -c 'import sys,json; print(json.load(sys.stdin)["jobs"][0]["id"])')
R="/api/projects/book_1/runs/$RUN"

rate() { # path [auth]; fails the benchmark on any non-2xx answer or socket error
  local args=(-t2 -c"$CONNS" -d"${DURATION}s" --latency) out
  [ "${2:-}" = auth ] && args+=(-H "Authorization: Bearer $TOKEN")
  out=$(wrk "${args[@]}" "$BASE$1")
  if grep -qE 'Non-2xx or 3xx responses|Socket errors' <<<"$out"; then
    echo "bench-read-path: $1 had failed requests; the measurement is void:" >&2
    echo "$out" >&2
    exit 1
  fi
  awk '/Requests\/sec/ {print $2}' <<<"$out"
}
# Warm up, then measure the endpoints in interleaved rounds so that drift of
# the machine hits the baseline and the list endpoints alike; report medians.
wrk -t2 -c"$CONNS" -d2s "$BASE/health" >/dev/null
ROUNDS="${ROUNDS:-3}"
ROUTES=(/health /api/projects /api/projects/book_1 /auth/tokens /api/projects/book_1/runs
        /api/projects/book_1/assets "/api/projects/book_1/assets?kind=generated&limit=50"
        "$R" "$R/jobs" "$R/jobs/$JOB/candidates" "$R/events")
declare -A RATES
for _ in $(seq 1 "$ROUNDS"); do
  for route in "${ROUTES[@]}"; do
    if [ "$route" = /health ]; then r=$(rate "$route"); else r=$(rate "$route" auth); fi
    RATES[$route]="${RATES[$route]:-} $r"
  done
done
ARGS=()
for route in "${ROUTES[@]}"; do ARGS+=("$route" "${RATES[$route]}"); done

python3 - "$DURATION" "$CONNS" "$PROJECTS" "$ROUNDS" "$RUNS" "${ARGS[@]}" <<'PY'
import statistics, sys
dur, conns, n, rounds, runs = sys.argv[1:6]
pairs = sys.argv[6:]
rates = {pairs[i]: [float(x) for x in pairs[i + 1].split()] for i in range(0, len(pairs), 2)}
h = rates["/health"]
print(f"wrk -t2 -c{conns} -d{dur}s on 127.0.0.1, release build, SQLite, {n} projects, {runs} finished runs "
      f"in book_1; {rounds} interleaved rounds, every request 2xx\n")
print("| endpoint | requests/s (median) | ratio to /health, same round (min / median / max) |")
print("|---|---:|---:|")
def spread(xs):
    xs = sorted(xs)
    return f"{xs[0]:.2f} / {statistics.median(xs):.2f} / {xs[-1]:.2f}"
for route, r in rates.items():
    name = "GET /health (baseline)" if route == "/health" else f"GET {route}"
    print(f"| {name} | {statistics.median(r):,.0f} | {spread([a / b for a, b in zip(r, h)])} |")
PY
