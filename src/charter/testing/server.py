"""A real OpenAI-compatible HTTP server on 127.0.0.1 for tests and benchmarks.

It speaks ``POST /v1/chat/completions`` and ``POST /v1/completions`` (non-streaming; the
latter as base-model servers answer it: a ``prompt``, ``text`` back and the legacy ``logprobs``
shape), ``GET /v1/models``, and OpenAI's batch API (``charter.testing.openai_batches``), with
settable latency, log-probabilities, API-key checking, injectable faults (HTTP errors with or
without ``Retry-After``, hangs) and a cap on requests processed at once. It runs in a background
thread so synchronous tests and subprocesses can use it, or standalone:
``python -m charter.testing.server --port 8000``.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import re
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from aiohttp import web

from charter.testing.anthropic import FakeAnthropic, add_anthropic_routes

Responder = Callable[[list[dict[str, Any]], dict[str, Any]], str]
OptionProbs = Callable[[list[dict[str, Any]]], Mapping[str, float]]


FaultKind = Literal[
    "status", "reset", "bad_json", "no_choices", "error_body", "truncated", "no_logprobs"
]


@dataclass
class Fault:
    """What to do instead of answering one request normally."""

    status: int = 500
    """HTTP status to return (kind ``status``)."""
    kind: FaultKind = "status"
    """``status``: an HTTP error; ``reset``: drop the connection; ``bad_json``: a 200 whose body
    is not JSON; ``no_choices``: JSON without ``choices``; ``error_body``: a 200 whose body is
    ``{"error": {"message": message}}``; ``truncated``: a normal answer cut short with
    ``finish_reason: length``; ``no_logprobs``: answer without log-probabilities."""
    retry_after: float | None = None
    """Value of the Retry-After header, if any."""
    hang: float = 0.0
    """Seconds to wait before answering (to trigger client timeouts)."""
    message: str = "injected fault"


@dataclass
class ReasonedReply:
    """A reasoning judge's answer to every chat request: its first token is not an option.

    The shapes servers return: ``content="<think>...</think> A"`` (no reasoning parser),
    ``content="The answer is (B)"``, or ``reasoning_content="..."`` with ``content="A"`` (vLLM
    and SGLang reasoning parsers). Log-probabilities cover the whole reply, reasoning first,
    one entry per token with its top list; a token that spells an option is listed with
    ``option_probs``, any other token alone. ``max_tokens`` cuts the reply (reasoning first)
    with ``finish_reason: length``."""

    content: str
    """The message's ``content``."""
    option_probs: Mapping[str, float]
    """Probabilities listed at a token that spells an option (``A``, `` (B``)."""
    reasoning_content: str | None = None
    """Reasoning returned apart from the content (as a reasoning parser does)."""
    reasoning_field: str = "reasoning_content"
    """The field it is returned in (``reasoning_content``; some servers say ``reasoning``)."""


_TOKEN = re.compile(r"\s*(?:\w+|[^\w\s])|\s+$")


def reply_tokens(text: str) -> list[str]:
    """Words and punctuation marks, each with the whitespace before it: they join to ``text``."""
    tokens = _TOKEN.findall(text)
    assert "".join(tokens) == text, text
    return tokens


def echo_responder(messages: list[dict[str, Any]], body: dict[str, Any]) -> str:
    last = next((m["content"] for m in reversed(messages) if m.get("role") == "user"), "")
    return "Echo: " + " ".join(str(last).split())


class FakeOpenAIServer:
    """Start with ``with FakeOpenAIServer() as srv:`` and point clients at ``srv.base_url``."""

    def __init__(
        self,
        *,
        latency: float = 0.0,
        token_latency: float = 0.0,
        logprobs: bool = True,
        option_probs: Mapping[str, float] | OptionProbs | None = None,
        responder: Responder = echo_responder,
        api_key: str | None = None,
        port: int = 0,
        record_requests: bool = True,
        fault_rule: Callable[[dict[str, Any]], Fault | None] | None = None,
        max_top_logprobs: int | None = None,
        top_list: int | None = None,
        max_concurrency: int | None = None,
        reasoned: ReasonedReply | None = None,
        continue_final: bool = True,
        cached_tokens: int = 0,
    ) -> None:
        if max_concurrency is not None and max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, got {max_concurrency}")
        self.latency = latency
        self.token_latency = token_latency
        self.logprobs = logprobs
        self.option_probs = option_probs
        self.responder = responder
        self.api_key = api_key
        self.record_requests = record_requests
        self.requests: list[dict[str, Any]] = []
        self.faults: deque[Fault] = deque()
        self.fault_rule = fault_rule
        self.max_top_logprobs = max_top_logprobs
        """Answer 400 (naming the limit, as vLLM and hosted APIs do) to a request asking for
        more top_logprobs than this."""
        self.top_list = top_list
        """Return at most this many candidates in a top list, whatever was asked (as servers
        that cap top_logprobs without saying so)."""
        self.max_concurrency = max_concurrency
        """Process at most this many requests at once; the rest wait in arrival order (as
        vLLM's --max-num-seqs)."""
        self.reasoned = reasoned
        """Answer every chat request as a judge that reasons first (see ReasonedReply)."""
        self.continue_final = continue_final
        """Take vLLM's ``continue_final_message``/``add_generation_prompt`` fields; False:
        refuse them with a 400, as OpenAI and servers without them do."""
        self.cached_tokens = cached_tokens
        """Report this many of each chat request's prompt tokens (at most all of them) as read
        from a prompt cache (``usage.prompt_tokens_details.cached_tokens``, as OpenAI does)."""
        self.served = 0
        self.in_flight = 0
        self.max_in_flight = 0
        """The most requests it was processing at once (at most max_concurrency)."""
        self.queued = 0
        self.max_queued = 0
        """The most requests waiting at once for max_concurrency (received, not processed)."""
        self._gate: asyncio.Semaphore | None = None
        self._port = port
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self.port = 0
        from charter.testing.openai_batches import FakeBatches

        self.batches = FakeBatches(self)
        """The batch API (``/v1/files``, ``/v1/batches``): its knobs and counters."""
        self.anthropic = FakeAnthropic(self)
        """Anthropic's routes (charter.testing.anthropic): their knobs and what they saw."""

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def add_faults(self, *faults: Fault) -> None:
        self.faults.extend(faults)

    # -- HTTP handlers ---------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        self.batches.add_routes(app)
        add_anthropic_routes(app, self)
        return app

    def _unauthorised(self, request: web.Request) -> web.Response | None:
        if self.api_key is None:
            return None
        if request.headers.get("Authorization") == f"Bearer {self.api_key}":
            return None
        return web.json_response(
            {"error": {"message": "invalid API key", "type": "invalid_request_error"}}, status=401
        )

    async def _models(self, request: web.Request) -> web.Response:
        return self._unauthorised(request) or web.json_response(
            {"object": "list", "data": [{"id": "fake", "object": "model"}]}
        )

    async def _chat(self, request: web.Request) -> web.Response:
        gate = self._gate
        if gate is None:
            return await self._processed(request)
        if gate.locked():
            self.queued += 1
            self.max_queued = max(self.max_queued, self.queued)
            try:
                await gate.acquire()
            finally:
                self.queued -= 1
        else:
            await gate.acquire()
        try:
            return await self._processed(request)
        finally:
            gate.release()

    async def _processed(self, request: web.Request) -> web.Response:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self._chat_one(request)
        finally:
            self.in_flight -= 1

    async def _chat_one(self, request: web.Request) -> web.Response:
        denied = self._unauthorised(request)
        if denied is not None:
            return denied
        body = await request.json()
        if self.record_requests:
            self.requests.append(body)
        plain = request.path.endswith("/v1/completions")
        fault = self.faults.popleft() if self.faults else None
        if fault is None and self.fault_rule is not None:
            fault = self.fault_rule(body)
        if fault is not None:
            if fault.hang:
                await asyncio.sleep(fault.hang)
            if fault.kind == "reset":
                if request.transport is not None:
                    request.transport.abort()
                raise web.HTTPInternalServerError()  # never reaches the client
            if fault.kind == "bad_json":
                return web.Response(
                    text="<html>upstream proxy error</html>", content_type="application/json"
                )
            if fault.kind == "no_choices":
                return web.json_response({"id": "x", "object": "chat.completion", "model": "fake"})
            if fault.kind == "error_body":
                return web.json_response({"error": {"message": fault.message, "code": 500}})
            if fault.kind in ("truncated", "no_logprobs"):
                return await self._answer(body, fault.kind, completions=plain)
            if fault.status < 400:
                return await self._answer(body, completions=plain)
            headers = {} if fault.retry_after is None else {"Retry-After": f"{fault.retry_after:g}"}
            return web.json_response(
                {"error": {"message": fault.message, "type": "server_error"}},
                status=fault.status,
                headers=headers,
            )
        return await self._answer(body, completions=plain)

    async def _answer(
        self, body: dict[str, Any], fault: str | None = None, *, completions: bool = False
    ) -> web.Response:
        if completions:  # a plain-text prompt: responders and option_probs see one user turn
            prompt = body.get("prompt")
            if not isinstance(prompt, str) or not prompt:
                return web.json_response({"error": {"message": "prompt is required"}}, status=400)
            messages = [{"role": "user", "content": prompt}]
            wanted = body.get("logprobs")
            body = {**body, "logprobs": bool(wanted), "top_logprobs": int(wanted or 0)}
        else:
            messages = body.get("messages") or []
        if not messages:
            return web.json_response({"error": {"message": "messages is required"}}, status=400)
        max_tokens = int(body.get("max_tokens") or body.get("max_completion_tokens") or 256)
        cap, asked = self.max_top_logprobs, int(body.get("top_logprobs") or 0)
        if body.get("logprobs") and cap is not None and asked > cap:
            message = f"Invalid 'top_logprobs': expected a value <= {cap}, but got {asked}"
            return web.json_response(
                {"error": {"message": message, "type": "invalid_request_error"}}, status=400
            )
        if not self.continue_final and "continue_final_message" in body:
            message = "Unrecognized request argument supplied: continue_final_message"
            return web.json_response(
                {"error": {"message": message, "type": "invalid_request_error"}}, status=400
            )
        if self.reasoned is not None and not completions:
            return self._reasoned(self.reasoned, body, max_tokens)
        logprobs = None
        top: list[dict[str, Any]] = []
        probs = self._probs(messages)
        if body.get("logprobs") and self.logprobs and probs and fault != "no_logprobs":
            ranked = sorted(probs.items(), key=lambda kv: -kv[1])
            k = int(body.get("top_logprobs") or 0)
            if self.top_list is not None:
                k = min(k, self.top_list)
            top = [
                {"token": t, "logprob": math.log(p), "bytes": list(t.encode())}
                for t, p in ranked[: max(k, 1)]
                if p > 0
            ]
            logprobs = {"content": [{**top[0], "top_logprobs": top if k else []}]}
            text, finish = ranked[0][0], "length"
        elif probs and max_tokens == 1:
            text, finish = max(probs.items(), key=lambda kv: kv[1])[0], "length"
        else:
            words = self.responder(messages, body).split(" ")
            finish = "length" if len(words) > max_tokens else "stop"
            text = " ".join(words[:max_tokens])
        if fault == "truncated":
            words = text.split(" ")
            text, finish = " ".join(words[: max(1, len(words) // 2)]), "length"
        completion_tokens = len(text.split())
        delay = self.latency + self.token_latency * completion_tokens
        if delay:
            await asyncio.sleep(delay)
        self.served += 1
        prompt_tokens = sum(len(str(m.get("content", "")).split()) + 2 for m in messages)
        if completions:
            legacy = None
            if logprobs is not None:
                legacy = {
                    "tokens": [top[0]["token"]],
                    "token_logprobs": [top[0]["logprob"]],
                    "top_logprobs": [{t["token"]: t["logprob"] for t in top}],
                }
            return web.json_response(
                {
                    "id": f"cmpl-{self.served}",
                    "object": "text_completion",
                    "created": int(time.time()),
                    "model": body.get("model", "fake"),
                    "choices": [
                        {"index": 0, "text": text, "finish_reason": finish, "logprobs": legacy}
                    ],
                    "usage": {
                        "prompt_tokens": prompt_tokens,
                        "completion_tokens": completion_tokens,
                        "total_tokens": prompt_tokens + completion_tokens,
                    },
                }
            )
        return web.json_response(
            {
                "id": f"chatcmpl-{self.served}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model", "fake"),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": finish,
                        "logprobs": logprobs,
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                    **self._cached_details(prompt_tokens),
                },
            }
        )

    def _cached_details(self, prompt_tokens: int) -> dict[str, Any]:
        if not self.cached_tokens:
            return {}
        return {"prompt_tokens_details": {"cached_tokens": min(self.cached_tokens, prompt_tokens)}}

    def _reasoned(
        self, reply: ReasonedReply, body: dict[str, Any], max_tokens: int
    ) -> web.Response:
        thought = reply_tokens(reply.reasoning_content or "")
        said = reply_tokens(reply.content)
        finish = "length" if len(thought) + len(said) > max_tokens else "stop"
        thought, said = thought[:max_tokens], said[: max(0, max_tokens - len(thought))]
        options = sorted(reply.option_probs.items(), key=lambda kv: -kv[1])
        k = int(body.get("top_logprobs") or 0)
        entries = []
        for token in thought + said:
            key = token.strip(" ()[]*.:")
            if key in reply.option_probs:
                # the generated spelling (" (B") stands for its option, as servers list it
                top = [
                    {"token": token if t == key else t, "logprob": math.log(p)}
                    for t, p in options
                    if p > 0
                ]
                lp = math.log(reply.option_probs[key])
            else:
                top, lp = [{"token": token, "logprob": -0.01}], -0.01
            entries.append({"token": token, "logprob": lp, "top_logprobs": top[: max(k, 1)]})
        message: dict[str, Any] = {"role": "assistant", "content": "".join(said) or None}
        if reply.reasoning_content is not None:
            message[reply.reasoning_field] = "".join(thought)
        self.served += 1
        n = len(entries)
        return web.json_response(
            {
                "id": f"chatcmpl-{self.served}",
                "object": "chat.completion",
                "model": body.get("model", "fake"),
                "choices": [
                    {
                        "index": 0,
                        "message": message,
                        "finish_reason": finish,
                        "logprobs": {"content": entries} if body.get("logprobs") else None,
                    }
                ],
                "usage": {"prompt_tokens": 10, "completion_tokens": n, "total_tokens": 10 + n},
            }
        )

    def _probs(self, messages: list[dict[str, Any]]) -> Mapping[str, float] | None:
        if self.option_probs is None:
            return None
        if callable(self.option_probs):
            return self.option_probs(messages)
        return self.option_probs

    # -- lifecycle -------------------------------------------------------------------------
    async def serve(self, sock: socket.socket) -> None:
        self._stop = asyncio.Event()
        if self.max_concurrency is not None:
            self._gate = asyncio.Semaphore(self.max_concurrency)
        runner = web.AppRunner(self.app(), access_log=None)
        await runner.setup()
        await web.SockSite(runner, sock, backlog=1024).start()
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await runner.cleanup()

    def _bind(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self._port))
        self.port = sock.getsockname()[1]
        return sock

    def start(self) -> FakeOpenAIServer:
        sock = self._bind()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            self._loop.run_until_complete(self.serve(sock))
            self._loop.close()

        self._thread = threading.Thread(target=run, name="fake-openai-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("fake OpenAI server did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per request")
    parser.add_argument("--token-latency", type=float, default=0.0, help="seconds per token")
    parser.add_argument("--prefer", default="A", help="option the judge prefers (logprobs)")
    parser.add_argument("--confidence", type=float, default=0.8, help="probability of --prefer")
    parser.add_argument(
        "--max-concurrency",
        type=int,
        default=None,
        help="requests processed at once; the rest wait (as vLLM's --max-num-seqs)",
    )
    args = parser.parse_args(argv)
    other = "B" if args.prefer == "A" else "A"
    server = FakeOpenAIServer(
        latency=args.latency,
        token_latency=args.token_latency,
        option_probs={args.prefer: args.confidence, other: 1 - args.confidence},
        port=args.port,
        record_requests=False,
        max_concurrency=args.max_concurrency,
    )
    sock = server._bind()
    print(f"serving on {server.base_url}", flush=True)
    asyncio.run(server.serve(sock))


if __name__ == "__main__":
    main()
