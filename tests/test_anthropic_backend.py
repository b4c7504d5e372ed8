"""The anthropic/ backend and its Message Batches client against the in-repo server's
Anthropic routes on 127.0.0.1 (no SDK, no patching)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from charter.backends import create_backend
from charter.backends.anthropic import AnthropicBackend, create
from charter.batch.anthropic import AnthropicBatches
from charter.batch.api import BatchState, Item, ItemResult
from charter.errors import (
    BackendError,
    BackendFatalError,
    ConfigError,
    LogprobsUnavailable,
    RetryableBackendError,
)
from charter.model import Model, RetryPolicy
from charter.testing.server import FakeOpenAIServer, Fault
from charter.types import GenerateConfig, Message
from tests.conftest import candidates, run_cli

MSGS = [Message(role="user", content="Which is better?")]
FAST = RetryPolicy(attempts=4, initial=0.01, max_wait=1.0, jitter=0.0)


def backend(srv: FakeOpenAIServer, **kw: Any) -> AnthropicBackend:
    return AnthropicBackend("claude-test", base_url=srv.base_url, **kw)


async def test_generate_sends_the_messages_api_shape(server: FakeOpenAIServer) -> None:
    b = backend(server, api_key="sk-ant-test")
    msgs = [
        Message(role="system", content="Be brief."),
        Message(role="user", content="Hello"),
        Message(role="user", content="Which is better?"),
    ]
    g = await b.generate(msgs, GenerateConfig(max_tokens=50, temperature=0.3, top_p=0.9, seed=4))
    assert g.text == "Echo: Hello Which is better?" and g.finish_reason == "stop"
    assert g.reasoning is None and g.completion_tokens == 5
    sent = server.requests[-1]
    # system apart, consecutive user turns joined, no seed (the API has none)
    assert sent == {
        "model": "claude-test",
        "max_tokens": 50,
        "messages": [{"role": "user", "content": "Hello\n\nWhich is better?"}],
        "temperature": 0.3,
        "system": "Be brief.",
        "top_p": 0.9,
    }
    await b.generate(MSGS, GenerateConfig(stop=("\n",)))
    assert server.requests[-1]["stop_sequences"] == ["\n"] and "top_p" not in server.requests[-1]
    await b.aclose()


async def test_thinking_is_kept_apart_and_redacted_thinking_dropped(
    server: FakeOpenAIServer,
) -> None:
    server.anthropic.thinking = "The first answer is more careful. Answer: B"
    server.anthropic.redacted_thinking = True
    b = backend(server)
    g = await b.generate(MSGS, GenerateConfig(max_tokens=50))
    assert g.reasoning == "The first answer is more careful. Answer: B"
    assert g.text == "Echo: Which is better?" and "c2VjcmV0" not in g.text
    assert g.completion_tokens == 8 + 4
    await b.aclose()


@pytest.mark.parametrize(
    ("forced", "cfg", "finish"),
    [
        (None, GenerateConfig(max_tokens=2), "length"),
        (None, GenerateConfig(stop=("better",)), "stop"),
        ("refusal", GenerateConfig(), "content_filter"),
        ("model_context_window_exceeded", GenerateConfig(), "length"),
        ("pause_turn", GenerateConfig(), "unknown"),
    ],
)
async def test_stop_reasons(
    server: FakeOpenAIServer, forced: str | None, cfg: GenerateConfig, finish: str
) -> None:
    server.anthropic.stop_reason = forced
    b = backend(server)
    g = await b.generate(MSGS, cfg)
    assert g.finish_reason == finish
    if cfg.stop:
        assert g.text == "Echo: Which is " and server.requests[-1]["stop_sequences"] == ["better"]
    if cfg.max_tokens == 2:
        assert g.text == "Echo: Which"
    await b.aclose()


async def test_usage_counts_cache_reads_and_writes_in_the_prompt(server: FakeOpenAIServer) -> None:
    server.anthropic.usage = {
        "input_tokens": 7,
        "cache_read_input_tokens": 100,
        "cache_creation_input_tokens": 20,
    }
    model = Model(backend(server), retry=FAST)
    g = await model.generate(MSGS)
    assert (g.prompt_tokens, g.cached_prompt_tokens, g.cache_write_tokens) == (127, 100, 20)
    assert model.usage.prompt_tokens == 127 and model.usage.completion_tokens == 4
    await model.aclose()


async def test_bad_key_is_fatal_names_the_variable_and_is_never_echoed() -> None:
    secret = "sk-ant-SECRET-987654"
    with FakeOpenAIServer(api_key="sk-ant-right") as srv:
        model = Model(backend(srv, api_key=secret), retry=FAST)
        with pytest.raises(BackendFatalError) as info:
            await model.generate(MSGS)
        assert "ANTHROPIC_API_KEY" in str(info.value) and secret not in str(info.value)
        assert "\n" not in str(info.value) and model.retries == 0
        ok = Model(backend(srv, api_key="sk-ant-right"))
        assert (await ok.generate(MSGS)).text.startswith("Echo")
        await model.aclose()
        await ok.aclose()


async def test_429_and_529_are_retried_400_is_not(server: FakeOpenAIServer) -> None:
    server.add_faults(
        Fault(429, retry_after=0.05),
        Fault(529, message="Overloaded"),
        Fault(kind="error_body"),
        Fault(500),
    )
    model = Model(backend(server), retry=RetryPolicy(attempts=5, initial=0.01, jitter=0.0))
    assert (await model.generate(MSGS)).text.startswith("Echo")
    assert model.retries == 4 and len(server.requests) == 5
    server.add_faults(Fault(400, message="prompt is too long"))
    with pytest.raises(BackendError, match=r"HTTP 400 .*prompt is too long") as info:
        await model.generate(MSGS, GenerateConfig(max_tokens=9))
    assert not info.value.retryable and len(server.requests) == 6
    server.add_faults(Fault(404, message="model: claude-nope"))
    with pytest.raises(BackendFatalError, match="model name 'claude-test'"):
        await model.generate(MSGS, GenerateConfig(max_tokens=8))
    await model.aclose()


def test_config_errors_are_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_BASE_URL", raising=False)
    with pytest.raises(ConfigError, match=r"^ANTHROPIC_API_KEY is not set"):
        create("claude-x")
    with pytest.raises(ConfigError, match="needs a model name"):
        create_backend("anthropic/")
    with pytest.raises(ConfigError, match="unknown option 'top_logprobs'"):
        create_backend("anthropic/x", base_url="http://127.0.0.1:9/v1", top_logprobs=5)
    with pytest.raises(ConfigError, match="must be an http"):
        create("x", base_url="ftp://example.com")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-env")
    b = create_backend("anthropic/claude-x", timeout=30.0)
    assert isinstance(b, AnthropicBackend) and b.server == "https://api.anthropic.com/v1"
    assert not b.capabilities.option_logprobs


async def test_temperature_above_one_and_a_first_assistant_turn(server: FakeOpenAIServer) -> None:
    b = backend(server)
    with pytest.raises(ConfigError, match=r"temperature from 0 to 1, got 1\.5"):
        await b.generate(MSGS, GenerateConfig(temperature=1.5))
    with pytest.raises(BackendError, match="must start with a user turn"):
        await b.generate([Message(role="assistant", content="Hi")], GenerateConfig())
    # a last assistant turn is continued; the API refuses trailing whitespace there
    await b.generate([*MSGS, Message(role="assistant", content="The answer is ")], GenerateConfig())
    assert server.requests[-1]["messages"][-1] == {"role": "assistant", "content": "The answer is"}
    await b.generate([*MSGS, Message(role="assistant", content=" \n")], GenerateConfig())
    assert server.requests[-1]["messages"] == [{"role": "user", "content": "Which is better?"}]
    assert len(server.requests) == 2
    with pytest.raises(LogprobsUnavailable):
        await b.option_logprobs(MSGS, ["A", "B"], GenerateConfig())
    await b.aclose()


def _judge(messages: list[dict[str, Any]], body: dict[str, Any]) -> str:
    """A judge that prefers the candidate that says "good", in a sentence to be parsed."""
    shown = candidates(messages[-1]["content"])
    good = next((k for k, v in shown.items() if "good" in v), "A")
    return f"Answer: {good}"


def test_label_with_an_anthropic_judge_end_to_end(tmp_path: Path) -> None:
    src = tmp_path / "pairs.jsonl"
    rows = [
        {"id": "p1", "prompt": "q1", "response_a": "good answer", "response_b": "meh"},
        {"id": "p2", "prompt": "q2", "response_a": "meh", "response_b": "good one"},
    ]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "labels.jsonl"
    with FakeOpenAIServer(responder=_judge, api_key="sk-ant-cli") as srv:
        r = run_cli(
            "label",
            str(src),
            "-o",
            str(out),
            "-j",
            "anthropic/claude-judge",
            "--base-url",
            srv.base_url,
            "--constitution",
            "harmless",
            "--principles",
            "1",
            env={"ANTHROPIC_API_KEY": "sk-ant-cli"},
        )
        sent = list(srv.requests)
    assert r.returncode == 0, r.stderr
    assert "sk-ant-cli" not in r.stderr + r.stdout + out.read_text()
    assert b"sk-ant-cli" not in (tmp_path / "charter-cache.sqlite").read_bytes()
    recs = {x["id"]: x for x in map(json.loads, out.read_text().splitlines())}
    assert recs["p1"]["p_a"] == 1.0 and recs["p2"]["p_a"] == 0.0
    assert {x["label_source"] for x in recs.values()} == {"parsed"}
    assert all(x["position_consistent"] for x in recs.values())
    assert len(sent) == 2 * 2 and all("max_tokens" in b and "seed" not in b for b in sent)


# -- Message Batches ---------------------------------------------------------------------------


def _item(custom_id: str, text: str, max_tokens: int = 50) -> Item:
    body = {
        "model": "claude-test",
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": text}],
    }
    return Item(custom_id, body)


async def _ended(api: AnthropicBatches, batch_id: str) -> BatchState:
    for _ in range(200):
        state = await api.state(batch_id)
        if state.done:
            return state
        await asyncio.sleep(0.02)
    raise AssertionError("the batch never ended")


async def test_batch_submit_state_results_with_errors() -> None:
    with FakeOpenAIServer(api_key="sk-ant-b") as srv:
        srv.anthropic.batch_delay = 0.2
        srv.anthropic.item_error = lambda p: (
            "overloaded_error" if "busy" in p["messages"][0]["content"] else None
        )
        api = backend(srv, api_key="sk-ant-b").batch_api()
        assert (api.provider, api.endpoint, api.max_requests) == (
            "anthropic",
            srv.base_url,
            100_000,
        )
        items = [_item("c1", "one"), _item("c2", "busy two"), _item("c3", "three", max_tokens=0)]
        line = {"custom_id": "c1", "params": items[0].body}
        assert api.size(items[0]) == len(json.dumps(line, separators=(",", ":"))) + 1
        batch_id = await api.submit(items)
        first = await api.state(batch_id)
        assert first.status == "in_progress" and not first.done and first.total == 3
        state = await _ended(api, batch_id)
        assert (state.status, state.completed, state.failed) == ("ended", 1, 2)
        assert state.extra["results_url"].endswith(f"/v1/messages/batches/{batch_id}/results")
        got = {r.custom_id: r for r in await api.results(state)}
        assert got["c1"].status == 200 and got["c1"].body is not None
        assert got["c1"].body["content"][0]["text"] == "Echo: one"
        assert (
            got["c2"].status == 529
            and got["c2"].error == "overloaded_error: injected overloaded_error"
        )
        assert got["c3"].status == 400 and "max_tokens" in (got["c3"].error or "")
        assert srv.anthropic.submitted == {"c1": 1, "c2": 1, "c3": 1}
        await api.aclose()


async def test_batch_expiry_and_cancel_leave_items_unrun(server: FakeOpenAIServer) -> None:
    server.anthropic.batch_delay = 10.0
    server.anthropic.batch_expiry = 0.1
    api = backend(server).batch_api()
    expiring = await api.submit([_item(f"e{i}", "x") for i in range(3)])
    state = await _ended(api, expiring)
    assert (state.completed, state.failed) == (0, 3)
    results = await api.results(state)
    assert {r.status for r in results} == {None}
    assert all("expired" in (r.error or "") for r in results)
    server.anthropic.batch_delay, server.anthropic.batch_expiry = 0.4, None
    running = await api.submit([_item("k1", "a"), _item("k2", "b")])
    await asyncio.sleep(0.25)  # the first of two has run
    asked = await api.cancel(running)
    assert asked.status == "canceling" and not asked.done
    state = await _ended(api, running)
    got = {r.custom_id: r for r in await api.results(state)}
    assert got["k1"].status == 200 and got["k2"].status is None
    assert "canceled" in (got["k2"].error or "")
    assert server.anthropic.submitted == {"e0": 1, "e1": 1, "e2": 1, "k1": 1, "k2": 1}
    await api.aclose()


async def test_batch_errors_are_one_line(server: FakeOpenAIServer) -> None:
    api = backend(server).batch_api()
    with pytest.raises(BackendError, match=r"batch msgbatch_nope at .*HTTP 404") as info:
        await api.state("msgbatch_nope")
    assert "\n" not in str(info.value)
    with pytest.raises(BackendError, match="custom_id values must be unique"):
        await api.submit([_item("same", "a"), _item("same", "b")])
    secret = "sk-ant-WRONG-1234"
    with FakeOpenAIServer(api_key="sk-ant-right") as srv:
        bad = backend(srv, api_key=secret).batch_api()
        with pytest.raises(BackendFatalError, match="ANTHROPIC_API_KEY") as denied:
            await bad.submit([_item("a", "b")])
        assert secret not in str(denied.value) and not srv.anthropic.submitted
        await bad.aclose()
    await api.aclose()


class _Batcher:
    """What charter's batch runner gives the backend: ``send(body)`` -> ItemResult."""

    def __init__(self, result: ItemResult) -> None:
        self.result = result
        self.sent: list[dict[str, Any]] = []

    async def send(self, body: dict[str, Any]) -> ItemResult:
        self.sent.append(body)
        return self.result


async def test_answered_maps_batch_results_as_live_answers(server: FakeOpenAIServer) -> None:
    b = backend(server)
    _, message = server.anthropic.answer(
        {"model": "m", "max_tokens": 9, "messages": [{"role": "user", "content": "hi"}]}
    )
    b.batcher = _Batcher(ItemResult("x", 200, body=message))
    g = await b.generate(MSGS, GenerateConfig(max_tokens=9))
    assert g.text == "Echo: hi" and b.batcher.sent[0]["max_tokens"] == 9
    assert not server.requests  # nothing went live
    cases: list[tuple[ItemResult, type[BackendError], str]] = [
        (ItemResult("x", None, error="expired before it ran"), RetryableBackendError, "expired"),
        (
            ItemResult(
                "x",
                529,
                body={
                    "type": "error",
                    "error": {"type": "overloaded_error", "message": "Overloaded"},
                },
            ),
            RetryableBackendError,
            "HTTP 529 .*Overloaded",
        ),
        (
            ItemResult(
                "x",
                400,
                body={
                    "type": "error",
                    "error": {"type": "invalid_request_error", "message": "too long"},
                },
            ),
            BackendError,
            "HTTP 400 .*too long",
        ),
        (
            ItemResult("x", 401, body=None, error="authentication_error"),
            BackendFatalError,
            "ANTHROPIC_API_KEY",
        ),
        (
            ItemResult("x", 200, body={"type": "message"}),
            RetryableBackendError,
            "no message content",
        ),
    ]
    for result, kind, said in cases:
        with pytest.raises(kind, match=said) as info:
            b._answered(result)
        assert type(info.value) is kind or kind is BackendError
        assert info.value.retryable == (kind is RetryableBackendError)


class _OneByOne:
    """A batch runner reduced to its bones: each body sent as its own batch, its result
    read back from the server's results file."""

    def __init__(self, api: AnthropicBatches) -> None:
        self.api = api
        self.n = 0

    async def send(self, body: dict[str, Any]) -> ItemResult:
        self.n += 1
        batch_id = await self.api.submit([Item(f"r{self.n}", body)])
        (result,) = await self.api.results(await _ended(self.api, batch_id))
        return result


async def test_a_batch_answer_reaches_the_caller_as_a_live_one_would(
    server: FakeOpenAIServer,
) -> None:
    server.anthropic.thinking = "Weighing both."
    server.anthropic.item_error = lambda p: (
        "invalid_request_error" if "bad" in p["messages"][0]["content"] else None
    )
    b = backend(server)
    api = b.batch_api()
    b.batcher = _OneByOne(api)
    model = Model(b, retry=FAST)
    g = await model.generate([Message(role="system", content="Brief."), *MSGS])
    assert (g.text, g.reasoning, g.finish_reason) == (
        "Echo: Which is better?",
        "Weighing both.",
        "stop",
    )
    with pytest.raises(BackendError, match=r"HTTP 400 from .* \(batch\): injected invalid_request"):
        await model.generate([Message(role="user", content="a bad one")])
    assert not server.requests  # nothing went to the live Messages route
    assert server.anthropic.submitted == {"r1": 1, "r2": 1}
    await api.aclose()
    await model.aclose()
