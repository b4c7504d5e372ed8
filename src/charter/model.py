"""The one wrapper stages call. It owns, for every backend: retries with exponential
backoff and jitter (honouring ``Retry-After``), a per-request timeout, bounded concurrency,
the request cache, and usage and cost accounting."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
import sys
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

from pydantic import BaseModel
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    wait_exponential_jitter,
)

from charter import endpoints
from charter.backends import Backend, Capabilities, create_backend
from charter.budget import Budget, estimate_prompt_tokens
from charter.cache import RequestCache, cache_key
from charter.endpoints import EndpointPool, Limit
from charter.errors import (
    BackendError,
    ConfigError,
    ContinueRefused,
    LogprobsRefused,
    LogprobsUnavailable,
    OptionsNotFound,
    RetryableBackendError,
)
from charter.prices import Prices
from charter.types import GenerateConfig, Generation, Message, OptionScores, Reward, Usage

log = logging.getLogger("charter")
T = TypeVar("T", Generation, OptionScores, Reward)

NO_LOGPROBS_AFTER = 3
"""Consecutive replies without log-probabilities, before any with them, after which a server
is taken to have none and callers fall back. Fewer are treated as glitches and asked again."""

FALLBACKS = (LogprobsUnavailable, ContinueRefused, OptionsNotFound)
"""Failures every caller handles by asking another way (parsed answers, a second turn, the
whole reply of a judge that reasons first): never errors, nor failed requests."""


class _NoLogprobsYet(RetryableBackendError):
    """A reply without log-probabilities while undecided: asked again, outside the retry
    budget (at most NO_LOGPROBS_AFTER - 1 of them in a model's life)."""


class _Decided(LogprobsUnavailable):
    """Raised before sending once the model has decided the server has no log-probabilities."""


@dataclass(frozen=True)
class RetryPolicy:
    """How transient failures are retried."""

    attempts: int = 6
    """Total tries per request, the first included."""
    initial: float = 1.0
    """First backoff in seconds; doubles each time."""
    max_wait: float = 60.0
    """Cap on any single wait, including a server's Retry-After."""
    jitter: float = 1.0
    """Random seconds added to each backoff, to spread out retry storms."""


_COUNTING: ContextVar[tuple[Usage, ...]] = ContextVar("charter_usage", default=())


@contextmanager
def counting() -> Iterator[Usage]:
    """A Usage that every model answer inside the block is counted into, answers to tasks
    started inside it included (they copy the context): what a record spent is gathered where
    the requests are made, never added up by hand at each call. Blocks nest; an answer counts
    in each one open around it."""
    usage = Usage()
    token = _COUNTING.set((*_COUNTING.get(), usage))
    try:
        yield usage
    finally:
        _COUNTING.reset(token)


Rec = TypeVar("Rec", bound=BaseModel)
P = ParamSpec("P")


def with_usage(work: Callable[P, Awaitable[Rec]]) -> Callable[P, Awaitable[Rec]]:
    """``work`` returning its record with ``usage`` set to what every model answered while
    it ran (``counting``): a work function never adds up its requests by hand, so none is
    missed."""

    @functools.wraps(work)
    async def counted(*args: P.args, **kwargs: P.kwargs) -> Rec:
        with counting() as usage:
            record = await work(*args, **kwargs)
        return record.model_copy(update={"usage": usage})

    return counted


def _retryable(e: BaseException) -> bool:
    return isinstance(e, BackendError) and e.retryable


class Model:
    """A backend plus everything every backend needs around it."""

    def __init__(
        self,
        backend: Backend,
        *,
        concurrency: int = 16,
        timeout: float = 120.0,
        retry: RetryPolicy | None = None,
        cache: RequestCache | None = None,
        prices: Prices | None = None,
        limit: Limit | None = None,
        budget: Budget | None = None,
    ) -> None:
        """``limit``: a request limit shared with other models on the same server(s) (so a
        policy and its critic together keep to one ``--concurrency``); else its own:
        ``concurrency`` requests in flight, on each endpoint when the backend has several
        (``backend.endpoints``), which then go to the endpoint with the fewest in flight.
        ``budget``: the run's --max-cost, which every request reserves its worst case in
        before it is sent (``prices`` needed)."""
        self.backend = backend
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.cache = cache
        self.prices = prices
        self.budget = budget
        if budget is not None and prices is None:
            raise ConfigError(f"--max-cost: no price for {backend.name}")
        self.batched = False
        """Requests go through a provider's batch API, priced at its batch discount (set by
        the batch runner): their usage is counted in ``usage.batch`` too."""
        self.usage = Usage()
        self.retries = 0
        self.errors = 0
        """Requests that failed for good, after retries (falling back to parsed answers is
        not an error)."""
        self.failed = 0
        """Attempts that failed: errors, timeouts, refused connections (each retry counts)."""
        self.discarded = 0
        """Requests answered without what was asked: replies without log-probabilities while
        deciding whether the server has any, a continuation the server refused."""
        self.fallbacks = 0
        """Option requests answered with no option (a judge that reasons before it answers),
        which the caller asks again another way: counted in ``usage`` as the answered requests
        they are, neither failed nor errors."""
        if limit is None:
            names: tuple[str, ...] = getattr(backend, "endpoints", ())
            if len(names) > 1:
                limit = EndpointPool(names, concurrency)
            else:
                limit = asyncio.Semaphore(max(1, concurrency))
        self._sem: Limit = limit
        self._logprobs = backend.capabilities.option_logprobs
        self._logprobs_seen = False
        self._deciding = asyncio.Lock()
        self._logprobs_misses = 0

    @classmethod
    def from_spec(
        cls, spec: str, *, backend_options: dict[str, Any] | None = None, **kwargs: Any
    ) -> Model:
        """The model for ``spec`` (``openai/NAME``, ``hf/PATH``, ``smollm2``, ``mock/NAME``).
        ``backend_options`` go to the backend, which rejects an unknown or ill-typed key with
        a ConfigError; ``kwargs`` configure this wrapper."""
        return cls(create_backend(spec, **(backend_options or {})), **kwargs)

    @property
    def limit(self) -> Limit:
        """The limit on this model's requests in flight (shared when given one)."""
        return self._sem

    @property
    def name(self) -> str:
        return self.backend.name

    @property
    def batching(self) -> bool:
        """Whether requests go through a provider's batch API (``--batch``): the backend's
        ``batcher`` is set (``charter.batch.runner``)."""
        return getattr(self.backend, "batcher", None) is not None

    @property
    def capabilities(self) -> Capabilities:
        """The backend's, less log-probabilities once a server has shown it returns none."""
        reward = bool(getattr(self.backend.capabilities, "reward", False))
        continues = bool(getattr(self.backend.capabilities, "continue_final", False))
        principles = bool(getattr(self.backend.capabilities, "principles", False))
        return Capabilities(
            option_logprobs=self._logprobs,
            reward=reward,
            continue_final=continues,
            principles=principles,
        )

    @property
    def cost(self) -> float | None:
        return self.prices.cost(self.usage) if self.prices else None

    async def generate(
        self,
        messages: Sequence[Message],
        config: GenerateConfig | None = None,
        *,
        token_logprobs: bool = False,
    ) -> Generation:
        """One assistant turn. ``token_logprobs``: with the log-probabilities of its tokens
        (``Generation.tokens``) from a backend that can give them (``generate_logprobs``);
        from any other, the plain generation (``tokens`` None)."""
        config = config or GenerateConfig()
        payload: dict[str, Any] = {"kind": "generate", "config": config.model_dump(mode="json")}
        with_logprobs = getattr(self.backend, "generate_logprobs", None)
        if token_logprobs and with_logprobs is not None and self._logprobs:
            payload["token_logprobs"] = True
            return await self._call(
                payload, messages, Generation, lambda: with_logprobs(messages, config)
            )
        return await self._call(
            payload, messages, Generation, lambda: self.backend.generate(messages, config)
        )

    async def option_logprobs(
        self,
        messages: Sequence[Message],
        options: Sequence[str],
        config: GenerateConfig | None = None,
    ) -> OptionScores:
        """Scores of the options, or LogprobsUnavailable once the server has shown it has no
        log-probabilities (NO_LOGPROBS_AFTER replies in a row without them, none with)."""
        if not self._logprobs:
            raise LogprobsUnavailable(f"{self.name} does not return log-probabilities")
        config = config or GenerateConfig()
        payload = {
            "kind": "options",
            # 2: OptionScores carry the list's floor (a missing option is never 0); entries
            # cached before would replay saturated labels
            "version": 2,
            "options": list(options),
            "config": config.model_dump(mode="json"),
        }

        async def call() -> OptionScores:
            if not self._logprobs:  # decided by a concurrent request meanwhile
                raise _Decided(f"{self.name} does not return log-probabilities")
            try:
                scores = await self.backend.option_logprobs(messages, options, config)
            except LogprobsRefused as e:
                self._no_logprobs(f"it refuses requests for them: {e}")
                raise
            except LogprobsUnavailable as e:
                if self._logprobs_seen:  # it had them before: a glitch, worth retrying
                    raise RetryableBackendError(str(e)) from e
                self._logprobs_misses += 1
                if self._logprobs_misses < NO_LOGPROBS_AFTER:
                    raise _NoLogprobsYet(str(e)) from e
                self._no_logprobs(f"{self._logprobs_misses} consecutive replies had none")
                raise
            self._logprobs_seen = True
            self._logprobs_misses = 0
            return scores

        if not self._logprobs_seen and not self.batching:
            # Until the server has shown it returns log-probabilities, ask one request at a
            # time: "N replies in a row without them" is then N answers in sequence, not one
            # burst of concurrent requests that a glitch hit together. (Not in a batch, where
            # one at a time would make each request a batch of its own.)
            async with self._deciding:
                if not self._logprobs_seen:
                    return await self._call(payload, messages, OptionScores, call)
        return await self._call(payload, messages, OptionScores, call)

    async def reward(
        self, messages: Sequence[Message], response: str, principle: str | None = None
    ) -> Reward:
        """A reward model's score of ``response`` as the assistant's answer to ``messages``
        (backends with ``capabilities.reward``; a ConfigError for any other); a
        principle-conditioned one's (``capabilities.principles``) under ``principle``."""
        score = getattr(self.backend, "reward", None)
        if not self.capabilities.reward or score is None:
            raise ConfigError(f"{self.name} is not a reward model (use rm/FOLDER)")
        payload: dict[str, Any] = {"kind": "reward", "response": response}
        if principle is None:
            return await self._call(payload, messages, Reward, lambda: score(messages, response))
        payload["principle"] = principle
        return await self._call(
            payload, messages, Reward, lambda: score(messages, response, principle=principle)
        )

    def _no_logprobs(self, why: str) -> None:
        """Decide, once, that this server returns no log-probabilities: callers fall back."""
        if self._logprobs:
            self._logprobs = False
            log.warning(
                "%s gives no log-probabilities (%s): judging falls back to parsed answers "
                "(or --votes)",
                self.name,
                why,
            )

    async def _call(
        self,
        payload: dict[str, Any],
        messages: Sequence[Message],
        kind: type[T],
        call: Callable[[], Awaitable[T]],
    ) -> T:
        key = None
        if self.cache is not None:
            payload = {
                **payload,
                "model": self.name,
                # a Message's fields are plain strings: its __dict__ is its model_dump()
                "messages": [m.__dict__ for m in messages],
            }
            server = getattr(self.backend, "server", None)
            if server is not None:  # two servers may serve one model name: keep them apart
                payload["server"] = server
            key = cache_key(payload)
            hit = self.cache.get(key)
            if hit is not None:
                if hit.startswith(f'{{"{_NOT_FOUND}"'):  # answered with no option: again
                    self._count(OptionScores(logprobs={}, cached=True))
                    raise OptionsNotFound(json.loads(hit)[_NOT_FOUND])
                cached = kind.model_validate_json(hit).model_copy(update={"cached": True})
                self._count(cached)
                return cached
        if self.budget is not None:
            config = GenerateConfig.model_validate(payload.get("config") or {})
            asked, response = str(payload["kind"]), str(payload.get("response", ""))
            worst = self.worst_case(messages, config, kind=asked, response=response)
            call = functools.partial(self._within_budget, call, worst)
        try:
            result = await self._with_retries(call)
        except OptionsNotFound as e:
            # Answered, just not with an option: what it cost counts, and the same question
            # gets the same answer from the cache (a resumed run need not reach the server).
            self._count(
                OptionScores(logprobs={}, requests=e.requests, prompt_tokens=e.prompt_tokens)
            )
            if self.cache is not None and key is not None:
                said = json.dumps({_NOT_FOUND: str(e)}, ensure_ascii=False)
                self.cache.put(key, model=self.name, kind=str(payload["kind"]), value=said)
            raise
        self._count(result)
        if self.cache is not None and key is not None:
            self.cache.put(key, model=self.name, kind=str(payload["kind"]), value=_dump(result))
        return result

    def _count(self, result: Generation | OptionScores | Reward) -> None:
        """Into the model's own usage and every ``counting`` block open around the call,
        and its cost into the budget."""
        self.usage.count(result, batched=self.batched)
        for usage in _COUNTING.get():
            usage.count(result, batched=self.batched)
        if self.budget is not None and self.prices is not None and not result.cached:
            one = Usage()
            one.count(result, batched=self.batched)
            self.budget.spend(self.prices.cost(one), self.name)

    def worst_case(
        self,
        messages: Sequence[Message],
        config: GenerateConfig | None = None,
        *,
        kind: str = "generate",
        response: str = "",
    ) -> float:
        """Dollars one request could cost at most (0 without prices): its prompt estimated
        generously (``charter.budget.estimate_prompt_tokens``) plus ``config.max_tokens`` of
        output, at batch prices when ``batched``. ``kind``: ``generate``; ``options`` (one
        token of output, counted twice: it may ask again for a wider top list); ``reward``
        (``response`` read too, nothing written)."""
        if self.prices is None:
            return 0.0
        prompt = estimate_prompt_tokens(messages)
        output = (config or GenerateConfig()).max_tokens
        if kind == "options":
            output = 1
        elif kind == "reward":
            prompt += estimate_prompt_tokens([Message(role="assistant", content=response)])
            output = 0
        cost = self.prices.request_cost(prompt, output, batched=self.batched)
        return 2 * cost if kind == "options" else cost

    def count(self, result: Generation | OptionScores | Reward) -> None:
        """Account for an answer got without ``generate`` (a batch's results, say): into
        ``usage`` (``usage.batch`` too when ``batched``), every ``counting`` block open
        around the caller, and the budget's spend."""
        self._count(result)

    async def _within_budget(self, call: Callable[[], Awaitable[T]], worst: float) -> T:
        """``call`` with its worst case held in the budget while it is in flight (taken
        under the request limit, right before sending: requests waiting for a slot hold
        nothing); BudgetExceeded, and nothing sent, when it would pass the cap even once the
        requests in flight have answered. The answer
        is counted (``_count``) before anything else runs, so the cost replaces the
        reservation with no gap another request could slip through."""
        assert self.budget is not None
        if not await self.budget.acquire(worst):
            raise self.budget.refuse(self.name, worst)
        try:
            return await call()
        finally:
            self.budget.release(worst)

    async def _with_retries(self, call: Callable[[], Awaitable[T]]) -> T:
        """The call, retried on retryable failures. Its first attempt runs without tenacity:
        nearly every request succeeds at once, and tenacity's bookkeeping on every call was
        about 8 % of the client's CPU at 256 requests in flight (profiled with py-spy). A
        retryable failure hands the request to tenacity with that attempt as its first."""
        try:
            return await self._attempt(call)
        except FALLBACKS:
            raise  # callers fall back: not an error
        except BackendError as e:
            if not e.retryable:
                self.errors += 1
                raise
            first = e
        return await self._retry(call, first)

    async def _attempt(self, call: Callable[[], Awaitable[T]]) -> T:
        """One try under the request limit and the timeout, counted. A request sent through
        a batch (``batching``) waits for its batch instead: neither applies."""
        if self.batching:
            return await self._counted(call())
        async with self._sem:
            try:
                if sys.version_info >= (3, 11):  # no task per request, unlike wait_for
                    async with asyncio.timeout(self.timeout):
                        return await self._counted(call())
                return await asyncio.wait_for(self._counted(call()), timeout=self.timeout)
            except asyncio.TimeoutError as e:
                self.failed += 1
                lease = endpoints.current()
                if lease is not None:  # an endpoint that takes requests and never answers
                    lease.failed(f"no answer within {self.timeout:g} s")
                raise RetryableBackendError(
                    f"{self.name}: no answer within {self.timeout:g} s"
                ) from e

    async def _counted(self, answer: Awaitable[T]) -> T:
        """The answer, its failure counted as what it is."""
        try:
            return await answer
        except _Decided:
            raise
        except (_NoLogprobsYet, LogprobsUnavailable, ContinueRefused):
            self.discarded += 1
            raise
        except OptionsNotFound:
            self.fallbacks += 1
            raise
        except BackendError:
            self.failed += 1
            raise

    async def _retry(self, call: Callable[[], Awaitable[T]], first: BackendError) -> T:
        backoff = wait_exponential_jitter(
            multiplier=self.retry.initial, max=self.retry.max_wait, jitter=self.retry.jitter
        )

        def stop(state: RetryCallState) -> bool:
            if state.outcome is not None and isinstance(state.outcome.exception(), _NoLogprobsYet):
                return False  # bounded by NO_LOGPROBS_AFTER, whatever the retry budget
            return state.attempt_number >= max(1, self.retry.attempts)

        def wait(state: RetryCallState) -> float:
            if self.batching:  # the batch was the wait: retries go into the next one together
                return 0.0
            exc = state.outcome.exception() if state.outcome else None
            if isinstance(exc, BackendError) and exc.retry_after is not None:
                return min(exc.retry_after, self.retry.max_wait)
            return float(backoff(state))

        def before_sleep(state: RetryCallState) -> None:
            self.retries += 1
            exc = state.outcome.exception() if state.outcome else None
            log.debug("retrying %s after: %s", self.name, exc)

        retrying = AsyncRetrying(
            stop=stop,
            wait=wait,
            retry=retry_if_exception(_retryable),
            before_sleep=before_sleep,
            reraise=True,
        )
        made: BackendError | None = first
        try:
            async for attempt in retrying:
                with attempt:
                    if made is not None:  # the attempt already made: tenacity takes it as its first
                        failure, made = made, None
                        raise failure
                    return await self._attempt(call)
        except FALLBACKS:
            raise  # callers fall back: not an error
        except BackendError:
            self.errors += 1
            raise
        raise AssertionError("unreachable: tenacity either returns or raises")

    async def aclose(self) -> None:
        await self.backend.aclose()

    async def __aenter__(self) -> Model:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


_NOT_FOUND = "options_not_found"
"""The one key of a cached option request that the server answered with no option."""


def _dump(result: BaseModel) -> str:
    """A result as stored in the cache. ``model_dump_json`` would write an infinite
    log-probability (an option given probability 0) as null, which reads back as "not seen":
    such results go through ``json``, which keeps ``-Infinity``."""
    if isinstance(result, OptionScores) and not _finite(result):
        data = result.model_dump(mode="json", exclude={"cached"})
        return json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return result.model_dump_json(exclude={"cached"})


def _finite(scores: OptionScores) -> bool:
    values = [*scores.logprobs.values(), scores.floor, scores.seen_mass]
    return all(v is None or math.isfinite(v) for v in values)
