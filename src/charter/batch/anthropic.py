"""Anthropic's Message Batches API as charter's ``BatchAPI``: one POST of up to 100,000
Messages requests, polled until ``ended``, its results read as JSONL.

Reached with the ``anthropic/`` backend's URL and headers (``AnthropicBackend.batch_api()``).
Each result comes back as the HTTP answer the request would have had live, so the backend
reads it with the same checks (``AnthropicBackend._answered``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from charter.backends.openai import _decode, _encode, _retry_after, _server_message
from charter.batch.api import BatchNotFound, BatchState, Item, ItemResult
from charter.errors import (
    BackendError,
    BackendFatalError,
    BackendUnavailable,
    RetryableBackendError,
)

ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}
"""The HTTP status each of Anthropic's error types comes with live: an errored batch request
is answered as that status would be (500 for a type not listed)."""
_NOT_RUN = {
    "canceled": "canceled before it ran (the batch was cancelled)",
    "expired": "expired before it ran (the batch ended, 24 hours after it was made)",
}


def _at(root: str, path: str) -> str:
    parts = urlsplit(root)
    return urlunsplit((parts.scheme, parts.netloc, parts.path + path, parts.query, ""))


def _same_origin(url: str, root: str) -> bool:
    a, b = urlsplit(url), urlsplit(root)
    return (a.scheme, a.netloc) == (b.scheme, b.netloc)


def _state(data: Any, where: str) -> BatchState:
    if not isinstance(data, dict) or not isinstance(data.get("id"), str):
        raise RetryableBackendError(f"{where} returned no message batch")
    counts = data.get("request_counts") or {}
    n = {k: int(counts.get(k) or 0) for k in ("processing", "succeeded", "errored")}
    gone = int(counts.get("canceled") or 0) + int(counts.get("expired") or 0)
    extra = {"results_url": data["results_url"]} if data.get("results_url") else {}
    return BatchState(
        id=data["id"],
        status=str(data.get("processing_status") or "unknown"),
        total=sum(n.values()) + gone,
        completed=n["succeeded"],
        failed=n["errored"] + gone,
        extra=extra,
    )


def item_result(line: Mapping[str, Any]) -> ItemResult:
    """One line of a results file as the answer its request would have had live."""
    custom_id = str(line.get("custom_id"))
    result = line.get("result") or {}
    kind = result.get("type")
    if kind == "succeeded":
        return ItemResult(custom_id, 200, body=result.get("message"))
    if kind == "errored":
        error = result.get("error") or {}
        inner = error.get("error") if error.get("type") == "error" else error
        inner = inner if isinstance(inner, dict) else {}
        name = str(inner.get("type") or "api_error")
        message = " ".join(str(inner.get("message") or "").split())[:300]
        return ItemResult(
            custom_id,
            ERROR_STATUS.get(name, 500),
            body={"type": "error", "error": {"type": name, "message": message}},
            error=f"{name}: {message}" if message else name,
        )
    why = _NOT_RUN.get(str(kind), f"no result (type {kind!r})")
    return ItemResult(custom_id, None, error=why)


class AnthropicBatches:
    """The Message Batches endpoints under one API root."""

    provider = "anthropic"
    max_requests = 100_000
    max_bytes = 256_000_000

    def __init__(
        self, root: str, headers: Mapping[str, str], *, endpoint: str, timeout: float
    ) -> None:
        """``root``: the API URL requests' paths are appended to (its query kept after
        them); ``headers``: the backend's (version, key); ``endpoint``: the root as shown."""
        self._root = root
        self._headers = dict(headers)
        self.endpoint = endpoint
        self._timeout = timeout
        self._session: Any = None

    def size(self, item: Item) -> int:
        return len(_encode({"custom_id": item.custom_id, "params": item.body})) + 1

    def _client(self) -> Any:
        import aiohttp

        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._session._loop is not loop:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=self._timeout, sock_read=self._timeout
                ),
                headers={"Content-Type": "application/json", **self._headers},
            )
        return self._session

    async def _call(self, method: str, url: str, what: str, body: Any = None) -> bytes:
        """The answer's body, or a one-line BackendError saying what failed."""
        import aiohttp

        where = f"{what} at {self.endpoint}"
        data = None if body is None else _encode(body)
        try:
            async with self._client().request(method, url, data=data) as resp:
                raw: bytes = await resp.read()
                if resp.status >= 400:
                    raise _failure(resp.status, raw, resp.headers, where)
                return raw
        except aiohttp.ClientConnectorError as e:
            why = f"{type(e).__name__}: {e.strerror or e.os_error or 'no answer'}"
            raise BackendUnavailable(f"{where}: cannot reach the server ({why})") from e
        except asyncio.TimeoutError as e:
            raise RetryableBackendError(f"{where}: timed out") from e
        except aiohttp.ClientError as e:
            raise RetryableBackendError(f"{where}: connection dropped ({type(e).__name__})") from e

    async def _json(self, method: str, url: str, what: str, body: Any = None) -> Any:
        raw = await self._call(method, url, what, body)
        try:
            return _decode(raw)
        except ValueError as e:
            raise RetryableBackendError(f"{what} at {self.endpoint}: not JSON") from e

    async def submit(self, items: Sequence[Item]) -> str:
        requests = [{"custom_id": i.custom_id, "params": i.body} for i in items]
        url = _at(self._root, "/messages/batches")
        what = f"creating a batch of {len(items)}"
        return (await self._state("POST", url, what, {"requests": requests})).id

    async def state(self, batch_id: str) -> BatchState:
        url = _at(self._root, f"/messages/batches/{batch_id}")
        return await self._state("GET", url, f"batch {batch_id}")

    async def cancel(self, batch_id: str) -> BatchState:
        url = _at(self._root, f"/messages/batches/{batch_id}/cancel")
        return await self._state("POST", url, f"cancelling batch {batch_id}")

    async def _state(self, method: str, url: str, what: str, body: Any = None) -> BatchState:
        return _state(await self._json(method, url, what, body), f"{what} at {self.endpoint}")

    async def results(self, state: BatchState) -> list[ItemResult]:
        """Every result in the batch's results file. Its ``results_url`` is used when it is
        on this API's host (with the root's query string); the key is sent nowhere else."""
        url = _at(self._root, f"/messages/batches/{state.id}/results")
        given = state.extra.get("results_url")
        if isinstance(given, str) and _same_origin(given, self._root):
            parts = urlsplit(given)
            query = urlsplit(self._root).query or parts.query
            url = urlunsplit((parts.scheme, parts.netloc, parts.path, query, ""))
        what = f"results of batch {state.id}"
        raw = await self._call("GET", url, what)
        found = []
        for number, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                data = _decode(line)
            except ValueError as e:
                raise RetryableBackendError(
                    f"{what} at {self.endpoint}: line {number} is not JSON"
                ) from e
            if not isinstance(data, dict) or "custom_id" not in data:
                raise RetryableBackendError(
                    f"{what} at {self.endpoint}: line {number} has no custom_id"
                )
            found.append(item_result(data))
        return found

    async def aclose(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()


def _failure(status: int, raw: bytes, headers: Mapping[str, str], where: str) -> BackendError:
    detail = f"{where}: HTTP {status}: {_server_message(raw)}"
    if status in (401, 403):
        return BackendFatalError(
            f"{where}: HTTP {status}: authentication failed (check ANTHROPIC_API_KEY)"
        )
    if status in (408, 409, 425, 429) or status >= 500:
        return RetryableBackendError(detail, retry_after=_retry_after(headers))
    if status == 404 and where.startswith(("batch ", "cancelling batch", "results of batch")):
        return BatchNotFound(detail)
    return BackendError(detail)
