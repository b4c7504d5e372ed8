"""Local A/B labelling on the bundled SmolLM2: charter's forward-pass option scoring (both
orders, batched) vs a naive judge that calls `generate` for one token per order and reads the
letter, one request at a time.

    python benchmarks/local_scoring.py [--pairs 32]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from itertools import islice

from charter.backends.smollm2 import create
from charter.constitution import load_constitution
from charter.judges.pairwise import LabelConfig, judge_messages
from charter.model import Model
from charter.pairs import PairRecord
from charter.stages.label import label
from charter.types import GenerateConfig, Message


def pairs(n: int) -> list[PairRecord]:
    return [
        PairRecord(
            id=f"p{i}",
            messages=[Message(role="user", content=f"Question {i}: how do I calm down?")],
            response_a=f"Breathe slowly and take a short walk ({i}).",
            response_b=f"Just ignore it ({i}).",
            a_source="a",
            b_source="b",
        )
        for i in range(n)
    ]


async def charter_rate(items: list[PairRecord]) -> float:
    backend = create(max_batch_size=16)
    model = Model(backend, concurrency=16)
    constitution = load_constitution("harmless")
    config = LabelConfig()
    await label(items[0], judge=model, constitution=constitution, config=config)  # warm-up
    start = time.perf_counter()
    await asyncio.gather(
        *(label(p, judge=model, constitution=constitution, config=config) for p in items)
    )
    return len(items) / (time.perf_counter() - start)


async def naive_rate(items: list[PairRecord]) -> float:
    backend = create(max_batch_size=1)
    constitution = load_constitution("harmless")
    principle = constitution.principles[0]
    cfg = GenerateConfig(max_tokens=1, temperature=0.0)
    await backend.generate(judge_messages(items[0], principle, "ab", constitution, False), cfg)
    start = time.perf_counter()
    for p in items:
        for order in ("ab", "ba"):
            await backend.generate(judge_messages(p, principle, order, constitution, False), cfg)
    return len(items) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=32)
    a = parser.parse_args()
    items = list(islice(pairs(a.pairs + 1), a.pairs))
    fast = asyncio.run(charter_rate(items))
    slow = asyncio.run(naive_rate(items))
    print(
        json.dumps(
            {
                "pairs": a.pairs,
                "charter_forward_pass_pairs_per_s": round(fast, 2),
                "naive_generate_pairs_per_s": round(slow, 2),
                "ratio": round(fast / slow, 2),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
