"""Several endpoints of one deployment (``--base-url http://a/v1,http://b/v1``).

:class:`EndpointPool` is the request limit of a model whose backend has several endpoints:
``async with pool:`` waits, like a semaphore, for a slot on an endpoint with fewer than
``per_endpoint`` requests in flight, takes the one with the fewest, and publishes it in a
context variable for the duration. The backend reads it (:func:`current`) to choose the URL
and reports back how the endpoint answered. An endpoint that refuses a connection, or fails
FAILURES_TO_COOL times in a row (5xx, dropped connections), is set aside for COOL_DOWN seconds;
endpoints set aside take requests only while none is healthy. After the cool-down it is tried
again with one request at a time until one is answered, so a server still down costs one
retry per cool-down, not one per slot. An endpoint whose last connection was refused counts as
unreachable until it answers again: when every endpoint is, the request fails with all their
errors (the backend raises BackendUnavailable, which stops a run once retries are spent) instead
of bouncing between endpoints whose cool-downs end at different times.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Sequence
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from typing import Literal

log = logging.getLogger("charter")

COOL_DOWN = 10.0
"""Seconds an endpoint is set aside after it refuses a connection or keeps failing."""
FAILURES_TO_COOL = 3
"""5xx answers or dropped connections in a row that set an endpoint aside."""


@dataclass(eq=False)
class Endpoint:
    """One endpoint's load and health, shared by the models that use the pool."""

    name: str
    """The URL as shown (no credentials, no query): how backends know the endpoint."""
    in_flight: int = 0
    failures: int = 0
    """Failures in a row (a refused connection counts as FAILURES_TO_COOL); kept through a
    cool-down, so one more failure after it sets the endpoint aside again, and one answer
    clears it."""
    cool_until: float = 0.0
    picked: int = 0
    """When it was last chosen (a counter): ties go to the one chosen longest ago."""
    unreachable: str | None = None
    """Why its last connection was refused; None once it answers (or fails after answering
    a connection), and before it is first tried."""

    def cooling(self, now: float) -> bool:
        return now < self.cool_until

    def free(self, per_endpoint: int) -> bool:
        """Whether it takes another request: one at a time until it answers after failing."""
        return self.in_flight < (per_endpoint if self.failures < FAILURES_TO_COOL else 1)


@dataclass(eq=False)
class Lease:
    """The endpoint a request holds, as the backend sees it."""

    pool: EndpointPool
    endpoint: Endpoint
    token: Token[Lease | None] | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.endpoint.name

    def answered(self) -> None:
        """The endpoint answered (whatever it said, short of a 5xx)."""
        self.endpoint.failures = 0
        self.endpoint.unreachable = None

    def failed(self, why: str) -> None:
        """A 5xx or a dropped connection: the server was reached, and failed."""
        self.endpoint.failures += 1
        self.endpoint.unreachable = None
        if self.endpoint.failures >= FAILURES_TO_COOL:
            self.pool.set_aside(self.endpoint, f"{self.endpoint.failures} failures in a row: {why}")

    def refused(self, why: str) -> Refusal:
        """The connection was refused: set the endpoint aside, and say what becomes of the
        request, which never reached a server: ``resend`` at once to another endpoint that is
        healthy and not known to be unreachable; ``wait`` (back off and retry) when the others
        are set aside for failing; ``unreachable`` when every endpoint refused its last
        connection (:meth:`EndpointPool.unreachable` tells why, for each)."""
        self.endpoint.failures = max(self.endpoint.failures, FAILURES_TO_COOL)
        self.endpoint.unreachable = why
        self.pool.set_aside(self.endpoint, why)
        if self.pool.unreachable():
            return "unreachable"
        return "resend" if self.pool.healthy(besides=self.endpoint) else "wait"


Refusal = Literal["resend", "wait", "unreachable"]
"""What becomes of a request whose connection was refused (:meth:`Lease.refused`)."""


_current: ContextVar[Lease | None] = ContextVar("charter_endpoint", default=None)


def current() -> Lease | None:
    """The endpoint the running request holds, if it runs inside an :class:`EndpointPool`."""
    return _current.get()


class EndpointPool:
    """A request limit over several endpoints: ``per_endpoint`` requests in flight on each."""

    def __init__(self, names: Sequence[str], per_endpoint: int) -> None:
        self.endpoints = [Endpoint(name) for name in names]
        self.per_endpoint = max(1, per_endpoint)
        self._waiters: deque[asyncio.Future[Endpoint]] = deque()
        self._picks = 0

    def healthy(self, besides: Endpoint | None = None) -> bool:
        """Whether an endpoint (other than ``besides``) is neither set aside nor known to
        refuse connections."""
        now = time.monotonic()
        return any(
            not e.cooling(now) and e.unreachable is None for e in self.endpoints if e is not besides
        )

    def unreachable(self) -> str | None:
        """When every endpoint refused its last connection: each with why, in one line;
        else None."""
        if any(e.unreachable is None for e in self.endpoints):
            return None
        return "; ".join(f"{e.name} ({e.unreachable})" for e in self.endpoints)

    def set_aside(self, endpoint: Endpoint, why: str) -> None:
        now = time.monotonic()
        if not endpoint.cooling(now):
            log.warning(
                "%s set aside for %g s (%s); %s",
                endpoint.name,
                COOL_DOWN,
                why,
                "its requests go to the other endpoints"
                if self.healthy(besides=endpoint)
                else "no other endpoint is healthy",
            )
        endpoint.cool_until = now + COOL_DOWN
        self._dispatch()  # with none healthy left, waiters may now take one set aside

    def _pick(self) -> Endpoint | None:
        now = time.monotonic()
        healthy = [e for e in self.endpoints if not e.cooling(now)]
        free = [e for e in healthy or self.endpoints if e.free(self.per_endpoint)]
        if not free:
            return None
        chosen = min(free, key=lambda e: (e.in_flight, e.picked))
        chosen.in_flight += 1
        self._picks += 1
        chosen.picked = self._picks
        return chosen

    async def acquire(self) -> Endpoint:
        if not self._waiters:
            chosen = self._pick()
            if chosen is not None:
                return chosen
        waiter: asyncio.Future[Endpoint] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._dispatch()
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release(waiter.result())  # handed a slot just as it was cancelled
            raise

    def release(self, endpoint: Endpoint) -> None:
        endpoint.in_flight -= 1
        self._dispatch()

    def _dispatch(self) -> None:
        """Hand free slots to the waiters, first come first served."""
        while self._waiters:
            if self._waiters[0].done():  # cancelled while waiting
                self._waiters.popleft()
                continue
            chosen = self._pick()
            if chosen is None:
                return
            self._waiters.popleft().set_result(chosen)

    async def __aenter__(self) -> Lease:
        lease = Lease(self, await self.acquire())
        lease.token = _current.set(lease)
        return lease

    async def __aexit__(self, *exc: object) -> None:
        lease = _current.get()
        assert lease is not None and lease.token is not None, "left a pool never entered"
        _current.reset(lease.token)
        self.release(lease.endpoint)


Limit = asyncio.Semaphore | EndpointPool
"""What bounds a model's requests in flight: one semaphore, or a pool over several endpoints."""
