#!/usr/bin/env python3
"""Write link/code-order.txt: the functions an `atelier serve` runs, for the
linker to place together (see build.rs and docs/performance.md, "Idle
footprint and start-up").

The kernel maps a program's code in 64 KiB windows around each page it
touches, so code run at start-up, scattered over the binary, keeps most of
it resident. Listed in this order, the linker places it side by side.

    scripts/code-order.py [--bin target/release/atelier] [--out link/code-order.txt]

Runs the release binary under valgrind's callgrind (apt install valgrind):
start-up to the first `200` from /health, then a few seconds idle (first
tier), then a small workload — a token, a project, a staged run, the hot
reads — and a graceful stop (second tier). Each tier is sorted by name, so
the file changes only where the code did. Names are the mangled symbols of
this toolchain and Cargo.lock: after an upgrade of either, run it again (a
name the binary no longer has is skipped by the linker; nothing breaks).
"""

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
footprint = __import__("bench-footprint")


def executed(dump):
    """Function names in one callgrind dump (names are given once, then
    referred to by number)."""
    names = set()
    with open(dump, errors="replace") as f:
        for line in f:
            m = re.match(r"^c?fn=\(\d+\) (.+)$", line.rstrip("\n"))
            if m:
                names.add(m.group(1))
    return names


def text_symbols(binary):
    out = subprocess.run(["nm", "--defined-only", binary], capture_output=True, text=True,
                         check=True).stdout
    return {p[2]: None for p in (l.split() for l in out.splitlines())
            if len(p) == 3 and p[1] in "tTwW"}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", "target"),
                                                  "release", "atelier"))
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "link",
                                                  "code-order.txt"))
    ap.add_argument("--idle", type=float, default=5.0)
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="atelier-code-order-")
    dump = os.path.join(work, "callgrind.out")
    port = footprint.free_port()
    # The default log level, as a user runs it: its formatting code is hot.
    env = dict(os.environ)
    for key in ("DATABASE_URL", "RUST_LOG"):
        env.pop(key, None)
    proc = subprocess.Popen(
        ["valgrind", "--tool=callgrind", "--demangle=no", "--dump-instr=no",
         f"--callgrind-out-file={dump}", args.bin, "--data-dir", os.path.join(work, "data"),
         "serve", "--bind", f"127.0.0.1:{port}"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        footprint.wait_health(port, time.monotonic(), limit=300)
        time.sleep(args.idle)
        # First tier: what start-up and idling ran.
        subprocess.run(["callgrind_control", "--dump=startup", str(proc.pid)], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _, minted = footprint.request(port, "POST", "/auth/token", body={"label": "order"},
                                      timeout=120)
        token = minted["auth_token"]["token"]
        footprint.request(port, "POST", "/api/projects", token, {"name": "Order"}, timeout=120)
        _, run = footprint.request(port, "POST", "/api/projects/order/runs/trigger", token,
                                   {"mode": "run", "scene_refs": ["sample:1"],
                                    "stage": "weather", "candidates": 2, "wait": True},
                                   timeout=600)
        r = f"/api/projects/order/runs/{run['run_id']}"
        _, jobs = footprint.request(port, "GET", f"{r}/jobs", token, timeout=120)
        # Every read scripts/bench-read-path.sh measures, so that the code of
        # each hot read is in the list (placed near what it calls).
        for path in ["/api/projects", "/api/projects/order", "/auth/tokens",
                     "/api/projects/order/runs", "/api/projects/order/assets",
                     "/api/projects/order/assets?kind=generated&limit=50", r, f"{r}/jobs",
                     f"{r}/jobs/{jobs['jobs'][0]['id']}/candidates", f"{r}/events"]:
            for _ in range(3):
                footprint.request(port, "GET", path, token, timeout=120)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=300)

    dumps = sorted(os.path.join(work, f) for f in os.listdir(work) if f.startswith("callgrind.out"))
    first = [d for d in dumps if d.endswith(".1")]
    if not first:
        sys.exit(f"no start-up dump among {dumps} (kept in {work})")
    symbols = text_symbols(args.bin)
    startup = executed(first[0]) & symbols.keys()
    later = set()
    for d in dumps:
        if d not in first:
            later |= executed(d)
    shutil.rmtree(work, ignore_errors=True)
    later = (later & symbols.keys()) - startup
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        for name in sorted(startup) + sorted(later):
            f.write(name + "\n")
    print(f"{len(startup)} functions run by start-up and idling, {len(later)} more by the "
          f"workload, of {len(symbols)} in {args.bin}; written to {args.out}")


if __name__ == "__main__":
    main()
