"""What charter needs of a provider's batch API: submit a file of requests, ask how it is
doing, read its results, cancel it. Backends that have one return it from ``batch_api()``
(``OpenAIBatches`` for ``openai/``, ``AnthropicBatches`` for ``anthropic/``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from charter.errors import BackendFatalError


@dataclass(frozen=True)
class Item:
    """One request of a batch: the body the backend would POST live, under its id."""

    custom_id: str
    """The request's key (a hash of what is sent): the same request always has the same id,
    which is how a re-run finds it in a batch it already submitted."""
    body: dict[str, Any]


@dataclass(frozen=True)
class ItemResult:
    """How one request of a batch ended."""

    custom_id: str
    status: int | None
    """The HTTP status the request would have had live (200 for success); None when it never
    ran: expired, cancelled, or missing from the results."""
    body: dict[str, Any] | None = None
    """The response body, as the live endpoint returns it (an error body for status >= 400)."""
    error: str | None = None
    """Why it failed, in one line (None on success)."""


class BatchNotFound(BackendFatalError):
    """The provider does not know the batch (HTTP 404): expired and deleted, or another
    account or endpoint. Its requests were never answered here: a new batch asks them."""


DONE_STATES = frozenset({"completed", "ended", "failed", "expired", "cancelled", "canceled"})
"""Provider batch states after which nothing changes (OpenAI's and Anthropic's words)."""


@dataclass(frozen=True)
class BatchState:
    """A submitted batch as its provider describes it."""

    id: str
    status: str
    """The provider's own word (validating, in_progress, finalizing, completed, expired,
    cancelling, cancelled, failed; Anthropic: in_progress, canceling, ended)."""
    total: int = 0
    completed: int = 0
    """Requests that succeeded so far."""
    failed: int = 0
    """Requests that failed so far (errors, and once done, expired or cancelled ones)."""
    detail: str | None = None
    """Why a whole batch failed (validation errors), when the provider says."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Provider fields charter keeps for reading results (output file ids, a results URL)."""

    @property
    def done(self) -> bool:
        return self.status in DONE_STATES


class BatchAPI(Protocol):
    """One provider's batch endpoints, reached with the backend's URL and credentials."""

    provider: str
    """``openai`` or ``anthropic``: recorded with each batch."""
    endpoint: str
    """Where the batches live (the base URL as shown, no credentials): a re-run attaches
    only to batches of the same endpoint."""
    max_requests: int
    """Requests one batch may hold (OpenAI 50,000; Anthropic 100,000)."""
    max_bytes: int
    """Bytes one batch may hold (OpenAI: 200 MB a file; Anthropic: 256 MB a batch)."""

    def size(self, item: Item) -> int:
        """Bytes ``item`` adds to a batch (its line in the submitted file)."""
        ...

    async def submit(self, items: Sequence[Item]) -> str:
        """Send ``items`` as one batch; its id."""
        ...

    async def state(self, batch_id: str) -> BatchState:
        """How the batch is doing now."""
        ...

    async def results(self, state: BatchState) -> list[ItemResult]:
        """Every request's result of a finished batch (``state.done``): successes, errors,
        and the ones that never ran (expired, cancelled) with ``status`` None."""
        ...

    async def cancel(self, batch_id: str) -> BatchState:
        """Ask the provider to cancel the batch; its state after asking."""
        ...

    async def aclose(self) -> None: ...
