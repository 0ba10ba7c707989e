#!/usr/bin/env bash
# Read-path benchmark: requests/s of authenticated list endpoints as a ratio of
# the same server's GET /health, measured with wrk in one run on loopback.
# Usage: scripts/bench-read-path.sh [duration_seconds=10] [connections=32]
# Prints a Markdown table (paste into docs/performance.md).
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${1:-10}"
CONNS="${2:-32}"
PROJECTS=50

command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
cargo build --release --quiet
BIN="${CARGO_TARGET_DIR:-target}/release/atelier"

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
H=(); P=(); D=(); T=()
for _ in $(seq 1 "$ROUNDS"); do
  H+=("$(rate /health)")
  P+=("$(rate /api/projects auth)")
  D+=("$(rate /api/projects/book_1 auth)")
  T+=("$(rate /auth/tokens auth)")
done

python3 - "${H[*]}" "${P[*]}" "${D[*]}" "${T[*]}" "$DURATION" "$CONNS" "$PROJECTS" "$ROUNDS" <<'PY'
import statistics, sys
h, p, d, t = ([float(x) for x in a.split()] for a in sys.argv[1:5])
dur, conns, n, rounds = sys.argv[5:9]
print(f"wrk -t2 -c{conns} -d{dur}s on 127.0.0.1, release build, SQLite, {n} projects; {rounds} interleaved rounds, every request 2xx\n")
print("| endpoint | requests/s (median) | ratio to /health, same round (min / median / max) |")
print("|---|---:|---:|")
def spread(xs):
    xs = sorted(xs)
    return f"{xs[0]:.2f} / {statistics.median(xs):.2f} / {xs[-1]:.2f}"
for name, r in [("GET /health (baseline)", h), (f"GET /api/projects ({n} projects, authenticated)", p),
                ("GET /api/projects/{slug} (detail + counts, authenticated)", d), ("GET /auth/tokens (authenticated)", t)]:
    print(f"| {name} | {statistics.median(r):,.0f} | {spread([a / b for a, b in zip(r, h)])} |")
PY
