"""Backend options are typed per backend: a typo or a wrong type is one clear error, not a
silently dropped key."""

from __future__ import annotations

from typing import Any

import pytest

from charter.backends import create_backend, hf, smollm2
from charter.backends.mock import MockBackend
from charter.backends.openai import OpenAIBackend
from charter.errors import ConfigError
from charter.model import Model
from charter.testing.server import FakeOpenAIServer
from charter.types import GenerateConfig, Message

MSGS = [Message(role="user", content="Hello there")]
RUN_OPTIONS = {"timeout": 30.0, "base_url": "http://127.0.0.1:9/v1"}
"""What charter's run passes to every model it builds, whatever the provider."""


class Loaded(Exception):
    """Raised by the stand-ins below: reaching them means a model would have been loaded."""


@pytest.fixture
def no_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_: object, **__: object) -> Any:
        raise Loaded

    monkeypatch.setattr(hf, "import_torch", refuse)
    monkeypatch.setattr(smollm2, "converted_dir", refuse)


@pytest.fixture
def hf_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[tuple[object, ...], dict[str, object]]]:
    """Record what HFBackend would be built with, instead of loading weights."""
    calls: list[tuple[tuple[object, ...], dict[str, object]]] = []

    def record(*args: object, **kwargs: object) -> MockBackend:
        calls.append((args, kwargs))
        return MockBackend()

    monkeypatch.setattr(hf, "HFBackend", record)
    monkeypatch.setattr(smollm2, "HFBackend", record)
    monkeypatch.setattr(smollm2, "converted_dir", lambda: "/converted")
    return calls


def one_line(exc: pytest.ExceptionInfo[ConfigError]) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


@pytest.mark.parametrize(
    ("spec", "key", "message"),
    [
        (
            "openai/m",
            "base_ulr",
            "openai/ backend: unknown option 'base_ulr' "
            "(known: api_key, base_url, timeout, top_logprobs)",
        ),
        (
            "hf/./no-such-model",
            "max_batchsize",
            "hf/ backend: unknown option 'max_batchsize' "
            "(known: base_url, device, max_batch_size, timeout)",
        ),
        (
            "smollm2",
            "devise",
            "smollm2 backend: unknown option 'devise' "
            "(known: base_url, device, max_batch_size, timeout)",
        ),
        ("mock/x", "latency", "mock/ backend: unknown option 'latency' (known: base_url, timeout)"),
    ],
)
@pytest.mark.usefixtures("no_loading")
def test_unknown_option_is_one_line_naming_backend_and_key(
    spec: str, key: str, message: str
) -> None:
    with pytest.raises(ConfigError) as exc:
        create_backend(spec, **RUN_OPTIONS, **{key: 1})
    assert one_line(exc) == message
    with pytest.raises(ConfigError) as exc:
        Model.from_spec(spec, backend_options={**RUN_OPTIONS, key: 1}, concurrency=2)
    assert one_line(exc) == message


def test_several_unknown_options_are_named_together() -> None:
    with pytest.raises(ConfigError) as exc:
        create_backend("mock/x", temprature=0.5, seeds=3)
    assert one_line(exc) == (
        "mock/ backend: unknown options 'temprature', 'seeds' (known: base_url, timeout)"
    )


@pytest.mark.parametrize(
    ("spec", "options", "message"),
    [
        (
            "openai/m",
            {"timeout": "soon"},
            "openai/ backend: option 'timeout': input should be a valid number, "
            "unable to parse string as a number",
        ),
        (
            "openai/m",
            {"top_logprobs": 0},
            "openai/ backend: option 'top_logprobs': input should be greater than or equal to 1",
        ),
        (
            "hf/./no-such-model",
            {"max_batch_size": "many"},
            "hf/ backend: option 'max_batch_size': input should be a valid integer, "
            "unable to parse string as an integer",
        ),
        (
            "mock/x",
            {"timeout": -1},
            "mock/ backend: option 'timeout': input should be greater than 0",
        ),
    ],
)
@pytest.mark.usefixtures("no_loading")
def test_ill_typed_option_is_one_line(spec: str, options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        Model.from_spec(spec, backend_options=options)
    assert one_line(exc) == message


def test_values_are_not_echoed() -> None:
    """An api_key or a base_url with credentials must not end up in an error message."""
    with pytest.raises(ConfigError) as exc:
        create_backend("openai/m", api_key=123456789)
    assert one_line(exc) == "openai/ backend: option 'api_key': input should be a valid string"


async def test_valid_openai_options_reach_the_backend() -> None:
    with FakeOpenAIServer(option_probs={"A": 0.6, "B": 0.4}) as srv:
        model = Model.from_spec(
            "openai/test-model",
            backend_options={
                "base_url": srv.base_url,
                "api_key": "sk-test",
                "timeout": 7,
                "top_logprobs": 5,
            },
        )
        backend = model.backend
        assert isinstance(backend, OpenAIBackend)
        assert backend.server == srv.base_url and backend.top_logprobs == 5
        assert backend._timeout == 7.0
        g = await model.generate(MSGS, GenerateConfig(max_tokens=20))
        assert g.text == "Echo: Hello there"
        await model.option_logprobs(MSGS, ["A", "B"], GenerateConfig())
        assert srv.requests[-1]["top_logprobs"] == 5
        await model.aclose()


def test_openai_defaults_are_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    backend = create_backend("openai/m")
    assert isinstance(backend, OpenAIBackend)
    assert backend._timeout == 120.0 and backend.top_logprobs == 20
    assert backend.server == "https://api.openai.com/v1"


def test_local_backends_take_the_run_options_and_their_own(
    hf_calls: list[tuple[tuple[object, ...], dict[str, object]]],
) -> None:
    create_backend("hf/./m", **RUN_OPTIONS)
    create_backend("hf/./m", device="cpu", max_batch_size=2)
    Model.from_spec("smollm2", backend_options={**RUN_OPTIONS, "max_batch_size": 4})
    assert hf_calls == [
        (("hf/./m", "./m"), {"device": None, "max_batch_size": 16}),
        (("hf/./m", "./m"), {"device": "cpu", "max_batch_size": 2}),
        (("smollm2", "/converted"), {"device": None, "max_batch_size": 4}),
    ]


def test_mock_takes_the_run_options() -> None:
    model = Model.from_spec("mock/dry", backend_options=RUN_OPTIONS)
    assert isinstance(model.backend, MockBackend) and model.backend.name == "mock/dry"
