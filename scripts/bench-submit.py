#!/usr/bin/env python3
"""Where submit-to-start goes on one idle node on PostgreSQL.

Starts `atelier serve` on a fresh database (and a data directory on
/dev/shm), creates a project, then triggers one-scene runs one at a time
(the local provider, a 16x16 sample scene) and reads back each run's
timestamps: request sent (here) -> run row written (`runs.created_at`) ->
owner recorded (`run_owners.claimed_at`) -> run started (`runs.started_at`)
-> its first job leased (`run_jobs.started_at`) -> that job's worker
recording its provider call (`provider_calls.created_at`: the worker is
at work) -> the call's result recorded (`provider_calls.finished_at`; the
built-in provider answers at once), and the HTTP answer. The
first runs are left out (warm-up). Several binaries are measured in
alternating rounds, so their figures compare on the same machine state.

    scripts/bench-submit.py BIN [BIN ...] [--runs 60] [--rounds 3]
        [--admin-url postgres://postgres@127.0.0.1:5432/test]

Needs `psql` and a PostgreSQL whose admin URL may create databases.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
free_port = __import__("bench-footprint").free_port

STEPS = [
    ("sent -> run written", 0, 1),
    ("run written -> owner recorded", 1, 2),
    ("owner recorded -> run started", 2, 3),
    ("run started -> first job leased", 3, 4),
    ("first job leased -> its call recorded", 4, 5),
    ("its call recorded -> first call finished", 5, 6),
    ("sent -> first job leased", 0, 4),
    ("sent -> first call recorded", 0, 5),
    ("sent -> first call finished", 0, 6),
]


def psql(url, sql):
    out = subprocess.run(["psql", url, "-AtF,", "-c", sql], capture_output=True, text=True, check=True)
    return out.stdout


def measure(binary, admin_url, runs):
    """One round: a fresh node, `runs` triggers; per step, ms per run."""
    name = "atelier_submit_" + uuid.uuid4().hex[:12]
    psql(admin_url, f"CREATE DATABASE {name}")
    url = admin_url.rsplit("/", 1)[0] + "/" + name
    data = f"/dev/shm/{name}"
    os.makedirs(data)
    port = free_port()
    env = dict(os.environ, DATABASE_URL=url, ATELIER_AUTH__DEV_BYPASS="true", RUST_LOG="warn",
               ATELIER_ENGINE__MAX_RUNS_PER_PROJECT="1000", ATELIER_ENGINE__MAX_QUEUED_RUNS="10000")
    log = open(f"{data}.log", "w")
    server = subprocess.Popen([binary, "--data-dir", data, "serve", "--bind", f"127.0.0.1:{port}"],
                              env=env, stdout=subprocess.DEVNULL, stderr=log)
    base = f"http://127.0.0.1:{port}"

    def call(method, path, body=None):
        data_ = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(base + path, method=method, data=data_,
                                     headers={"content-type": "application/json"})
        with urllib.request.urlopen(req) as r:
            return json.loads(r.read())

    try:
        for _ in range(1200):
            try:
                call("GET", "/health")
                break
            except Exception:
                time.sleep(0.05)
        call("POST", "/api/projects", {"name": "Bench", "slug": "bench"})
        sent = []
        for i in range(runs):
            time.sleep(0.05)
            began = time.time()
            body = call("POST", "/api/projects/bench/runs/trigger",
                        {"mode": "run", "scene_refs": [f"sample:{1000 + i}@16x16"],
                         "stage": "style", "candidates": 1})
            sent.append((body["run_id"], began, time.time()))
        time.sleep(1.0)
        rows = psql(url, "SELECT r.id, extract(epoch from r.created_at), extract(epoch from o.claimed_at), "
                         "extract(epoch from r.started_at), "
                         "(SELECT extract(epoch from min(j.started_at)) FROM run_jobs j WHERE j.run_id = r.id), "
                         "(SELECT extract(epoch from min(c.created_at)) FROM provider_calls c WHERE c.run_id = r.id), "
                         "(SELECT extract(epoch from min(c.finished_at)) FROM provider_calls c WHERE c.run_id = r.id) "
                         "FROM runs r LEFT JOIN run_owners o ON o.run_id = r.id")
        at = {}
        for line in rows.strip().splitlines():
            cells = line.split(",")
            at[cells[0]] = [float(c) if c else None for c in cells[1:]]
        out = {label: [] for label, _, _ in STEPS}
        out["sent -> answered"] = []
        for run, began, answered in sent[5:]:
            points = [began] + at[run]
            for label, a, b in STEPS:
                if points[a] is not None and points[b] is not None:
                    out[label].append((points[b] - points[a]) * 1000)
            out["sent -> answered"].append((answered - began) * 1000)
        return out
    finally:
        server.terminate()
        server.wait()
        log.close()
        psql(admin_url, f"DROP DATABASE {name} WITH (FORCE)")
        shutil.rmtree(data, ignore_errors=True)
        os.remove(f"{data}.log")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("bins", nargs="+")
    parser.add_argument("--runs", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--admin-url", default="postgres://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    medians = {b: {} for b in args.bins}
    for r in range(args.rounds):
        for b in args.bins:
            for label, values in measure(b, args.admin_url, args.runs).items():
                if values:
                    medians[b].setdefault(label, []).append(statistics.median(values))
            print(f"round {r + 1}: {b} done", flush=True)
    print("p50 per round, ms: min / median / max over rounds")
    for b in args.bins:
        print(f"== {b}")
        for label, values in medians[b].items():
            v = sorted(values)
            print(f"  {label:34} {v[0]:7.2f} / {statistics.median(v):7.2f} / {v[-1]:7.2f}")


if __name__ == "__main__":
    main()
