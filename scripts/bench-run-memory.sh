#!/usr/bin/env bash
# Peak memory of a run with heavy post-process passes: the release server in
# its own process, one run of 1024x1536 scenes (CANDIDATES per job) with
# background removal, 4x upscale and colour on (at most 16 per scene: more
# candidates spread over more scenes); reports the server's peak RSS
# (VmHWM) and the run's wall time, for each candidate count.
# Usage: scripts/bench-run-memory.sh [candidate counts, default "4 16 32"]
#        (ATELIER_BIN=path measures that binary; BENCH_ENV="K=V ..." sets server settings)
set -euo pipefail
cd "$(dirname "$0")/.."
COUNTS="${1:-4 16 32}"
if [ -n "${ATELIER_BIN:-}" ]; then
  BIN="$ATELIER_BIN"
else
  cargo build --release --quiet
  BIN="${CARGO_TARGET_DIR:-target}/release/atelier"
fi

echo "| candidates | peak RSS (MiB) | run wall time (s) | status |"
echo "|---:|---:|---:|---|"
for N in $COUNTS; do
  DATA=$(mktemp -d)
  PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')
  BASE="http://127.0.0.1:$PORT"
  RUST_LOG=warn env ${BENCH_ENV:-} "$BIN" --data-dir "$DATA" serve --bind "127.0.0.1:$PORT" >"$DATA/serve.log" 2>&1 &
  PID=$!
  for _ in $(seq 1 100); do curl -s -o /dev/null "$BASE/health" && break; sleep 0.1; done
  TOKEN=$(curl -sf -X POST "$BASE/auth/token" -H 'content-type: application/json' -d '{"label":"bench"}' \
    | python3 -c 'import sys,json; print(json.load(sys.stdin)["auth_token"]["token"])')
  AUTH=(-H "authorization: Bearer $TOKEN" -H 'content-type: application/json')
  curl -sf -o /dev/null -X POST "$BASE/api/projects" "${AUTH[@]}" -d '{"name":"Heavy","slug":"heavy"}'
  # At most 16 candidates per job: larger counts spread over more scenes.
  SCENES=$(( (N + 15) / 16 )); PER=$(( N / SCENES ))
  REFS=$(python3 -c "import json; print(json.dumps([f'sample:{i}@1024x1536' for i in range(1, $SCENES + 1)]))")
  START=$(date +%s.%N)
  RUN=$(curl -sf -X POST "$BASE/api/projects/heavy/runs/trigger" "${AUTH[@]}" -d "{
      \"mode\": \"run\", \"scene_refs\": $REFS, \"stage\": \"style\", \"candidates\": $PER,
      \"manifest\": {\"generation\": {\"max_candidates\": 16}, \"postprocess\": {\"bg_remove\": true, \"upscale\": true, \"upscale_factor\": 4, \"color\": true}}}" \
    | python3 -c 'import sys,json; print(json.load(sys.stdin)["run_id"])')
  STATUS=queued
  while :; do
    STATUS=$(curl -sf "$BASE/api/projects/heavy/runs/$RUN" "${AUTH[@]}" \
      | python3 -c 'import sys,json; print(json.load(sys.stdin)["run"]["status"])')
    case "$STATUS" in done|failed|partial|canceled) break ;; esac
    sleep 0.5
  done
  END=$(date +%s.%N)
  PEAK=$(awk '/VmHWM/ {printf "%.0f", $2/1024}' /proc/$PID/status)
  kill $PID; wait $PID 2>/dev/null || true
  rm -rf "$DATA"
  echo "| $N | $PEAK | $(python3 -c "print(f'{$END-$START:.1f}')") | $STATUS |"
done
