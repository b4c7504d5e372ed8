"""The reference: a bare aiohttp client (one session, one semaphore, nothing else) sending the
same 1-token A/B judgement requests charter sends. Prints requests/s as JSON."""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import aiohttp


async def main(url: str, n: int, concurrency: int) -> None:
    sem = asyncio.Semaphore(concurrency)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(i: int) -> None:
            body = {
                "model": "bench",
                "max_tokens": 1,
                "temperature": 0,
                "logprobs": True,
                "top_logprobs": 20,
                "messages": [{"role": "user", "content": f"Question number {i}: A or B?"}],
            }
            async with sem, session.post(f"{url}/chat/completions", json=body) as resp:
                await resp.json()

        start = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        elapsed = time.perf_counter() - start
    print(json.dumps({"requests": n, "seconds": elapsed, "rate": n / elapsed}))


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--n", type=int, default=16000)
    p.add_argument("--concurrency", type=int, default=64)
    a = p.parse_args()
    asyncio.run(main(a.url, a.n, a.concurrency))
