"""The openai/ backend against a real HTTP server on 127.0.0.1 (no SDK patching)."""

from __future__ import annotations

import math
import socket
from typing import Any

import pytest

from charter.backends.openai import OpenAIBackend, _lower_top
from charter.errors import (
    BackendError,
    BackendFatalError,
    BackendUnavailable,
    ConfigError,
    LogprobsUnavailable,
    OptionsNotFound,
    RetryableBackendError,
)
from charter.model import Model, RetryPolicy
from charter.testing.server import FakeOpenAIServer, Fault
from charter.types import GenerateConfig, Message

MSGS = [Message(role="user", content="Which is better?")]
FAST = RetryPolicy(attempts=4, initial=0.01, max_wait=1.0, jitter=0.0)


def backend(srv: FakeOpenAIServer, **kw: object) -> OpenAIBackend:
    return OpenAIBackend("test-model", base_url=srv.base_url, **kw)  # type: ignore[arg-type]


async def test_generate_text_finish_reason_usage(server: FakeOpenAIServer) -> None:
    b = backend(server)
    g = await b.generate(MSGS, GenerateConfig(max_tokens=50, temperature=0.3, seed=4, stop=("\n",)))
    assert g.text == "Echo: Which is better?"
    assert g.finish_reason == "stop" and g.completion_tokens == 4 and g.prompt_tokens > 0
    sent = server.requests[-1]
    assert sent["model"] == "test-model" and sent["seed"] == 4 and sent["stop"] == ["\n"]
    assert sent["messages"] == [{"role": "user", "content": "Which is better?"}]
    cut = await b.generate(MSGS, GenerateConfig(max_tokens=2))
    assert cut.finish_reason == "length"
    await b.aclose()


@pytest.mark.parametrize(
    "probs",
    [
        {"A": 0.6, "B": 0.3, "C": 0.1},
        {" A": 0.6, " B": 0.3, "hmm": 0.1},
        {"(A": 0.4, "A": 0.2, " B": 0.3, "\n": 0.1},
    ],
)
async def test_option_logprobs_match_usual_spellings(probs: dict[str, float]) -> None:
    with FakeOpenAIServer(option_probs=probs) as srv:
        b = backend(srv)
        scores = await b.option_logprobs(MSGS, ["A", "B"], GenerateConfig())
        assert scores.probs["A"] == pytest.approx(2 / 3, abs=1e-6)
        assert math.isclose(sum(scores.probs.values()), 1.0)
        sent = srv.requests[-1]
        assert sent["logprobs"] is True and sent["top_logprobs"] == 20 and sent["max_tokens"] == 1
        await b.aclose()


async def test_one_option_missing_and_none_found() -> None:
    with FakeOpenAIServer(option_probs={"A": 0.9, "x": 0.1}) as srv:
        scores = await backend(srv).option_logprobs(MSGS, ["A", "B"], GenerateConfig())
        # never 0 for a missing option: it gets the top list's floor (0.1), an upper bound
        assert scores.missing == ["B"] and scores.method == "topk_bound"
        assert scores.probs == pytest.approx({"A": 0.9, "B": 0.1})
    with (
        FakeOpenAIServer(option_probs={"Sure": 0.9, "x": 0.1}) as srv,
        pytest.raises(OptionsNotFound, match="none of the options"),
    ):
        await backend(srv).option_logprobs(MSGS, ["A", "B"], GenerateConfig())


async def test_server_without_logprobs_falls_back_cleanly() -> None:
    with FakeOpenAIServer(option_probs={"A": 0.9, "B": 0.1}, logprobs=False) as srv:
        model = Model(backend(srv), retry=FAST)
        assert model.capabilities.option_logprobs
        with pytest.raises(LogprobsUnavailable):
            await model.option_logprobs(MSGS, ["A", "B"])
        assert not model.capabilities.option_logprobs
        # the same model still generates
        assert (await model.generate(MSGS, GenerateConfig(max_tokens=1))).text == "A"


async def test_429_with_retry_after_and_500_are_retried(server: FakeOpenAIServer) -> None:
    server.add_faults(Fault(429, retry_after=0.2), Fault(503), Fault(500))
    model = Model(backend(server), retry=FAST)
    g = await model.generate(MSGS)
    assert g.text.startswith("Echo")
    assert model.retries == 3 and len(server.requests) == 4


async def test_client_errors_are_not_retried(server: FakeOpenAIServer) -> None:
    server.add_faults(Fault(400, message="context length exceeded"))
    model = Model(backend(server), retry=FAST)
    with pytest.raises(BackendError, match=r"HTTP 400 .*context length exceeded"):
        await model.generate(MSGS)
    assert len(server.requests) == 1


async def test_bad_key_is_fatal_and_never_echoed() -> None:
    secret = "sk-test-SECRET-123456"
    with FakeOpenAIServer(api_key="sk-right") as srv:
        model = Model(backend(srv, api_key=secret), retry=FAST)
        with pytest.raises(BackendFatalError) as info:
            await model.generate(MSGS)
        assert "authentication failed" in str(info.value)
        assert secret not in str(info.value) and len(srv.requests) == 0
        ok = Model(backend(srv, api_key="sk-right"))
        assert (await ok.generate(MSGS)).text


async def test_unreachable_server_names_url() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    model = Model(
        OpenAIBackend("m", base_url=url), retry=RetryPolicy(attempts=2, initial=0.01, jitter=0)
    )
    with pytest.raises(BackendUnavailable, match=f"cannot reach the server at {url}"):
        await model.generate(MSGS)
    assert model.retries == 1


async def test_hung_server_times_out_and_retries(server: FakeOpenAIServer) -> None:
    server.add_faults(Fault(200, hang=2.0))
    model = Model(backend(server, timeout=0.3), timeout=0.3, retry=FAST)
    g = await model.generate(MSGS)
    assert g.text.startswith("Echo") and model.retries == 1


@pytest.mark.parametrize(
    ("message", "sent", "expected"),
    [
        ("Invalid 'top_logprobs': Expected a value <= 5, but got 20 instead.", 20, 5),
        ("Requested top logprobs of 20 which is greater than max allowed: 8", 20, 8),
        ("top_logprobs must be between 0 and 10 for model llama-3-70b", 20, 10),
        ("bad request", 20, 5),
        ("bad request", 5, 1),
        ("top_logprobs must be <= 0", 1, None),
    ],
)
def test_next_top_logprobs_after_a_refusal(message: str, sent: int, expected: int | None) -> None:
    assert _lower_top(message, sent) == expected


async def test_top_logprobs_cap_stated_by_the_server_is_used_and_kept() -> None:
    with FakeOpenAIServer(option_probs={"A": 0.6, "B": 0.4}, max_top_logprobs=3) as srv:
        b = backend(srv)
        first = await b.option_logprobs(MSGS, ["A", "B"], GenerateConfig())
        await b.option_logprobs(MSGS, ["A", "B"], GenerateConfig())
        assert [r["top_logprobs"] for r in srv.requests] == [20, 3, 3]
        assert first.probs["A"] == pytest.approx(0.6) and b.top_logprobs == 3
        await b.aclose()


async def test_unstated_cap_is_found_by_stepping_down() -> None:
    def cap_two(body: dict[str, object]) -> Fault | None:
        top = body.get("top_logprobs")
        return Fault(400, message="invalid request") if isinstance(top, int) and top > 2 else None

    with FakeOpenAIServer(option_probs={"A": 0.6, "B": 0.4}, fault_rule=cap_two) as srv:
        b = backend(srv)
        scores = await b.option_logprobs(MSGS, ["A", "B"], GenerateConfig())
        # 20 and 5 refused, 1 taken; then B, missing from a top list of one, is looked for in
        # a wider list, which this server refuses too: B gets the floor, a flagged bound
        assert [r["top_logprobs"] for r in srv.requests] == [20, 5, 1, 1000]
        assert scores.missing == ["B"] and scores.mass == pytest.approx(0.6)
        assert scores.method == "topk_bound"
        await b.aclose()


async def test_a_too_long_prompt_on_a_logprobs_request_fails_that_record_only() -> None:
    long = [Message(role="user", content="word " * 3000)]

    def context_limit(body: dict[str, Any]) -> Fault | None:
        if len(body["messages"][0]["content"]) > 10_000:
            return Fault(400, message="This model's maximum context length is 4096 tokens")
        return None

    with FakeOpenAIServer(option_probs={"A": 0.6, "B": 0.4}, fault_rule=context_limit) as srv:
        model = Model(backend(srv), retry=FAST)
        with pytest.raises(BackendError, match="maximum context length") as info:
            await model.option_logprobs(long, ["A", "B"])
        assert not isinstance(info.value, BackendFatalError)
        scores = await model.option_logprobs(MSGS, ["A", "B"])
        assert scores.probs["A"] == pytest.approx(0.6)
        assert srv.requests[-1]["top_logprobs"] == 20, "the cap was not lowered by that record"
        assert model.errors == 1
        await model.aclose()


async def test_a_200_whose_body_is_an_error_keeps_the_servers_message(
    server: FakeOpenAIServer,
) -> None:
    server.add_faults(*[Fault(kind="error_body", message="worker ran out of memory")] * 10)
    model = Model(backend(server), retry=FAST)
    with pytest.raises(RetryableBackendError, match="worker ran out of memory"):
        await model.generate(MSGS)
    assert model.retries == FAST.attempts - 1
    await model.aclose()


@pytest.mark.parametrize("url", ["http://127.0.0.1:99999/v1", "http://u:p@localhost:70000"])
def test_port_out_of_range_is_a_config_error(url: str) -> None:
    with pytest.raises(ConfigError, match=r"port \d+, outside 0-65535") as info:
        OpenAIBackend("m", base_url=url)
    assert "u:p" not in str(info.value)
