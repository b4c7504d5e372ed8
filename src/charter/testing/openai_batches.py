"""OpenAI's batch endpoints on the fake server: ``POST /v1/files`` (upload), ``GET
/v1/files/{id}/content``, ``POST /v1/batches`` (create), ``GET /v1/batches/{id}``, ``POST
/v1/batches/{id}/cancel``. A batch ends ``delay`` seconds after it was made; its requests are
answered then by the server's own chat handler. Tests can make items fail, batches expire,
and count every request ever submitted, to prove that none was submitted twice."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from charter.testing.server import FakeOpenAIServer


@dataclass
class _Batch:
    id: str
    input_file_id: str
    endpoint: str
    created: float
    lines: list[dict[str, Any]]
    status: str = "validating"
    output_file_id: str | None = None
    error_file_id: str | None = None
    completed: int = 0
    failed: int = 0
    metadata: dict[str, Any] = field(default_factory=dict)


class FakeBatches:
    """The batch API of one FakeOpenAIServer (``server.batches``)."""

    def __init__(self, server: FakeOpenAIServer) -> None:
        self.server = server
        self.delay = 0.0
        """Seconds from a batch's creation until it ends."""
        self.item_status: Callable[[dict[str, Any]], int | None] | None = None
        """An HTTP status to answer an item's body with instead of answering it (e.g. 500);
        None: answer it."""
        self.expire_after: int | None = None
        """Batches expire once this many of their items have been answered (0: none is);
        the rest go to the error file as ``batch_expired``."""
        self.submitted: Counter[str] = Counter()
        """custom_id -> times it was submitted, over every batch."""
        self.created = 0
        """Batches made."""
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, _Batch] = {}

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/files", self._upload)
        app.router.add_get("/v1/files/{id}/content", self._content)
        app.router.add_post("/v1/batches", self._create)
        app.router.add_get("/v1/batches/{id}", self._retrieve)
        app.router.add_post("/v1/batches/{id}/cancel", self._cancel)

    def _file(self, blob: bytes) -> str:
        file_id = f"file-{len(self.files) + 1}"
        self.files[file_id] = blob
        return file_id

    async def _upload(self, request: web.Request) -> web.Response:
        denied = self.server._unauthorised(request)
        if denied is not None:
            return denied
        form = await request.post()
        upload = form.get("file")
        if form.get("purpose") != "batch" or not isinstance(upload, web.FileField):
            return _error(400, "a file with purpose=batch is required")
        blob = upload.file.read()
        return web.json_response({"id": self._file(blob), "object": "file", "purpose": "batch"})

    async def _content(self, request: web.Request) -> web.Response:
        denied = self.server._unauthorised(request)
        if denied is not None:
            return denied
        blob = self.files.get(request.match_info["id"])
        if blob is None:
            return _error(404, "no such file")
        return web.Response(body=blob, content_type="application/octet-stream")

    async def _create(self, request: web.Request) -> web.Response:
        denied = self.server._unauthorised(request)
        if denied is not None:
            return denied
        body = await request.json()
        blob = self.files.get(body.get("input_file_id", ""))
        if blob is None:
            return _error(400, "input_file_id names no uploaded file")
        lines = [json.loads(line) for line in blob.splitlines() if line.strip()]
        for line in lines:
            if line.get("url") != body.get("endpoint") or line.get("method") != "POST":
                return _error(400, f"line {line.get('custom_id')}: url/method do not match")
        ids = [line["custom_id"] for line in lines]
        if len(set(ids)) != len(ids):
            return _error(400, "custom_id values must be unique within a batch")
        self.submitted.update(ids)
        self.created += 1
        batch = _Batch(
            id=f"batch_{self.created}",
            input_file_id=body["input_file_id"],
            endpoint=body["endpoint"],
            created=time.monotonic(),
            lines=lines,
            metadata=body.get("metadata") or {},
        )
        self.batches[batch.id] = batch
        return web.json_response(self._shown(batch))

    def _found(self, request: web.Request) -> _Batch | web.Response:
        """The batch a request names, or the answer refusing it (key, unknown id)."""
        denied = self.server._unauthorised(request)
        if denied is not None:
            return denied
        return self.batches.get(request.match_info["id"]) or _error(404, "no such batch")

    async def _retrieve(self, request: web.Request) -> web.Response:
        batch = self._found(request)
        if isinstance(batch, web.Response):
            return batch
        await self._advance(batch)
        return web.json_response(self._shown(batch))

    async def _cancel(self, request: web.Request) -> web.Response:
        batch = self._found(request)
        if isinstance(batch, web.Response):
            return batch
        if batch.status in ("validating", "in_progress"):
            batch.status = "cancelling"
        return web.json_response(self._shown(batch))

    async def _advance(self, batch: _Batch) -> None:
        if batch.status == "cancelling":
            await self._finish(batch, answer=0, status="cancelled", code="batch_cancelled")
        elif batch.status in ("validating", "in_progress"):
            if time.monotonic() - batch.created < self.delay:
                batch.status = "in_progress"
                return
            if self.expire_after is not None:
                await self._finish(batch, self.expire_after, "expired", "batch_expired")
            else:
                await self._finish(batch, len(batch.lines), "completed", "")

    async def _finish(self, batch: _Batch, answer: int, status: str, code: str) -> None:
        out: list[bytes] = []
        errors: list[bytes] = []
        for n, line in enumerate(batch.lines):
            cid = line["custom_id"]
            if n >= answer:
                entry = {
                    "id": f"req_{n}",
                    "custom_id": cid,
                    "response": None,
                    "error": {"code": code, "message": f"not answered: the batch is {status}"},
                }
                errors.append(_dump(entry))
                batch.failed += 1
                continue
            fault = self.item_status(line["body"]) if self.item_status else None
            if fault is not None:
                body: dict[str, Any] = {"error": {"message": "injected item fault", "code": fault}}
                answered = fault
            else:
                resp = await self.server._answer(
                    line["body"], completions=line["url"].endswith("/v1/completions")
                )
                answered, body = resp.status, json.loads(resp.body)  # type: ignore[arg-type]
            entry = {
                "id": f"req_{n}",
                "custom_id": cid,
                "response": {"status_code": answered, "request_id": f"r{n}", "body": body},
                "error": None,
            }
            if answered < 400:
                out.append(_dump(entry))
                batch.completed += 1
            else:
                errors.append(_dump(entry))
                batch.failed += 1
        if out:
            batch.output_file_id = self._file(b"".join(out))
        if errors:
            batch.error_file_id = self._file(b"".join(errors))
        batch.status = status

    def _shown(self, batch: _Batch) -> dict[str, Any]:
        return {
            "id": batch.id,
            "object": "batch",
            "endpoint": batch.endpoint,
            "input_file_id": batch.input_file_id,
            "completion_window": "24h",
            "status": batch.status,
            "output_file_id": batch.output_file_id,
            "error_file_id": batch.error_file_id,
            "request_counts": {
                "total": len(batch.lines),
                "completed": batch.completed,
                "failed": batch.failed,
            },
            "metadata": batch.metadata,
        }


def _dump(entry: dict[str, Any]) -> bytes:
    return json.dumps(entry).encode() + b"\n"


def _error(status: int, message: str) -> web.Response:
    return web.json_response(
        {"error": {"message": message, "type": "invalid_request_error"}}, status=status
    )
