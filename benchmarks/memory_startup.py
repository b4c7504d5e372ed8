"""Flat memory and fast start-up.

- `charter label` with the mock judge streamed over 10k and 100k pairs: peak RSS of each.
- `charter --help` and a 1-pair mock `charter label`: wall time, and whether torch was imported.

    python benchmarks/memory_startup.py [--small 10000] [--large 100000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import CHARTER, run_measured, write_pairs


def label_rss(n: int, tmp: Path) -> dict[str, float]:
    pairs = write_pairs(tmp / f"pairs-{n}.jsonl", n)
    m = run_measured(
        [
            *CHARTER,
            "label",
            str(pairs),
            "-o",
            str(tmp / f"labels-{n}.jsonl"),
            "-j",
            "mock/bench",
            "--constitution",
            "harmless",
            "--orders",
            "first",
            "-c",
            "64",
            "--no-cache",
            "-q",
        ]
    )
    assert m.returncode == 0, m.stderr
    return {
        "pairs": n,
        "peak_rss_mb": round(m.peak_rss_mb, 1),
        "seconds": round(m.wall_s, 1),
        "pairs_per_s": round(n / m.wall_s, 1),
    }


def wall(cmd: list[str], repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(cmd, capture_output=True, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--small", type=int, default=10_000)
    p.add_argument("--large", type=int, default=100_000)
    a = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="charter-mem-"))
    small, large = label_rss(a.small, tmp), label_rss(a.large, tmp)
    one = write_pairs(tmp / "one.jsonl", 1)
    torch_check = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from charter.cli import app; print('torch' in sys.modules)",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    result = {
        "memory": {
            "small": small,
            "large": large,
            "large_over_small_rss": round(large["peak_rss_mb"] / small["peak_rss_mb"], 3),
        },
        "startup": {
            "help_s": round(wall([*CHARTER, "--help"]), 3),
            "one_pair_mock_label_s": round(
                wall(
                    [
                        *CHARTER,
                        "label",
                        str(one),
                        "-o",
                        str(tmp / "one-out.jsonl"),
                        "-j",
                        "mock/x",
                        "--constitution",
                        "harmless",
                        "--no-cache",
                        "-q",
                    ]
                ),
                3,
            ),
            "torch_imported_by_cli": torch_check == "True",
        },
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
