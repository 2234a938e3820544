"""Seconds from `vk8s testbed up --detach` to a ready testbed (binaries already built), per run.

    .venv/bin/python bench/testbed_startup.py [--runs 3] [--nodes 4]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--nodes", type=int, default=4)
    args = parser.parse_args()
    vk8s = [str(Path(sys.executable).with_name("vk8s")), "testbed"]
    # Builds on first use, so the runs below measure a warm start only.
    build = Path(__file__).resolve().parents[1] / "deploy" / "testbed" / "build.sh"
    subprocess.run(["bash", str(build)], check=True, stdout=subprocess.DEVNULL)
    seconds = []
    with tempfile.TemporaryDirectory(prefix="vk8s-bench-") as scratch:
        state = Path(scratch) / "testbed"
        for run in range(1, args.runs + 1):
            started = time.perf_counter()
            up = [*vk8s, "up", "--detach", f"--nodes={args.nodes}", f"--state-dir={state}"]
            subprocess.run(up, check=True, capture_output=True)
            seconds.append(time.perf_counter() - started)
            subprocess.run([*vk8s, "down", f"--state-dir={state}"], check=True, capture_output=True)
            print(f"run {run}: ready in {seconds[-1]:.2f} s", flush=True)
    print(f"warm start, {args.nodes} nodes: median {statistics.median(seconds):.2f} s, max {max(seconds):.2f} s")


if __name__ == "__main__":
    main()
