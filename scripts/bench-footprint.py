#!/usr/bin/env python3
"""Idle footprint and start-up of `atelier serve` (and of the desktop shell).

Each round starts the binary on a fresh data directory, measures the time
from spawn to the first `200` from `/health` (polled from this process, not
the measured one), then reads the process's memory from /proc after it has
idled: right after start, and again after a small workload (a project, a
staged run, reads) has come and gone. Variants run interleaved in the same
rounds, so their figures compare on the same machine state.

    scripts/bench-footprint.py [--bin target/release/atelier] [--rounds 3]
        [--idle 5] [--variant NAME:BIN=other/atelier,ATELIER_HTTP__WORKERS=1]
        [--shell target/release/atelier-desktop]

`--shell` adds the desktop shell (needs a display: run under
`xvfb-run -a`); its row sums the whole process tree (WebKit runs its own
processes), with the service's share on a line of its own.
"""

import argparse
import http.client
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import tempfile
import time

KB = 1024


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def request(port, method, path, token=None, body=None, timeout=30):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    headers = {"content-type": "application/json"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
    res = conn.getresponse()
    data = res.read()
    conn.close()
    return res.status, json.loads(data) if data else None


def wait_health(port, started, limit=30.0):
    while time.monotonic() - started < limit:
        try:
            status, _ = request(port, "GET", "/health", timeout=1)
            if status == 200:
                return time.monotonic() - started
        except OSError:
            pass
        time.sleep(0.001)
    raise RuntimeError("the service did not answer /health")


def status_of(pid):
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    kb = lambda k: int(fields.get(k, "0 kB").split()[0])
    return {
        "rss": kb("VmRSS") * KB,
        "anon": kb("RssAnon") * KB,
        "file": kb("RssFile") * KB,
        "threads": int(fields.get("Threads", "0")),
    }


def tree(pid):
    """pid and all its descendants."""
    out = [pid]
    try:
        children = open(f"/proc/{pid}/task/{pid}/children").read().split()
    except OSError:
        children = []
    for c in children:
        out.extend(tree(int(c)))
    return out


def workload(port, token):
    request(port, "POST", "/api/projects", token, {"name": "Footprint"})
    request(port, "POST", "/api/projects/footprint/runs/trigger", token,
            {"mode": "run", "scene_refs": ["sample:1", "sample:2"], "stage": "weather",
             "candidates": 3, "wait": True}, timeout=120)
    for path in ["/api/projects", "/api/projects/footprint", "/api/projects/footprint/runs",
                 "/api/projects/footprint/assets"]:
        for _ in range(20):
            request(port, "GET", path, token)


def serve_round(binary, idle, env_extra):
    data = tempfile.mkdtemp(prefix="atelier-footprint-")
    port = free_port()
    # The service's default log level (info), as users run it.
    env = dict(os.environ, **env_extra)
    env.pop("DATABASE_URL", None)
    if "RUST_LOG" not in env_extra:
        env.pop("RUST_LOG", None)
    started = time.monotonic()
    proc = subprocess.Popen([binary, "--data-dir", data, "serve", "--bind", f"127.0.0.1:{port}"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        first = wait_health(port, started)
        time.sleep(idle)
        at_start = status_of(proc.pid)
        _, minted = request(port, "POST", "/auth/token", body={"label": "bench"})
        workload(port, minted["auth_token"]["token"])
        time.sleep(idle)
        after_work = status_of(proc.pid)
        return {"first_health_ms": first * 1000, "idle": at_start, "after_work": after_work}
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        shutil.rmtree(data, ignore_errors=True)


def shell_round(binary, idle):
    home = tempfile.mkdtemp(prefix="atelier-shell-")
    env = dict(os.environ, RUST_LOG="info", XDG_DATA_HOME=home)
    env.pop("DATABASE_URL", None)
    log_path = os.path.join(home, "shell.log")
    started = time.monotonic()
    with open(log_path, "w") as log:
        proc = subprocess.Popen([binary], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        port = None
        while port is None and time.monotonic() - started < 60:
            m = re.search(r"embedded service ready.*?addr=127\.0\.0\.1:(\d+)",
                          open(log_path).read())
            if m:
                port = int(m.group(1))
            else:
                time.sleep(0.005)
        if port is None:
            raise RuntimeError("the shell did not start:\n" + open(log_path).read()[-2000:])
        first = wait_health(port, started)
        time.sleep(idle)
        pids = tree(proc.pid)
        own = status_of(proc.pid)
        total = {"rss": 0, "anon": 0, "file": 0, "threads": 0}
        for pid in pids:
            try:
                st = status_of(pid)
            except OSError:
                continue
            for k in total:
                total[k] += st[k]
        return {"first_health_ms": first * 1000, "idle": total, "own": own,
                "processes": len(pids)}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(home, ignore_errors=True)


def mb(n):
    return n / (1024 * 1024)


def spread(values, fmt):
    values = sorted(values)
    return " / ".join(fmt(v) for v in (values[0], statistics.median(values), values[-1]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", "target"),
                                                  "release", "atelier"))
    ap.add_argument("--shell")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--idle", type=float, default=5.0)
    ap.add_argument("--variant", action="append", default=[],
                    help="NAME:KEY=VALUE,KEY=VALUE — `serve` again with these environment "
                         "variables (e.g. settings), in the same rounds; BIN=path runs "
                         "another binary")
    args = ap.parse_args()
    variants = {"serve": {}}
    for spec in args.variant:
        name, _, pairs = spec.partition(":")
        variants[name] = dict(p.split("=", 1) for p in pairs.split(",") if p)
    results = {name: [] for name in variants}
    shell = []
    for _ in range(args.rounds):
        for name, env in variants.items():
            env = dict(env)
            binary = env.pop("BIN", args.bin)
            results[name].append(serve_round(binary, args.idle, env))
        if args.shell:
            shell.append(shell_round(args.shell, args.idle))
    print("min / median / max of", args.rounds, "rounds\n")
    print("| | first /health (ms) | idle RSS (MiB) | anon / file (MiB, medians) | threads | RSS after a run (MiB) |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, rounds in results.items():
        print(f"| {name} | {spread([r['first_health_ms'] for r in rounds], lambda v: f'{v:.0f}')} "
              f"| {spread([mb(r['idle']['rss']) for r in rounds], lambda v: f'{v:.1f}')} "
              f"| {statistics.median(mb(r['idle']['anon']) for r in rounds):.1f} / "
              f"{statistics.median(mb(r['idle']['file']) for r in rounds):.1f} "
              f"| {statistics.median(r['idle']['threads'] for r in rounds):.0f} "
              f"| {spread([mb(r['after_work']['rss']) for r in rounds], lambda v: f'{v:.1f}')} |")
    if shell:
        print(f"| desktop shell, all {shell[0]['processes']} processes "
              f"| {spread([r['first_health_ms'] for r in shell], lambda v: f'{v:.0f}')} "
              f"| {spread([mb(r['idle']['rss']) for r in shell], lambda v: f'{v:.1f}')} "
              f"| {statistics.median(mb(r['idle']['anon']) for r in shell):.1f} / "
              f"{statistics.median(mb(r['idle']['file']) for r in shell):.1f} "
              f"| {statistics.median(r['idle']['threads'] for r in shell):.0f} | – |")
        print(f"| desktop shell, its own process | – "
              f"| {spread([mb(r['own']['rss']) for r in shell], lambda v: f'{v:.1f}')} "
              f"| {statistics.median(mb(r['own']['anon']) for r in shell):.1f} / "
              f"{statistics.median(mb(r['own']['file']) for r in shell):.1f} "
              f"| {statistics.median(r['own']['threads'] for r in shell):.0f} | – |")


if __name__ == "__main__":
    main()
