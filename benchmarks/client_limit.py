"""The default path at the client's limit: `charter label --orders first` as a whole process,
with the request cache on (the default) and off, side by side with a bare aiohttp client
against the same stand-in server in the same run.

    python benchmarks/client_limit.py [--n 16000] [--latency 0.05] [--concurrency 64 256]
                                      [--repeat 1]

Each charter run writes to a fresh folder, so the cache-on run starts from an empty cache and
every request goes to the server (and is written to the cache). With ``--repeat R`` each of
the three is run R times, interleaved, and the best rate of each is kept (for a shared
machine, where other work only ever slows a run down). CPU columns are the client process's
user + system seconds per pair (per request for the bare client): once a client is CPU-bound,
the ratio to the bare client is about the ratio of these.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Measured, run_bare_client, run_charter_label, stand_in_server, write_pairs


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=16000)
    p.add_argument("--latency", type=float, default=0.05)
    p.add_argument("--concurrency", type=int, nargs="+", default=[64, 256])
    p.add_argument("--repeat", type=int, default=1)
    a = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="charter-bench-"))
    pairs = write_pairs(tmp / "pairs.jsonl", a.n)
    rows = []
    with stand_in_server(a.latency) as url:
        for c in a.concurrency:
            runs: dict[str, list[Measured]] = {"bare": [], "on": [], "off": []}
            for r in range(max(1, a.repeat)):
                runs["bare"].append(run_bare_client(url, a.n, c))
                for mode in ("on", "off"):
                    out = tmp / f"{mode}-{c}-{r}" / "labels.jsonl"
                    runs[mode].append(run_charter_label(pairs, out, url, c, cache=mode == "on"))
            bare, on, off = (min(runs[k], key=lambda m: m.wall_s) for k in ("bare", "on", "off"))
            bare_rate = a.n / bare.wall_s
            rows.append(
                {
                    "concurrency": c,
                    "bare_pairs_per_s": round(bare_rate, 1),
                    "bare_cpu_ms_per_request": round(1000 * bare.cpu_s / a.n, 3),
                    "cache_on_pairs_per_s": round(a.n / on.wall_s, 1),
                    "cache_on_vs_bare": round(a.n / on.wall_s / bare_rate, 3),
                    "cache_on_cpu_ms_per_pair": round(1000 * on.cpu_s / a.n, 3),
                    "cache_off_pairs_per_s": round(a.n / off.wall_s, 1),
                    "cache_off_vs_bare": round(a.n / off.wall_s / bare_rate, 3),
                    "cache_off_cpu_ms_per_pair": round(1000 * off.cpu_s / a.n, 3),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    print(f"\nN = {a.n}, stand-in server latency {a.latency * 1000:g} ms, best of {a.repeat}")
    print(
        f"{'C':>5} {'bare/s':>8} {'cpu ms':>7} | {'on/s':>8} {'on/bare':>7} {'cpu ms':>7} |"
        f" {'off/s':>8} {'off/bare':>8} {'cpu ms':>7}"
    )
    for r in rows:
        cells = [
            f"{r['concurrency']:>5} {r['bare_pairs_per_s']:>8.1f}",
            f"{r['bare_cpu_ms_per_request']:>7.3f} | {r['cache_on_pairs_per_s']:>8.1f}",
            f"{r['cache_on_vs_bare']:>7.2f} {r['cache_on_cpu_ms_per_pair']:>7.3f} |",
            f"{r['cache_off_pairs_per_s']:>8.1f} {r['cache_off_vs_bare']:>8.2f}",
            f"{r['cache_off_cpu_ms_per_pair']:>7.3f}",
        ]
        print(" ".join(cells))
    print(json.dumps({"client_limit": rows}, indent=2))


if __name__ == "__main__":
    main()
