#!/usr/bin/env python3
"""Which statements a trigger costs, and when each runs, on one idle node.

Starts `atelier serve BIN` on a fresh PostgreSQL database with
`log_statement = 'all'`, triggers one-scene runs one at a time (as
`bench-submit.py` does, spaced so that each run's statements form a burst
of their own), then reads the server's log: for each burst, every
statement's offset (ms) from the burst's first, up to the first call
record (`INSERT INTO "provider_calls"`). Prints each statement's median offset
over the bursts that ran it, with its first words.

    scripts/bench-submit-timeline.py BIN [--runs 25]
        [--admin-url postgres://postgres@127.0.0.1:5432/test]
        [--log /var/log/postgresql/postgresql-15-main.log]

The log's line prefix must start with `%m [%p]` (Debian's default); its
timestamps have millisecond resolution.
"""

import argparse
import collections
import datetime
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
footprint = __import__("bench-footprint")

LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) \S+ \[\d+\] \S+@(\S+) LOG:  (?:statement|execute [^:]*): (.*)$")


def psql(url, sql):
    subprocess.run(["psql", url, "-Atq", "-c", sql], capture_output=True, text=True, check=True)


def words(sql):
    sql = re.sub(r"\s+", " ", sql).strip()
    return sql[:70]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("bin")
    parser.add_argument("--runs", type=int, default=25)
    parser.add_argument("--admin-url", default="postgres://postgres@127.0.0.1:5432/test")
    parser.add_argument("--log", default="/var/log/postgresql/postgresql-15-main.log")
    args = parser.parse_args()
    name = "atelier_timeline_" + uuid.uuid4().hex[:12]
    psql(args.admin_url, f"CREATE DATABASE {name}")
    url = args.admin_url.rsplit("/", 1)[0] + "/" + name
    data = f"/dev/shm/{name}"
    os.makedirs(data)
    port = footprint.free_port()
    env = dict(os.environ, DATABASE_URL=url, ATELIER_AUTH__DEV_BYPASS="true", RUST_LOG="warn",
               ATELIER_ENGINE__MAX_RUNS_PER_PROJECT="1000", ATELIER_ENGINE__MAX_QUEUED_RUNS="10000")

    def start():
        node = subprocess.Popen([args.bin, "--data-dir", data, "serve", "--bind", f"127.0.0.1:{port}"],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        footprint.wait_health(port, time.monotonic())
        return node

    def trigger(n):
        footprint.request(port, "POST", "/api/projects/bench/runs/trigger",
                          body={"mode": "run", "scene_refs": [f"sample:{n}@16x16"], "stage": "style",
                                "candidates": 1})

    server = start()
    try:
        footprint.request(port, "POST", "/api/projects", body={"name": "Bench", "slug": "bench"})
        for i in range(5):
            trigger(900 + i)
        time.sleep(0.5)
        psql(args.admin_url, f"ALTER DATABASE {name} SET log_statement = 'all'")
        # New sessions log; the pool's open ones do not: start the node again.
        server.terminate()
        server.wait()
        server = start()
        time.sleep(0.5)
        offset = os.path.getsize(args.log)
        for i in range(args.runs):
            time.sleep(0.12)
            trigger(1000 + i)
        time.sleep(0.5)
    finally:
        server.terminate()
        server.wait()
        psql(args.admin_url, f"DROP DATABASE {name} WITH (FORCE)")
        shutil.rmtree(data, ignore_errors=True)

    statements = []
    with open(args.log, errors="replace") as f:
        f.seek(offset)
        for line in f:
            m = LINE.match(line)
            if m and m.group(2) == name:
                at = datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S.%f").timestamp() * 1000
                statements.append((at, words(m.group(3))))
    bursts, current = [], []
    for at, sql in statements:
        if current and at - current[-1][0] > 40:
            bursts.append(current)
            current = []
        current.append((at, sql))
    if current:
        bursts.append(current)
    runs = []
    for b in bursts:
        upto = next((i for i, (_, sql) in enumerate(b) if sql.startswith('INSERT INTO "provider_calls"')), None)
        if upto is not None and any(sql.startswith('INSERT INTO "runs"') for _, sql in b):
            runs.append([(at - b[0][0], sql) for at, sql in b[: upto + 1]])
    if not runs:
        print("no trigger bursts found in the log")
        return
    # A statement (and its n-th repeat) at its median offset over the runs
    # that ran it; those in fewer than half of the runs are left out.
    offsets = collections.defaultdict(list)
    for r in runs:
        seen = collections.Counter()
        for at, sql in r:
            seen[sql] += 1
            offsets[(sql, seen[sql])].append(at)
    rows = sorted((statistics.median(v), len(v), sql) for (sql, _), v in offsets.items()
                  if len(v) * 2 >= len(runs))
    print(f"{len(runs)} triggers, up to the first call record")
    print(f"{'median ms':>9} {'runs':>4}  statement")
    for at, n, sql in rows:
        print(f"{at:9.1f} {n:4}  {sql}")

if __name__ == "__main__":
    main()
