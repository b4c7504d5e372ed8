"""``charter serve``: rewards per second through the server against the same rewards asked
in-process, with default settings.

1. A reward model (``--reward rm/DIR``): the tiny random model the tests use and SmolLM2-135M
   with a (random) reward head. In-process: ``Model.reward`` for every completion, gathered
   (the backend batches them); through the server: 64 clients sending OpenRLHF's requests,
   one query each (as OpenRLHF 0.11.2's rollouts send), and 64-query requests.
2. A judge (``--judge openai/... --rubric``) on the stand-in server at 50 ms per request,
   C = 64: rewards/s through ``charter serve -c 64`` against the bare aiohttp client sending
   the same number of requests straight to the stand-in.

The server is ``python -m charter serve`` in its own process, as users run it.

    python benchmarks/serve_rewards.py [--n 2048] [--judge-n 4096]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import CHARTER, free_port, stand_in_server


def smollm2_reward_model(folder: Path) -> Path:
    """SmolLM2-135M with a one-output head (random: throughput only)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from charter.backends.smollm2 import converted_dir

    torch.manual_seed(0)
    source = converted_dir()
    model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=1)
    tok = AutoTokenizer.from_pretrained(source)
    model.config.pad_token_id = tok.pad_token_id or tok.eos_token_id
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def completions(n: int) -> list[tuple[str, str]]:
    return [
        (f"Question number {i}: how do I stay calm?", f"Breathe slowly ({i}).") for i in range(n)
    ]


async def in_process(spec: str, items: list[tuple[str, str]]) -> float:
    from charter.model import Model
    from charter.types import Message

    model = Model.from_spec(spec)
    warm = [model.reward([Message(role="user", content=f"warm {i}")], "up") for i in range(16)]
    await asyncio.gather(*warm)
    start = time.perf_counter()
    await asyncio.gather(*(model.reward([Message(role="user", content=p)], a) for p, a in items))
    rate = len(items) / (time.perf_counter() - start)
    await model.aclose()
    return rate


@contextmanager
def server(*args: str) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [*CHARTER, "serve", *args, "--port", str(port), "-q"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        url = proc.stderr.readline().strip()  # -q: the address alone, on stderr
        if not url.startswith("http"):
            raise SystemExit(f"charter serve did not start: {url!r}")
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


async def through_server(url: str, items: list[tuple[str, str]], per_request: int) -> float:
    """OpenRLHF's requests from 64 clients: prompt + response strings with their prompts."""
    chunks = [items[i : i + per_request] for i in range(0, len(items), per_request)]
    sem = asyncio.Semaphore(64)
    connector = aiohttp.TCPConnector(limit=64)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def send(chunk: list[tuple[str, str]]) -> None:
            body = {"query": [p + a for p, a in chunk], "prompts": [p for p, _ in chunk]}
            async with sem, session.post(f"{url}/get_reward", json=body) as r:
                assert r.status == 200, await r.text()
                got = (await r.json())["rewards"]
                assert len(got) == len(chunk)

        await send(chunks[0])  # warm-up
        start = time.perf_counter()
        await asyncio.gather(*(send(c) for c in chunks))
        return len(items) / (time.perf_counter() - start)


async def judge_through_server(url: str, n: int) -> float:
    sem = asyncio.Semaphore(64)
    connector = aiohttp.TCPConnector(limit=64)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def send(i: int) -> None:
            body = {
                "messages": [{"role": "user", "content": f"Question number {i}: A or B?"}],
                "completions": [f"An answer {i}."],
            }
            async with sem, session.post(f"{url}/v1/rewards", json=body) as r:
                assert r.status == 200, await r.text()

        start = time.perf_counter()
        await asyncio.gather(*(send(i) for i in range(n)))
        return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=2048, help="completions per reward-model run")
    parser.add_argument("--judge-n", type=int, default=4096, help="completions for the judge")
    a = parser.parse_args()
    results: dict[str, object] = {}
    items = completions(a.n)
    with tempfile.TemporaryDirectory() as tmp:
        from charter.testing.tiny import tiny_reward_model

        models = {
            "tiny": tiny_reward_model(Path(tmp) / "tiny", seed=0),
            "smollm2": smollm2_reward_model(Path(tmp) / "smollm2"),
        }
        for name, folder in models.items():
            spec = f"rm/{folder}"
            direct = asyncio.run(in_process(spec, items))
            with server("--reward", spec) as url:
                one = asyncio.run(through_server(url, items, 1))
                batched = asyncio.run(through_server(url, items, 64))
            results[f"rm_{name}"] = {
                "completions": a.n,
                "in_process_per_s": round(direct, 1),
                "serve_1_per_request_per_s": round(one, 1),
                "serve_64_per_request_per_s": round(batched, 1),
                "ratio_1_per_request": round(one / direct, 2),
                "ratio_64_per_request": round(batched / direct, 2),
            }
            print(json.dumps({name: results[f"rm_{name}"]}), flush=True)
    with stand_in_server(0.05, prefer="4") as base:
        bare = subprocess.run(
            [
                sys.executable,
                str(Path(__file__).parent / "bare_client.py"),
                "--url",
                base,
                "--n",
                str(a.judge_n),
                "--concurrency",
                "64",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        bare_rate = json.loads(bare.stdout)["rate"]
        with server(
            "--judge", "openai/bench", "--rubric", "helpfulness", "--base-url", base, "-c", "64"
        ) as url:
            judged = asyncio.run(judge_through_server(url, a.judge_n))
    results["judge_c64"] = {
        "completions": a.judge_n,
        "bare_client_requests_per_s": round(bare_rate, 1),
        "serve_rewards_per_s": round(judged, 1),
        "ratio": round(judged / bare_rate, 2),
    }
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
