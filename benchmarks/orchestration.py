"""charter's own overhead against a stand-in server: `charter label --orders first` (and
`charter revise`) as whole processes vs a bare aiohttp client, same server, same run.

    python benchmarks/orchestration.py [--n 16000] [--latency 0.05] [--concurrency 16 64 256]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    CHARTER,
    run_bare_client,
    run_charter_label,
    run_measured,
    stand_in_server,
    write_pairs,
    write_prompts,
)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=16000)
    p.add_argument("--revise-n", type=int, default=2000)
    p.add_argument("--latency", type=float, default=0.05)
    p.add_argument("--concurrency", type=int, nargs="+", default=[16, 64, 256])
    a = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="charter-bench-"))
    pairs = write_pairs(tmp / "pairs.jsonl", a.n)
    prompts = write_prompts(tmp / "prompts.jsonl", a.revise_n)
    rows = []
    with stand_in_server(a.latency) as url:
        for c in a.concurrency:
            ideal = c / a.latency
            bare = run_bare_client(url, a.n, c)
            bare_rate = a.n / bare.wall_s
            out = tmp / f"labels-{c}.jsonl"
            label = run_charter_label(pairs, out, url, c)
            label_rate = a.n / label.wall_s
            rev_out = tmp / f"revise-{c}.jsonl"
            revise = run_measured(
                [
                    *CHARTER,
                    "revise",
                    str(prompts),
                    "-o",
                    str(rev_out),
                    "-m",
                    "openai/bench",
                    "--base-url",
                    url,
                    "--constitution",
                    "harmless",
                    "--rounds",
                    "1",
                    "-c",
                    str(c),
                    "--no-cache",
                    "-q",
                    "--max-tokens",
                    "16",
                ]
            )
            assert revise.returncode == 0, revise.stderr
            revise_requests = a.revise_n * 3
            rows.append(
                {
                    "concurrency": c,
                    "latency_s": a.latency,
                    "ideal_rate": ideal,
                    "bare_rate": round(bare_rate, 1),
                    "bare_fraction_of_ideal": round(bare_rate / ideal, 3),
                    "label_pairs_per_s": round(label_rate, 1),
                    "label_fraction_of_ideal": round(label_rate / ideal, 3),
                    "label_vs_bare": round(label_rate / bare_rate, 3),
                    "label_cpu_ms_per_request": round(1000 * label.cpu_s / a.n, 3),
                    "label_peak_rss_mb": round(label.peak_rss_mb, 1),
                    "revise_requests_per_s": round(revise_requests / revise.wall_s, 1),
                    "revise_vs_bare": round(revise_requests / revise.wall_s / bare_rate, 3),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    print(json.dumps({"orchestration": rows}, indent=2))


if __name__ == "__main__":
    main()
