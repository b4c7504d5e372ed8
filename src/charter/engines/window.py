"""The core every engine runs records through: a stage's work function over a stream of
records with a bounded number in flight, each result handed on as it finishes."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

from pydantic import BaseModel

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
    if isinstance(e, (BackendFatalError, BackendUnavailable, ConfigError, InputError)):
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
    everything in flight has finished. Whatever is still in flight on the way out is
    cancelled."""
    window = max(1, window)
    in_flight: dict[asyncio.Future[BaseModel], tuple[R, str]] = {}
    bad_input: InputError | None = None

    async def drain() -> None:
        finished, _ = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
        fatal: BaseException | None = None
        for task in finished:
            record, digest = in_flight.pop(task)
            exc = task.exception()
            if exc is not None and is_fatal(exc):
                fatal = fatal or exc  # hand on what else finished, then stop
                continue
            done(record, digest, task.result() if exc is None else exc)
        if fatal is not None:
            raise fatal

    try:
        while True:
            try:
                record, digest = next(items)
            except StopIteration:
                break
            except InputError as e:
                bad_input = e  # finish what is in flight, then report the bad row
                break
            in_flight[asyncio.ensure_future(work(record))] = (record, digest)
            if len(in_flight) >= window:
                await drain()
        while in_flight:
            await drain()
        if bad_input is not None:
            raise bad_input
    finally:
        for task in in_flight:
            task.cancel()
        if in_flight:
            await asyncio.gather(*in_flight, return_exceptions=True)
