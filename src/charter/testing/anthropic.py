"""Anthropic's Messages and Message Batches APIs on the in-repo test server.

``FakeOpenAIServer`` serves these routes beside its OpenAI ones, answering with the same
``responder``, API key, latency and faults (``srv.anthropic`` holds the Anthropic knobs):

- ``POST /v1/messages``: ``x-api-key`` checked when the server has an ``api_key``,
  ``anthropic-version`` required; ``max_tokens`` cuts the reply (``stop_reason:
  max_tokens``), ``stop_sequences`` end it (``stop_sequence``); a ``thinking`` block first
  when the request enables thinking or ``thinking`` is set; usage with settable cache fields.
- Message Batches: ``POST /v1/messages/batches``, ``GET .../{id}``, ``GET .../{id}/results``
  (JSONL), ``POST .../{id}/cancel``. A batch's items finish one by one over ``batch_delay``
  seconds; one that expires first (``batch_expiry``) or is cancelled leaves the rest
  ``expired`` or ``canceled``; ``item_error`` turns a request into an ``errored`` result;
  ``submitted`` counts every custom_id ever submitted.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from charter.testing.server import FakeOpenAIServer

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
"""The error type Anthropic's API sends with each status (``api_error`` for any other)."""

ItemError = Callable[[dict[str, Any]], str | None]
"""A rule on a batch request's ``params``: an error type (``invalid_request_error``,
``overloaded_error``, ...) makes it ``errored``; None lets it succeed."""


def error_body(status: int, message: str) -> dict[str, Any]:
    """The API's error shape for ``status``."""
    kind = ERROR_TYPES.get(status, "api_error")
    return {"type": "error", "error": {"type": kind, "message": message}}


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(error_body(status, message), status=status, headers=headers)


def _text(content: Any) -> str:
    """A message's or system prompt's text: a string, or its text blocks joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(b.get("text", "")) for b in content if isinstance(b, dict))
    return ""


@dataclass
class _Batch:
    id: str
    created: float
    """time.monotonic() at creation."""
    created_at: datetime
    results: list[dict[str, Any]]
    """Each item's result once it has run, in submission order."""
    delay: float
    expiry: float | None
    cancelled_at: float | None = None
    cancel_seen: bool = False
    """The cancel's own answer says canceling; later ones say ended."""

    def ran(self, now: float) -> int:
        """How many items have run by ``now`` (item i of n runs at delay * (i + 1) / n)."""
        until = now - self.created
        if self.cancelled_at is not None:
            until = min(until, self.cancelled_at - self.created)
        if self.expiry is not None:
            until = min(until, self.expiry)
        n = len(self.results)
        if self.delay <= 0:
            return n
        return min(n, sum(1 for i in range(n) if self.delay * (i + 1) / n <= until))

    def ended(self, now: float) -> bool:
        if self.cancelled_at is not None:
            return self.cancel_seen
        if self.expiry is not None and now - self.created >= self.expiry:
            return True
        return self.ran(now) == len(self.results)

    def line(self, i: int, now: float) -> dict[str, Any]:
        item = self.results[i]
        if i < self.ran(now):
            return item
        gone = "canceled" if self.cancelled_at is not None else "expired"
        return {"custom_id": item["custom_id"], "result": {"type": gone}}


@dataclass
class FakeAnthropic:
    """The Anthropic side of the test server: its knobs and what it saw."""

    server: FakeOpenAIServer
    thinking: str | None = None
    """Put a thinking block with this text before every answer (also given, with a stock
    text, to a request that enables thinking)."""
    redacted_thinking: bool = False
    """Put a redacted_thinking block before the answer too."""
    stop_reason: str | None = None
    """Answer with this stop_reason (``refusal``, ``pause_turn``) instead of the real one."""
    usage: dict[str, int] = field(default_factory=dict)
    """Usage fields to report (``cache_read_input_tokens``, ``cache_creation_input_tokens``,
    or ``input_tokens`` itself) over the counted ones."""
    batch_delay: float = 0.0
    """Seconds a batch takes to run all its items (they finish evenly spread over it)."""
    batch_expiry: float | None = None
    """Seconds after which a batch still running expires (its items not run: ``expired``)."""
    item_error: ItemError | None = None
    """A rule making some batch requests ``errored``."""
    submitted: Counter[str] = field(default_factory=Counter)
    """Every custom_id ever submitted in a batch, with how many times."""
    batches: dict[str, _Batch] = field(default_factory=dict)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/messages", self._messages)
        app.router.add_post("/v1/messages/batches", self._create)
        app.router.add_get("/v1/messages/batches/{id}", self._retrieve)
        app.router.add_get("/v1/messages/batches/{id}/results", self._results)
        app.router.add_post("/v1/messages/batches/{id}/cancel", self._cancel)

    # -- Messages ----------------------------------------------------------------------------
    def _refused(self, request: web.Request) -> web.Response | None:
        key = self.server.api_key
        if key is not None and request.headers.get("x-api-key") != key:
            return _error(401, "invalid x-api-key")
        if not request.headers.get("anthropic-version"):
            return _error(400, "anthropic-version: header is required")
        return None

    async def _messages(self, request: web.Request) -> web.Response:
        refused = self._refused(request)
        if refused is not None:
            return refused
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "request body is not JSON")
        srv = self.server
        if srv.record_requests:
            srv.requests.append(body)
        fault = srv.faults.popleft() if srv.faults else None
        if fault is None and srv.fault_rule is not None:
            fault = srv.fault_rule(body)
        if fault is not None:
            if fault.hang:
                await asyncio.sleep(fault.hang)
            if fault.kind == "reset":
                if request.transport is not None:
                    request.transport.abort()
                raise web.HTTPInternalServerError()
            if fault.kind == "bad_json":
                return web.Response(text="<html>proxy error</html>", content_type="text/html")
            if fault.kind == "error_body":  # a 200 whose body is an error
                return web.json_response(error_body(500, fault.message))
            if fault.kind == "status" and fault.status >= 400:
                wait = fault.retry_after
                headers = {} if wait is None else {"retry-after": f"{wait:g}"}
                return _error(fault.status, fault.message, headers)
        status, answer = self.answer(body)
        if srv.latency:
            await asyncio.sleep(srv.latency)
        return web.json_response(answer, status=status)

    def answer(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """(status, body) of the Messages API's answer to ``body``: a message, or an error."""
        messages = body.get("messages")
        max_tokens = body.get("max_tokens")
        if not isinstance(body.get("model"), str):
            return 400, error_body(400, "model: Field required")
        if not isinstance(max_tokens, int) or max_tokens < 1:
            return 400, error_body(400, "max_tokens: Field required")
        if not isinstance(messages, list) or not messages:
            return 400, error_body(400, "messages: at least one message is required")
        if not 0 <= float(body.get("temperature", 1.0)) <= 1:
            return 400, error_body(400, "temperature: range: 0..1")
        turns = [{"role": m.get("role"), "content": _text(m.get("content"))} for m in messages]
        system = _text(body.get("system"))
        seen = [{"role": "system", "content": system}, *turns] if system else turns
        thinking = self.thinking
        enabled = isinstance(body.get("thinking"), dict) and body["thinking"].get("type")
        if thinking is None and enabled == "enabled":
            thinking = "Let me weigh this before answering."
        thought = thinking.split() if thinking else []
        words = self.server.responder(seen, body).split(" ")
        stop, sequence = "end_turn", None
        said = " ".join(words)
        for seq in body.get("stop_sequences") or []:
            if seq in said:
                said, stop, sequence = said.split(seq, 1)[0], "stop_sequence", seq
        words = said.split(" ")
        if len(thought) + len(words) > max_tokens:
            stop, sequence = "max_tokens", None
            thought, words = thought[:max_tokens], words[: max(0, max_tokens - len(thought))]
        content: list[dict[str, Any]] = []
        if thought:
            content.append({"type": "thinking", "thinking": " ".join(thought), "signature": "s"})
        if self.redacted_thinking:
            content.append({"type": "redacted_thinking", "data": "c2VjcmV0"})
        if words:
            content.append({"type": "text", "text": " ".join(words)})
        self.server.served += 1
        counted = sum(len(t["content"].split()) + 2 for t in seen)
        usage = {
            "input_tokens": counted,
            "output_tokens": len(thought) + len([w for w in words if w]),
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            **self.usage,
        }
        return 200, {
            "id": f"msg_{self.server.served:06d}",
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": content,
            "stop_reason": self.stop_reason or stop,
            "stop_sequence": sequence,
            "usage": usage,
        }

    # -- Message Batches ---------------------------------------------------------------------
    async def _create(self, request: web.Request) -> web.Response:
        refused = self._refused(request)
        if refused is not None:
            return refused
        body = await request.json()
        requests = body.get("requests") if isinstance(body, dict) else None
        if not isinstance(requests, list) or not requests:
            return _error(400, "requests: at least one request is required")
        ids = [r.get("custom_id") if isinstance(r, dict) else None for r in requests]
        if not all(isinstance(i, str) and i for i in ids):
            return _error(400, "requests: each needs a custom_id")
        if len(set(ids)) < len(ids):
            return _error(400, "requests: custom_id values must be unique within a batch")
        results = [self._run(str(r["custom_id"]), r.get("params")) for r in requests]
        self.submitted.update(str(i) for i in ids)
        batch = _Batch(
            id=f"msgbatch_{next(self._ids):06d}",
            created=time.monotonic(),
            created_at=datetime.now(timezone.utc),
            results=results,
            delay=self.batch_delay,
            expiry=self.batch_expiry,
        )
        self.batches[batch.id] = batch
        return web.json_response(self._object(batch, request))

    def _run(self, custom_id: str, params: Any) -> dict[str, Any]:
        """The result line of one request, as if it ran now."""
        if not isinstance(params, dict):
            params = {}
        kind = self.item_error(params) if self.item_error is not None else None
        if kind is not None:
            error = {"type": "error", "error": {"type": kind, "message": f"injected {kind}"}}
            return {"custom_id": custom_id, "result": {"type": "errored", "error": error}}
        status, answer = self.answer(params)
        if status != 200:
            return {"custom_id": custom_id, "result": {"type": "errored", "error": answer}}
        return {"custom_id": custom_id, "result": {"type": "succeeded", "message": answer}}

    def _object(self, batch: _Batch, request: web.Request) -> dict[str, Any]:
        now = time.monotonic()
        ran, n = batch.ran(now), len(batch.results)
        ended = batch.ended(now)
        kinds = Counter(batch.line(i, now)["result"]["type"] for i in range(n))
        stamp = batch.created_at.isoformat().replace("+00:00", "Z")
        ended_at = None
        if ended:
            ended_at = (batch.created_at + timedelta(seconds=now - batch.created)).isoformat()
        status = "ended" if ended else "in_progress"
        if batch.cancelled_at is not None and not ended:
            status = "canceling"
        url = f"{request.url.origin()}/v1/messages/batches/{batch.id}/results"
        return {
            "id": batch.id,
            "type": "message_batch",
            "processing_status": status,
            "request_counts": {
                "processing": 0 if ended else n - ran,
                "succeeded": kinds["succeeded"] if ended else _ran(batch, now, "succeeded"),
                "errored": kinds["errored"] if ended else _ran(batch, now, "errored"),
                "canceled": kinds["canceled"] if ended else 0,
                "expired": kinds["expired"] if ended else 0,
            },
            "created_at": stamp,
            "expires_at": (batch.created_at + timedelta(hours=24)).isoformat(),
            "ended_at": ended_at,
            "archived_at": None,
            "cancel_initiated_at": None if batch.cancelled_at is None else stamp,
            "results_url": url if ended else None,
        }

    def _batch(self, request: web.Request) -> _Batch | web.Response:
        refused = self._refused(request)
        if refused is not None:
            return refused
        batch = self.batches.get(request.match_info["id"])
        if batch is None:
            return _error(404, f"no message batch {request.match_info['id']}")
        return batch

    async def _retrieve(self, request: web.Request) -> web.Response:
        batch = self._batch(request)
        if isinstance(batch, web.Response):
            return batch
        answer = self._object(batch, request)
        if batch.cancelled_at is not None:
            batch.cancel_seen = True  # the next look finds it ended
        return web.json_response(answer)

    async def _cancel(self, request: web.Request) -> web.Response:
        batch = self._batch(request)
        if isinstance(batch, web.Response):
            return batch
        if batch.cancelled_at is None and not batch.ended(time.monotonic()):
            batch.cancelled_at = time.monotonic()
        return web.json_response(self._object(batch, request))

    async def _results(self, request: web.Request) -> web.Response:
        batch = self._batch(request)
        if isinstance(batch, web.Response):
            return batch
        now = time.monotonic()
        if not batch.ended(now):
            return _error(400, f"message batch {batch.id} has not ended yet")
        lines = [json.dumps(batch.line(i, now)) for i in range(len(batch.results))]
        return web.Response(
            body=("\n".join(lines) + "\n").encode(), content_type="application/x-jsonl"
        )


def _ran(batch: _Batch, now: float, kind: str) -> int:
    return sum(1 for r in batch.results[: batch.ran(now)] if r["result"]["type"] == kind)


def add_anthropic_routes(app: web.Application, server: FakeOpenAIServer) -> None:
    """Serve Anthropic's routes on ``app`` with ``server.anthropic``'s knobs."""
    server.anthropic.add_routes(app)
