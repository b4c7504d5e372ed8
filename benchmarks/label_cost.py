"""Tokens and dollars per 1,000 labels for ``charter label``: both orders or one, 1 or 4
principles, with and without --cot, priced at the table's prices (``charter.prices``) for a
few models, live and through a batch API.

Real token counts: ``charter label`` runs the bundled SmolLM2-135M-Instruct through
llama.cpp's own HTTP server (``charter.testing.llamacpp``) on the first HH-RLHF pairs of
``../shared/data``. SmolLM2's tokenizer stands in for the priced models' tokenizers (which
count the same text within some tens of per cent of it). Between charter and llama.cpp sits a
small proxy that refuses ``top_logprobs`` above 20 with a 400, as OpenAI's API does: charter
then asks no wider top list (a second request llama.cpp would answer and OpenAI would not),
so the requests counted are the ones a hosted judge would be sent and bill.

    python benchmarks/label_cost.py [--pairs 40] [--cot-max-tokens 64] [--max-tokens 32]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from charter.prices import BUILTIN, Prices
from charter.testing.llamacpp import LlamaCppServer
from charter.types import Usage

ROOT = Path(__file__).resolve().parents[1]
HH = ROOT.parent / "shared" / "data" / "hh-rlhf-harmless-base-test.jsonl.gz"
MODELS = ("gpt-4.1-nano", "gpt-4o-mini", "claude-haiku-4-5")
OPENAI_TOP_LOGPROBS = 20


@contextmanager
def openai_like(upstream: str) -> Iterator[str]:
    """A proxy to ``upstream`` (``http://HOST:PORT``) that answers 400 to a request for more
    than 20 top log-probabilities, as OpenAI does."""
    import aiohttp
    from aiohttp import web

    loop = asyncio.new_event_loop()
    ready = threading.Event()
    box: dict[str, object] = {}

    async def forward(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if int(body.get("top_logprobs") or 0) > OPENAI_TOP_LOGPROBS:
            message = f"Invalid 'top_logprobs': expected a value <= {OPENAI_TOP_LOGPROBS}"
            return web.json_response({"error": {"message": message}}, status=400)
        session: aiohttp.ClientSession = request.app["session"]
        async with session.post(upstream + request.path, json=body) as r:
            answer = await r.read()
            return web.Response(body=answer, status=r.status, content_type="application/json")

    async def start() -> None:
        app = web.Application()
        app["session"] = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600))
        app.router.add_post("/v1/chat/completions", forward)

        async def close(app: web.Application) -> None:
            await app["session"].close()

        app.on_cleanup.append(close)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        box["runner"], box["port"] = runner, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        ready.set()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    ready.wait(30)
    try:
        yield f"http://127.0.0.1:{box['port']}/v1"
    finally:
        runner: web.AppRunner = box["runner"]  # type: ignore[assignment]
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)


def label(src: Path, out: Path, base_url: str, pairs: int, *flags: str) -> tuple[Usage, int, float]:
    """Run ``charter label``; the usage summed over its records, the labels, seconds."""
    cmd = [sys.executable, "-m", "charter", "label", str(src), "-o", str(out), "-j",
           "openai/smollm2", "--base-url", base_url, "--constitution", "harmless",
           "--limit", str(pairs), "--no-cache", "-q", *flags]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True)
    seconds = time.perf_counter() - start
    usage = Usage()
    n = 0
    for line in out.read_text().splitlines():
        usage.add(Usage.model_validate(json.loads(line)["usage"]))
        n += 1
    return usage, n, seconds


def per_1000(prices: Prices, usage: Usage, labels: int, *, batched: bool) -> float:
    cost = prices.request_cost(usage.prompt_tokens, usage.completion_tokens, batched=batched)
    return cost * 1000 / labels


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=40)
    parser.add_argument("--cot-max-tokens", type=int, default=64)
    parser.add_argument(
        "--max-tokens",
        type=int,
        default=32,
        help="cap on the reply of a judge asked again when neither letter is in its top list",
    )
    parser.add_argument("--threads", type=int, default=None, help="llama.cpp CPU threads")
    args = parser.parse_args()
    if not HH.exists():
        sys.exit(f"shared data not present: {HH}")
    cot = ["--cot", "--max-tokens", str(args.cot_max_tokens)]
    configs = {
        "both orders, 1 principle": [],
        "first order only": ["--orders", "first"],
        "both orders, 4 principles": ["--principles", "4"],
        f"both orders, --cot (reasoning <= {args.cot_max_tokens} tokens)": cot,
    }
    rows = []
    with (
        LlamaCppServer(parallel=4, ctx=16384, threads=args.threads) as server,
        openai_like(server.base_url.removesuffix("/v1")) as url,
        tempfile.TemporaryDirectory() as tmp,
    ):
        for i, (name, flags) in enumerate(configs.items()):
            if "--cot" not in flags:
                flags = ["--max-tokens", str(args.max_tokens), *flags]
            usage, n, seconds = label(HH, Path(tmp) / f"{i}.jsonl", url, args.pairs, *flags)
            rows.append((name, usage, n, seconds))
            print(f"{name}: {n} labels in {seconds:.0f} s", file=sys.stderr)
    header = ["setting", "requests/label", "prompt tok/label", "completion tok/label"]
    for model in MODELS:
        header += [f"{model} live", f"{model} batch"]
    print("| " + " | ".join(header) + " |")
    print("|---|" + "---:|" * (len(header) - 1))
    for name, usage, n, _ in rows:
        cells = [name, f"{usage.requests / n:.1f}", f"{usage.prompt_tokens / n:,.0f}",
                 f"{usage.completion_tokens / n:,.0f}"]  # fmt: skip
        for model in MODELS:
            prices = BUILTIN[model]
            cells += [f"${per_1000(prices, usage, n, batched=False):.3f}",
                      f"${per_1000(prices, usage, n, batched=True):.3f}"]  # fmt: skip
        print("| " + " | ".join(cells) + " |")
    print()
    for model in MODELS:
        p = BUILTIN[model]
        print(f"- {model}: ${p.input}/${p.output} per 1M in/out, batch -{p.batch_discount:.0%} "
              f"({p.source}, read {p.checked})")  # fmt: skip


if __name__ == "__main__":
    main()
