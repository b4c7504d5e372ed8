"""The core every engine runs records through: a stage's work function over a stream of
records with a bounded number in flight, each result handed on as it finishes."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

from pydantic import BaseModel

from charter.budget import BudgetExceeded
from charter.errors import (
    BackendFatalError,
    BackendUnavailable,
    CharterError,
    ConfigError,
    InputError,
)

R = TypeVar("R")


def is_fatal(e: BaseException) -> bool:
    """Errors that would fail every remaining record stop the run instead."""
    if isinstance(
        e, (BackendFatalError, BackendUnavailable, ConfigError, InputError, BudgetExceeded)
    ):
        return True
    return not isinstance(e, CharterError)


async def run_window(
    items: Iterator[tuple[R, str]],
    work: Callable[[R], Awaitable[BaseModel]],
    window: int,
    done: Callable[[R, str, BaseModel | BaseException], None],
) -> None:
    """Run ``work`` over ``(record, input hash)`` items, at most ``window`` at a time, and
    call ``done(record, digest, result or error)`` for each in the order they finish.

    A fatal error (``is_fatal``) stops the run: the others that finished with it are handed
    on, then it is raised. An InputError from ``items`` (a bad input row) is raised after
    everything in flight has finished. A request refused by --max-cost (BudgetExceeded)
    stops the run too, once what is in flight has finished: their requests were paid for
    within the cap, so their records are written (or their own requests refused). Whatever
    is still in flight on the way out is cancelled."""
    window = max(1, window)
    in_flight: dict[asyncio.Future[BaseModel], tuple[R, str]] = {}
    # Finished tasks, as their done-callbacks report them: cheaper than asyncio.wait over
    # the whole window each time one finishes (it re-registers a callback on every task).
    finished: deque[asyncio.Future[BaseModel]] = deque()
    wake = asyncio.Event()
    bad_input: InputError | None = None
    over_budget: BudgetExceeded | None = None

    def on_done(task: asyncio.Future[BaseModel]) -> None:
        finished.append(task)
        wake.set()

    async def drain() -> None:
        nonlocal over_budget
        while not finished:
            wake.clear()
            await wake.wait()
        fatal: BaseException | None = None
        while finished:
            finished_task = finished.popleft()
            record, digest = in_flight.pop(finished_task)
            if finished_task.cancelled():  # by the work itself: that record failed, not the run
                exc: BaseException | None = CharterError("the work on this record was cancelled")
            else:
                exc = finished_task.exception()
            if isinstance(exc, BudgetExceeded):
                over_budget = over_budget or exc  # finish what is in flight, then stop
                continue
            if exc is not None and is_fatal(exc):
                fatal = fatal or exc  # hand on what else finished, then stop
                continue
            done(record, digest, finished_task.result() if exc is None else exc)
        if fatal is not None:
            raise fatal

    try:
        while over_budget is None:
            try:
                record, digest = next(items)
            except StopIteration:
                break
            except InputError as e:
                bad_input = e  # finish what is in flight, then report the bad row
                break
            task: asyncio.Future[BaseModel] = asyncio.ensure_future(work(record))
            in_flight[task] = (record, digest)
            task.add_done_callback(on_done)
            if len(in_flight) >= window:
                await drain()
        while in_flight:
            await drain()
        if over_budget is not None:
            raise over_budget
        if bad_input is not None:
            raise bad_input
    finally:
        for task in in_flight:
            task.cancel()
        if in_flight:
            await asyncio.gather(*in_flight, return_exceptions=True)
