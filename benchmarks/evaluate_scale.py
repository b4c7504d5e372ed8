"""``charter evaluate`` at the scale labels come in: wall time and peak memory on synthetic
label files of 50,000 and 1,000,000 pairs, for this checkout and, with ``--before SRC``, for
another one's ``src`` (the same command, another charter), side by side in one run.

    python benchmarks/evaluate_scale.py --sizes 50000 1000000 --before ../before/src

The label file is made once per size under --work (about 1.5 KB a record: a real mock-judge
record with its id, p_a, per-order verdicts, answers and a human label on one pair in ten
varied), then each charter evaluates it in a fresh process under ``/usr/bin/time``."""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def template(work: Path) -> dict[str, object]:
    """A real label record, written by charter label with the mock judge."""
    pairs = work / "pairs.jsonl"
    pairs.write_text(
        json.dumps(
            {
                "id": "t",
                "prompt": "How do I stay safe online?",
                "response_a": "Use strong passwords and keep software updated. " * 8,
                "response_b": "Be careful. " * 12,
            }
        )
        + "\n"
    )
    out = work / "template.jsonl"
    if not out.exists():
        subprocess.run(
            [sys.executable, "-m", "charter", "label", str(pairs), "-o", str(out), "-j",
             "mock/j", "--constitution", "harmless", "--principles", "2", "-q"],
            check=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        )  # fmt: skip
    record: dict[str, object] = json.loads(out.read_text().splitlines()[0])
    return record


def make(path: Path, n: int, base: dict[str, object]) -> None:
    import orjson

    rng = random.Random(0)
    with path.open("wb") as f:
        for i in range(n):
            p_a = rng.random()
            rec = dict(base)
            rec["id"] = f"x{i}"
            rec["p_a"] = p_a
            rec["human_choice"] = rng.choice("ab") if i % 10 == 0 else None
            rec["response_b"] = "Be careful. " * rng.randint(2, 20)
            f.write(orjson.dumps(rec) + b"\n")


def measure(src: Path, labels: Path, out: Path) -> tuple[float, float]:
    """(seconds, peak MB) of ``charter evaluate`` with ``src`` first on the path."""
    done = subprocess.run(
        ["/usr/bin/time", "-f", "%e %M", sys.executable, "-m", "charter", "evaluate",
         str(labels), "-o", str(out)],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(src)},
    )  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(done.stderr[-2000:])
    seconds, kb = done.stderr.strip().splitlines()[-1].split()
    return float(seconds), float(kb) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[50_000, 1_000_000])
    parser.add_argument("--before", type=Path, help="another checkout's src/ to compare")
    parser.add_argument("--before-up-to", type=int, default=1_000_000,
                        help="sizes above this are not run on --before")  # fmt: skip
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "charter-eval")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    base = template(args.work)
    print("| pairs | charter | seconds | peak MB |\n|---:|---|---:|---:|")
    for n in args.sizes:
        labels = args.work / f"labels-{n}.jsonl"
        if not labels.exists():
            make(labels, n, base)
        runs = [("this", ROOT / "src")]
        if args.before is not None and n <= args.before_up_to:
            runs.insert(0, ("before", args.before.resolve()))
        for name, src in runs:
            seconds, mb = measure(src, labels, args.work / f"report-{name}-{n}")
            print(f"| {n:,} | {name} | {seconds:.1f} | {mb:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
