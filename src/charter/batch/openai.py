"""OpenAI's batch format, which OpenAI serves and so do Azure, Groq, Together, Mistral and
others: the requests as a JSONL file uploaded to ``/files`` (one line each, ``{"custom_id",
"method", "url", "body"}``), a batch made of it at ``/batches``, its results read back as
files (``output_file_id``, ``error_file_id``)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from charter.batch.api import BatchNotFound, BatchState, Item, ItemResult
from charter.errors import BackendError, BackendFatalError, RetryableBackendError

MAX_REQUESTS = 50_000
"""Requests one OpenAI batch file may hold."""
MAX_BYTES = 200 * 1024 * 1024
"""Bytes one OpenAI batch file may hold."""


class OpenAIBatches:
    """The batch endpoints beside a chat-completions endpoint."""

    provider = "openai"
    max_requests = MAX_REQUESTS
    max_bytes = MAX_BYTES

    def __init__(self, name: str, url: str, headers: Mapping[str, str] | None) -> None:
        """``name``: the endpoint as shown (no credentials); ``url``: its chat-completions (or
        completions) URL, query string included; ``headers``: its authorization."""
        parts = urlsplit(url)
        kind = "chat/completions" if parts.path.endswith("/chat/completions") else "completions"
        base = parts.path[: -len("/" + kind)]
        self.endpoint = name
        self.kind = "/v1/" + kind
        """The ``url`` of each request line, as the batch API wants it."""
        self._root = (parts.scheme, parts.netloc, base, parts.query)
        self._headers = dict(headers or {})
        self._session: Any = None

    def _url(self, path: str) -> str:
        scheme, netloc, base, query = self._root
        return urlunsplit((scheme, netloc, base + path, query, ""))

    def _line(self, item: Item) -> bytes:
        line = {"custom_id": item.custom_id, "method": "POST", "url": self.kind, "body": item.body}
        return json.dumps(line, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"

    def size(self, item: Item) -> int:
        return len(self._line(item))

    def _client(self) -> Any:
        import aiohttp

        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=600, sock_connect=60)
            )
        return self._session

    async def _request(self, method: str, path: str, **kwargs: Any) -> bytes:
        import aiohttp

        where = f"{self.endpoint}{path}"
        try:
            async with self._client().request(
                method, self._url(path), headers=self._headers, **kwargs
            ) as resp:
                raw: bytes = await resp.read()
                if resp.status >= 400:
                    raise _status_error(resp.status, raw, where)
                return raw
        except aiohttp.ClientError as e:
            raise RetryableBackendError(f"cannot reach {where} ({type(e).__name__})") from e

    async def _json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        raw = await self._request(method, path, **kwargs)
        try:
            data = json.loads(raw)
        except ValueError as e:
            raise RetryableBackendError(f"{self.endpoint}{path} answered with no JSON") from e
        if not isinstance(data, dict):
            raise RetryableBackendError(f"{self.endpoint}{path} answered with no JSON object")
        return data

    async def submit(self, items: Sequence[Item]) -> str:
        import aiohttp

        form = aiohttp.FormData()
        form.add_field("purpose", "batch")
        blob = b"".join(self._line(item) for item in items)
        form.add_field(
            "file", blob, filename="charter-batch.jsonl", content_type="application/jsonl"
        )
        uploaded = await self._json("POST", "/files", data=form)
        file_id = uploaded.get("id")
        if not isinstance(file_id, str):
            raise BackendError(f"{self.endpoint}/files answered with no file id")
        created = await self._json(
            "POST",
            "/batches",
            json={
                "input_file_id": file_id,
                "endpoint": self.kind,
                "completion_window": "24h",
                "metadata": {"made_by": "charter"},
            },
        )
        batch_id = created.get("id")
        if not isinstance(batch_id, str):
            raise BackendError(f"{self.endpoint}/batches answered with no batch id")
        return batch_id

    async def state(self, batch_id: str) -> BatchState:
        return _state(await self._json("GET", f"/batches/{batch_id}"))

    async def cancel(self, batch_id: str) -> BatchState:
        return _state(await self._json("POST", f"/batches/{batch_id}/cancel"))

    async def results(self, state: BatchState) -> list[ItemResult]:
        results: list[ItemResult] = []
        for key in ("output_file_id", "error_file_id"):
            file_id = state.extra.get(key)
            if isinstance(file_id, str) and file_id:
                raw = await self._request("GET", f"/files/{file_id}/content")
                results.extend(_read_results(raw))
        return results

    async def aclose(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()


def _state(data: Mapping[str, Any]) -> BatchState:
    counts = data.get("request_counts") or {}
    errors = (data.get("errors") or {}).get("data") or []
    detail = "; ".join(str(e.get("message", e)) for e in errors[:3]) or None
    return BatchState(
        id=str(data.get("id")),
        status=str(data.get("status") or "unknown"),
        total=int(counts.get("total") or 0),
        completed=int(counts.get("completed") or 0),
        failed=int(counts.get("failed") or 0),
        detail=detail,
        extra={k: data.get(k) for k in ("output_file_id", "error_file_id")},
    )


def _read_results(raw: bytes) -> list[ItemResult]:
    """Lines ``{"custom_id", "response": {"status_code", "body"}, "error"}``."""
    results = []
    for line in raw.splitlines():
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            custom_id = str(entry["custom_id"])
        except (ValueError, KeyError, TypeError):
            continue  # a line charter cannot place: its request is retried as unanswered
        response = entry.get("response") or {}
        error = entry.get("error") or {}
        status = response.get("status_code")
        body = response.get("body")
        if isinstance(status, int) and isinstance(body, dict):
            message = None if status < 400 else _message(body)
            results.append(ItemResult(custom_id, status, body, message))
        else:  # never ran: expired, cancelled, or failed before reaching the model
            code = error.get("code") or "not answered"
            said = error.get("message")
            results.append(ItemResult(custom_id, None, None, f"{code}: {said}" if said else code))
    return results


def _message(body: Mapping[str, Any]) -> str:
    err = body.get("error")
    msg = err.get("message", err) if isinstance(err, dict) else err or body
    return " ".join(str(msg).split())[:300]


def _status_error(status: int, raw: bytes, where: str) -> BackendError:
    try:
        said = _message(json.loads(raw))
    except (ValueError, AttributeError):
        said = " ".join(raw.decode("utf-8", "replace").split())[:300]
    detail = f"HTTP {status} from {where}: {said}"
    if status in (401, 403):
        return BackendFatalError(f"HTTP {status} from {where}: authentication failed")
    if status == 404:
        if "/batches/" in where:  # a batch it does not know
            return BatchNotFound(detail)
        return BackendFatalError(f"{detail} (does this server have the batch API?)")
    if status in (408, 409, 425, 429) or status >= 500:
        return RetryableBackendError(detail)
    return BackendError(detail)
