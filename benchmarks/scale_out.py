"""Scaling out: `charter label --orders first` against stand-in servers that each process at
most --cap requests at once (as vLLM's --max-num-seqs), all with default settings (request
cache on), in one run:

- the local engine with one endpoint and with two (`--base-url A,B`; -c is per endpoint);
- `--engine ray` with 1, 2 and 4 workers over the two endpoints, on a local Ray cluster
  started once (`ray start --head`), as a user scales out.

    python benchmarks/scale_out.py [--n 16000] [--latency 0.05] [--cap 64] [--concurrency 16]

Whole processes, wall time from start to exit (so Ray's connect and worker start count).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import CHARTER, run_measured, stand_in_server, write_pairs


def label(pairs: Path, out: Path, urls: str, c: int, *extra: str) -> float:
    m = run_measured(
        [
            *CHARTER, "label", str(pairs), "-o", str(out), "-j", "openai/bench",
            "--base-url", urls, "--constitution", "harmless", "--orders", "first",
            "-c", str(c), "-q", *extra,
        ],
        env={"RAY_ADDRESS": "auto"},
    )  # fmt: skip
    assert m.returncode == 0, m.stderr[-2000:]
    return m.wall_s


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=16000)
    p.add_argument("--latency", type=float, default=0.05)
    p.add_argument("--cap", type=int, default=64, help="requests each server runs at once")
    p.add_argument("--concurrency", type=int, default=16, help="-c (per endpoint, per worker)")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    a = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="charter-scale-"))
    pairs = write_pairs(tmp / "pairs.jsonl", a.n)
    ray_bin = str(Path(sys.executable).with_name("ray"))
    started = subprocess.run(
        [ray_bin, "start", "--head", "--include-dashboard", "false", "--disable-usage-stats"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert started.returncode == 0, started.stderr[-2000:]
    rows = []
    try:
        with ExitStack() as stack:
            one, two = (
                stack.enter_context(stand_in_server(a.latency, max_concurrency=a.cap))
                for _ in range(2)
            )
            both = f"{one},{two}"
            c = a.concurrency

            def add(name: str, urls: str, wall: float, in_flight: int) -> None:
                ceiling = min(in_flight, a.cap * len(urls.split(","))) / a.latency
                rows.append({
                    "run": name, "endpoints": len(urls.split(",")), "in_flight": in_flight,
                    "pairs_per_s": round(a.n / wall, 1), "ceiling": round(ceiling),
                    "wall_s": round(wall, 2),
                })  # fmt: skip

            add("local", one, label(pairs, tmp / "l1.jsonl", one, 4 * c), 4 * c)
            add("local", both, label(pairs, tmp / "l2.jsonl", both, 4 * c), 8 * c)
            for w in a.workers:
                out = tmp / f"ray-{w}.jsonl"
                wall = label(pairs, out, both, c, "--engine", "ray", "--workers", str(w))
                add(f"ray, {w} worker{'s' * (w > 1)}", both, wall, 2 * c * w)
    finally:
        subprocess.run([ray_bin, "stop", "--force"], capture_output=True)
    print(json.dumps(rows, indent=1))
    by = {r["run"]: r["pairs_per_s"] for r in rows if r["run"].startswith("ray")}
    first, last = f"ray, {a.workers[0]} worker", f"ray, {a.workers[-1]} workers"
    if first in by and last in by:
        print(f"ratio {a.workers[-1]}-worker / {a.workers[0]}-worker: {by[last] / by[first]:.2f}")
    local = [r["pairs_per_s"] for r in rows if r["run"] == "local"]
    print(f"local engine, two endpoints / one: {local[1] / local[0]:.2f}")
    version = " ".join(sys.version.split())
    print(f"cpus: {os.cpu_count()}; Python {version}")


if __name__ == "__main__":
    main()
