"""`charter label` on the bundled SmolLM2 through llama.cpp's real HTTP server (xllamacpp) vs
the in-process `smollm2` backend, same 32 pairs, default settings (request cache on, a fresh
output and cache for each), whole process; and how far
the server's soft labels are from the in-process model's (per order).

    python benchmarks/llamacpp_server.py [--threads N]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from charter.testing.llamacpp import LlamaCppServer

ROOT = Path(__file__).resolve().parents[1]


def write_pairs(path: Path) -> None:
    """The 16 demo pairs, and the same 16 with the answers swapped: 32 pairs."""
    rows = [
        json.loads(x) for x in (ROOT / "examples/preference-pairs.jsonl").read_text().splitlines()
    ]
    swapped = [
        {**r, "id": r["id"] + "-swapped", "chosen": r["rejected"], "rejected": r["chosen"]}
        for r in rows
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows + swapped))


def label(src: Path, out: Path, *judge: str) -> float:
    cmd = [sys.executable, "-m", "charter", "label", str(src), "-o", str(out), *judge,
           "--constitution", "harmless", "-q"]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True)
    return time.perf_counter() - start


def judgements(path: Path) -> dict[tuple[str, str], dict[str, object]]:
    found = {}
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        for j in rec["judgements"]:
            found[(rec["id"], j["order"])] = j
    return found


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=None, help="llama.cpp CPU threads")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "pairs.jsonl"
        write_pairs(src)
        local_s = label(src, Path(tmp) / "local.jsonl", "-j", "smollm2")
        with LlamaCppServer(threads=args.threads) as srv:
            server_s = label(
                src, Path(tmp) / "server.jsonl", "-j", "openai/smollm2", "--base-url", srv.base_url
            )
        local, server = (
            judgements(Path(tmp) / "local.jsonl"),
            judgements(Path(tmp) / "server.jsonl"),
        )
    diffs = [abs(float(server[k]["p_first"]) - float(local[k]["p_first"])) for k in local]  # type: ignore[arg-type]
    sources: dict[str, int] = {}
    for j in server.values():
        sources[str(j["source"])] = sources.get(str(j["source"]), 0) + 1
    saturated = sum(float(j["p_first"]) in (0.0, 1.0) for j in server.values())  # type: ignore[arg-type]
    print(
        json.dumps(
            {
                "pairs": 32,
                "in_process_smollm2_pairs_per_s": round(32 / local_s, 2),
                "llamacpp_server_pairs_per_s": round(32 / server_s, 2),
                "server_over_in_process": round(local_s / server_s, 2),
                "judgements": len(diffs),
                "max_abs_diff_p_first": round(max(diffs), 4),
                "mean_abs_diff_p_first": round(sum(diffs) / len(diffs), 4),
                "server_sources": sources,
                "server_saturated_at_0_or_1": saturated,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
