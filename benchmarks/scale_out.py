"""Scaling out: `charter label --orders first` against stand-in servers that each process at
most a fixed number of requests at once (as vLLM's --max-num-seqs), all with default settings
(request cache on; every run in its own folder, so none is served from another's cache), in
one run:

- several endpoints: the local engine at -c 64 against one endpoint and against two
  (`--base-url A,B`; -c is per endpoint), each capped at --endpoint-cap (16) requests at once,
  so the endpoints are the limit;
- `--engine ray` with 1, 2 and 4 workers over two endpoints capped at --cap (64), each worker
  keeping -c (8) per endpoint in flight, on a local Ray cluster started once (`ray start
  --head`), as a user scales out.

    python benchmarks/scale_out.py [--n 16000] [--latency 0.05] [--cap 64] [--endpoint-cap 16]
                                   [--concurrency 8] [--workers 1 2 4]

Whole processes, wall time from start to exit (Ray's connect and worker start count).
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
    p.add_argument("--cap", type=int, default=64, help="requests each server runs at once (Ray)")
    p.add_argument("--endpoint-cap", type=int, default=16, help="the same, endpoints part")
    p.add_argument("--concurrency", type=int, default=8, help="Ray: -c per endpoint, per worker")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    a = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="charter-scale-"))
    pairs = write_pairs(tmp / "pairs.jsonl", a.n)
    rows: list[dict[str, object]] = []

    def add(name: str, urls: str, wall: float, in_flight: int, cap: int) -> None:
        endpoints = len(urls.split(","))
        rows.append({
            "run": name, "endpoints": endpoints, "server_cap": cap, "in_flight": in_flight,
            "pairs_per_s": round(a.n / wall, 1),
            "ceiling": round(min(in_flight, cap * endpoints) / a.latency),
            "wall_s": round(wall, 2),
        })  # fmt: skip

    with ExitStack() as stack:
        one, two = (
            stack.enter_context(stand_in_server(a.latency, max_concurrency=a.endpoint_cap))
            for _ in range(2)
        )
        for urls in (one, f"{one},{two}"):
            n = len(urls.split(","))
            wall = label(pairs, tmp / f"local-{n}" / "labels.jsonl", urls, 64)
            add("local, -c 64", urls, wall, 64 * n, a.endpoint_cap)
    ray_bin = str(Path(sys.executable).with_name("ray"))
    started = subprocess.run(
        [ray_bin, "start", "--head", "--include-dashboard", "false", "--disable-usage-stats"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert started.returncode == 0, started.stderr[-2000:]
    try:
        with ExitStack() as stack:
            one, two = (
                stack.enter_context(stand_in_server(a.latency, max_concurrency=a.cap))
                for _ in range(2)
            )
            both, c = f"{one},{two}", a.concurrency
            for w in a.workers:
                out = tmp / f"ray-{w}" / "labels.jsonl"
                wall = label(pairs, out, both, c, "--engine", "ray", "--workers", str(w))
                add(f"ray, {w} worker{'s' * (w > 1)}, -c {c}", both, wall, 2 * c * w, a.cap)
    finally:
        subprocess.run([ray_bin, "stop", "--force"], capture_output=True)
    print(json.dumps(rows, indent=1))
    local = [float(str(r["pairs_per_s"])) for r in rows if str(r["run"]).startswith("local")]
    ray = [float(str(r["pairs_per_s"])) for r in rows if str(r["run"]).startswith("ray")]
    print(f"local engine, two endpoints / one: {local[1] / local[0]:.2f}")
    print(f"ray, {a.workers[-1]} workers / {a.workers[0]}: {ray[-1] / ray[0]:.2f}")
    version = " ".join(sys.version.split())
    print(f"cpus: {os.cpu_count()}; Python {version}")


if __name__ == "__main__":
    main()
