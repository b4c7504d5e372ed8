"""Peer benchmark, side by side in one run: the same N 1-token A/B judgements at the same
concurrency through charter, a bare aiohttp client and distilabel 1.5.3, against the same
stand-in server. distilabel is installed in its own throwaway venv (not a charter dependency).

    python benchmarks/peer_distilabel.py [--n 16000] [--concurrency 64] [--latency 0.05]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    ROOT,
    run_bare_client,
    run_charter_label,
    run_measured,
    stand_in_server,
    write_pairs,
)

VENV = Path(tempfile.gettempdir()) / "charter-bench-distilabel-venv"


def distilabel_python() -> Path:
    python = VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        # Its OpenAI extra, with the SDK major version it was released against.
        subprocess.run(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "-q",
                "distilabel[openai]==1.5.3",
                "openai>=1.50,<2",
                "requests",
            ],
            check=True,
        )
    return python


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=16000)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--latency", type=float, default=0.05)
    a = p.parse_args()
    python = distilabel_python()
    tmp = Path(tempfile.mkdtemp(prefix="charter-peer-"))
    pairs = write_pairs(tmp / "pairs.jsonl", a.n)
    with stand_in_server(a.latency) as url:
        bare = run_bare_client(url, a.n, a.concurrency)
        charter = run_charter_label(pairs, tmp / "labels.jsonl", url, a.concurrency)
        peer = run_measured(
            [
                str(python),
                str(ROOT / "benchmarks/_distilabel_job.py"),
                url,
                str(a.n),
                str(a.concurrency),
            ],
            cwd=tmp,
        )
        assert peer.returncode == 0, peer.stderr[-2000:]
    rates = {
        "bare_aiohttp": a.n / bare.wall_s,
        "charter": a.n / charter.wall_s,
        "distilabel_1.5.3": a.n / peer.wall_s,
    }
    result = {
        "n": a.n,
        "concurrency": a.concurrency,
        "latency_s": a.latency,
        "ideal_rate": a.concurrency / a.latency,
        "rates_per_s_whole_process": {k: round(v, 1) for k, v in rates.items()},
        "charter_vs_distilabel": round(rates["charter"] / rates["distilabel_1.5.3"], 2),
        "charter_vs_bare": round(rates["charter"] / rates["bare_aiohttp"], 3),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
