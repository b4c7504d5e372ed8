from __future__ import annotations

import asyncio
import logging
import math
import time
from pathlib import Path

import pytest

from charter.backends.mock import MockBackend
from charter.cache import RequestCache
from charter.errors import BackendError, LogprobsUnavailable, RetryableBackendError
from charter.model import NO_LOGPROBS_AFTER, Model, Prices, RetryPolicy
from charter.types import GenerateConfig, Generation, Message

FAST = RetryPolicy(attempts=4, initial=0.01, max_wait=0.5, jitter=0.0)
MSGS = [Message(role="user", content="hello there")]


async def test_retries_transient_errors_then_succeeds() -> None:
    mock = MockBackend(outputs=[RetryableBackendError("503"), RetryableBackendError("429"), "ok"])
    model = Model(mock, retry=FAST)
    g = await model.generate(MSGS)
    assert g.text == "ok"
    assert model.retries == 2
    assert len(mock.calls) == 3
    assert model.usage.requests == 1 and model.errors == 0


async def test_retry_after_is_honoured() -> None:
    mock = MockBackend(outputs=[RetryableBackendError("429", retry_after=0.3), "ok"])
    model = Model(mock, retry=RetryPolicy(attempts=3, initial=0.0, max_wait=5, jitter=0.0))
    start = time.perf_counter()
    await model.generate(MSGS)
    assert time.perf_counter() - start >= 0.3


async def test_gives_up_after_attempts_and_does_not_retry_permanent_errors() -> None:
    mock = MockBackend(outputs=[RetryableBackendError("503")] * 10)
    model = Model(mock, retry=FAST)
    with pytest.raises(RetryableBackendError):
        await model.generate(MSGS)
    assert len(mock.calls) == FAST.attempts
    assert model.errors == 1

    mock2 = MockBackend(outputs=[BackendError("HTTP 400: bad request"), "never"])
    model2 = Model(mock2, retry=FAST)
    with pytest.raises(BackendError, match="400"):
        await model2.generate(MSGS)
    assert len(mock2.calls) == 1


async def test_timeout_is_retried() -> None:
    mock = MockBackend(latency=0.5)
    model = Model(mock, timeout=0.05, retry=RetryPolicy(attempts=2, initial=0.0, jitter=0.0))
    with pytest.raises(RetryableBackendError, match="no answer within"):
        await model.generate(MSGS)
    assert len(mock.calls) == 2


async def test_concurrency_is_bounded() -> None:
    active = 0
    peak = 0

    class Counting(MockBackend):
        async def generate(self, messages, config):  # type: ignore[no-untyped-def]
            nonlocal active, peak
            active += 1
            peak = max(peak, active)
            await asyncio.sleep(0.01)
            active -= 1
            return Generation(text="x")

    model = Model(Counting(), concurrency=3)
    await asyncio.gather(*(model.generate(MSGS) for _ in range(20)))
    assert peak == 3


async def test_cache_hits_skip_backend_and_failures_are_not_cached(tmp_path: Path) -> None:
    cache = RequestCache(tmp_path / "c.sqlite")
    mock = MockBackend(outputs=[BackendError("boom"), "first", "second"])
    model = Model(mock, cache=cache, retry=FAST)
    cfg = GenerateConfig(seed=1)
    with pytest.raises(BackendError):
        await model.generate(MSGS, cfg)
    a = await model.generate(MSGS, cfg)
    b = await model.generate(MSGS, cfg)
    assert (a.text, a.cached) == ("first", False)
    assert (b.text, b.cached) == ("first", True)
    c = await model.generate(MSGS, GenerateConfig(seed=2))  # a different seed is a new request
    assert c.text == "second"
    assert model.usage.cache_hits == 1 and model.usage.requests == 2
    # The key ignores timeouts and concurrency: a differently tuned wrapper hits the same entry.
    other = Model(MockBackend(outputs=["never"]), cache=cache, timeout=5, concurrency=1)
    assert (await other.generate(MSGS, cfg)).text == "first"
    cache.close()


async def test_usage_and_cost() -> None:
    mock = MockBackend(outputs=[Generation(text="x", prompt_tokens=1000, completion_tokens=500)])
    model = Model(mock, prices=Prices(input=2.0, output=10.0))
    await model.generate(MSGS)
    assert model.usage.prompt_tokens == 1000 and model.usage.completion_tokens == 500
    assert model.cost == pytest.approx((1000 * 2 + 500 * 10) / 1e6)


async def test_option_logprobs_and_fallback_when_unavailable() -> None:
    model = Model(MockBackend(option_probs={"A": 0.75, "B": 0.25}))
    scores = await model.option_logprobs(MSGS, ["A", "B"])
    assert scores.probs["A"] == pytest.approx(0.75)
    assert math.isclose(sum(scores.probs.values()), 1.0)

    blind = Model(MockBackend(logprobs=False))
    assert not blind.capabilities.option_logprobs
    with pytest.raises(LogprobsUnavailable):
        await blind.option_logprobs(MSGS, ["A", "B"])


async def test_mock_is_scriptable_and_records_calls() -> None:
    mock = MockBackend(responder=lambda msgs, cfg: f"{len(msgs)} turns at T={cfg.temperature}")
    g = await mock.generate(MSGS, GenerateConfig(temperature=0.5))
    assert g.text == "1 turns at T=0.5"
    assert mock.calls[0].messages == MSGS
    cut = await MockBackend().generate(MSGS, GenerateConfig(max_tokens=2))
    assert cut.finish_reason == "length" and len(cut.text.split()) == 2
    default = MockBackend()
    s1 = await default.option_logprobs(MSGS, ["1", "2", "3"], GenerateConfig())
    s2 = await default.option_logprobs(MSGS, ["1", "2", "3"], GenerateConfig())
    assert s1 == s2 and math.isclose(sum(s1.probs.values()), 1.0)


def _no_logprobs(messages: object, options: object) -> dict[str, float]:
    raise LogprobsUnavailable("the server returned no log-probabilities")


async def test_no_logprobs_is_decided_on_evidence_once_across_concurrent_requests(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="charter")
    mock = MockBackend(option_probs=_no_logprobs)
    model = Model(mock, concurrency=4, retry=RetryPolicy(attempts=1, initial=0.0, jitter=0.0))
    results = await asyncio.gather(
        *(model.option_logprobs(MSGS, ["A", "B"]) for _ in range(20)), return_exceptions=True
    )
    assert all(isinstance(r, LogprobsUnavailable) for r in results)
    assert len(mock.calls) <= 4 + NO_LOGPROBS_AFTER, "nothing sent once decided"
    assert not model.capabilities.option_logprobs
    assert model.errors == 0 and model.failed == 0 and model.discarded == len(mock.calls)
    assert sum("consecutive replies" in r.getMessage() for r in caplog.records) == 1


async def test_a_gap_after_logprobs_were_seen_is_a_glitch() -> None:
    replies = iter([{"A": 0.7, "B": 0.3}, None, {"A": 0.6, "B": 0.4}])

    def flaky(messages: object, options: object) -> dict[str, float]:
        reply = next(replies)
        if reply is None:
            raise LogprobsUnavailable("dropped")
        return reply

    model = Model(MockBackend(option_probs=flaky), retry=FAST)
    await model.option_logprobs(MSGS, ["A", "B"])
    again = await model.option_logprobs(MSGS, ["A", "B"])
    assert again.probs["A"] == pytest.approx(0.6)
    assert model.capabilities.option_logprobs and model.retries == 1 and model.errors == 0


async def test_counting_blocks_nest_and_take_the_tasks_started_inside() -> None:
    from charter.model import counting

    model = Model(MockBackend("mock/count"))
    msgs = [Message(role="user", content="hi")]
    with counting() as outer:
        await model.generate(msgs)
        with counting() as inner:
            await asyncio.gather(*(model.generate(msgs) for _ in range(3)))
        await asyncio.create_task(model.generate(msgs))
    await model.generate(msgs)  # outside every block
    assert (inner.requests, outer.requests, model.usage.requests) == (3, 5, 6)
