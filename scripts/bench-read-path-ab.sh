#!/usr/bin/env bash
# Two builds' hot reads side by side: both servers up at once with the same
# data (50 projects, 20 finished runs), and for each route wrk runs against
# one then the other (the order alternating by round), so the machine's drift
# hits both alike. Prints "route A|B requests/s" lines, then per-route medians
# and the after/before ratio of each round.
# Usage: scripts/bench-read-path-ab.sh BEFORE_BIN AFTER_BIN [seconds=3] [rounds=3]
set -euo pipefail
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
A=$1; B=$2; DUR=${3:-3}; ROUNDS=${4:-3}
declare -A PORT DATA PIDS TOKEN RUNP
for x in A B; do
  DATA[$x]=$(mktemp -d); PORT[$x]=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  bin=${!x}
  RUST_LOG=warn $bin --data-dir ${DATA[$x]} serve --bind 127.0.0.1:${PORT[$x]} > ${DATA[$x]}/log 2>&1 &
  PIDS[$x]=$!
done
trap 'kill ${PIDS[A]} ${PIDS[B]} 2>/dev/null; rm -rf ${DATA[A]} ${DATA[B]}' EXIT
for x in A B; do
  BASE=http://127.0.0.1:${PORT[$x]}
  for _ in $(seq 1 100); do curl -s -o /dev/null $BASE/health && break; sleep 0.1; done
  TOKEN[$x]=$(curl -s -X POST $BASE/auth/token -H 'content-type: application/json' -d '{"label":"b"}' | python3 -c 'import sys,json; print(json.load(sys.stdin)["auth_token"]["token"])')
  for i in $(seq 1 50); do curl -s -o /dev/null -X POST $BASE/api/projects -H "authorization: Bearer ${TOKEN[$x]}" -H 'content-type: application/json' -d "{\"name\":\"Book $i\",\"description\":\"Volume $i\"}"; done
  for _ in $(seq 1 20); do curl -sf -o /dev/null -X POST $BASE/api/projects/book_1/runs/trigger -H "authorization: Bearer ${TOKEN[$x]}" -H 'content-type: application/json' -d '{"mode":"run","scene_refs":["sample:1@64x48","sample:2@64x48"],"stage":"time","candidates":2,"wait":true}'; done
  RUN=$(curl -sf "$BASE/api/projects/book_1/runs?limit=1" -H "authorization: Bearer ${TOKEN[$x]}" | python3 -c 'import sys,json; print(json.load(sys.stdin)["runs"][0]["id"])')
  JOB=$(curl -sf "$BASE/api/projects/book_1/runs/$RUN/jobs" -H "authorization: Bearer ${TOKEN[$x]}" | python3 -c 'import sys,json; print(json.load(sys.stdin)["jobs"][0]["id"])')
  RUNP[$x]="/api/projects/book_1/runs/$RUN|$JOB"
done
rate() { # url token; fails on any non-2xx answer or socket error
  local out
  out=$(wrk -t2 -c32 -d${DUR}s -H "Authorization: Bearer $2" "$1")
  if grep -qE 'Non-2xx or 3xx responses|Socket errors' <<<"$out"; then
    echo "bench-read-path-ab: $1 had failed requests; the measurement is void" >&2
    exit 1
  fi
  awk '/Requests\/sec/ {print $2}' <<<"$out"
}
for x in A B; do wrk -t2 -c32 -d2s http://127.0.0.1:${PORT[$x]}/health > /dev/null; done
ROUTES=(/health /api/projects /api/projects/book_1 /api/projects/book_1/runs /api/projects/book_1/assets RUN RUN/jobs RUN/jobs/JOB/candidates RUN/events)
for round in $(seq 1 $ROUNDS); do
  order="A B"; [ $((round % 2)) = 0 ] && order="B A"
  for route in "${ROUTES[@]}"; do
    for x in $order; do
      r=${RUNP[$x]%|*}; j=${RUNP[$x]#*|}
      p=${route//RUN/$r}; p=${p//JOB/$j}
      echo "$route $x $(rate http://127.0.0.1:${PORT[$x]}$p ${TOKEN[$x]})"
    done
  done
done | tee "${DATA[A]}/rates"
python3 - "${DATA[A]}/rates" <<'PY'
import collections, statistics, sys
d = collections.defaultdict(lambda: collections.defaultdict(list))
for line in open(sys.argv[1]):
    p = line.split()
    if len(p) == 3:
        d[p[0]][p[1]].append(float(p[2]))
print("| route | before (median req/s) | after | after / before, each round |")
print("|---|---:|---:|---:|")
for route, v in d.items():
    a, b = v["A"], v["B"]
    ratios = " / ".join(f"{y / x:.2f}" for x, y in zip(a, b))
    print(f"| `{route}` | {statistics.median(a):,.0f} | {statistics.median(b):,.0f} | {ratios} |")
PY
