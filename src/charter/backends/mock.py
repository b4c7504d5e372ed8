"""The mock backend: deterministic and scriptable, for tests and for dry runs of recipes.

``mock/<name>`` resolves to a registered :class:`MockBackend` of that name if there is one,
otherwise to a fresh default mock, which answers by quoting the last user turn and scores
options with fixed pseudo-random probabilities derived from the prompt.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from charter.backends.base import BackendOptions, Capabilities, parse_options
from charter.errors import BackendError, LogprobsUnavailable
from charter.types import GenerateConfig, Generation, Message, OptionScores

Responder = Callable[[Sequence[Message], GenerateConfig], "str | Generation"]
OptionResponder = Callable[[Sequence[Message], Sequence[str]], Mapping[str, float]]


@dataclass
class MockCall:
    """One request the mock received, kept so tests can assert on exactly what was sent."""

    kind: Literal["generate", "options"]
    messages: list[Message]
    config: GenerateConfig
    options: list[str] = field(default_factory=list)


def _digest(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()


class MockBackend:
    """A scriptable fake model.

    - ``outputs``: a queue of texts (or Generations, or exceptions to raise) used in order.
    - ``responder``: a callable ``(messages, config) -> str | Generation`` used when the queue
      is empty.
    - ``option_probs``: fixed probabilities per option, or a callable returning them.
    - ``logprobs=False`` makes it behave like a server without log-probabilities.
    """

    def __init__(
        self,
        name: str = "mock/default",
        *,
        outputs: Sequence[str | Generation | BaseException] = (),
        responder: Responder | None = None,
        option_probs: Mapping[str, float] | OptionResponder | None = None,
        logprobs: bool = True,
        latency: float = 0.0,
        record_calls: bool = True,
    ) -> None:
        self.name = name
        self.capabilities = Capabilities(option_logprobs=logprobs)
        self._queue: deque[str | Generation | BaseException] = deque(outputs)
        self._responder = responder
        self._option_probs = option_probs
        self.latency = latency
        self.record_calls = record_calls
        self.calls: list[MockCall] = []
        """Every request received, when ``record_calls`` (tests); off for CLI dry runs, where
        a long run would otherwise keep every prompt in memory."""

    def enqueue(self, *outputs: str | Generation | BaseException) -> None:
        self._queue.extend(outputs)

    async def generate(self, messages: Sequence[Message], config: GenerateConfig) -> Generation:
        if self.record_calls:
            self.calls.append(MockCall("generate", list(messages), config))
        if self.latency:
            await asyncio.sleep(self.latency)
        if self._queue:
            out: str | Generation | BaseException = self._queue.popleft()
        elif self._responder is not None:
            out = self._responder(messages, config)
        else:
            out = self._default_text(messages, config)
        if isinstance(out, BaseException):
            raise out
        if isinstance(out, Generation):
            return out
        return self._truncate(out, messages, config)

    async def option_logprobs(
        self, messages: Sequence[Message], options: Sequence[str], config: GenerateConfig
    ) -> OptionScores:
        if self.record_calls:
            self.calls.append(MockCall("options", list(messages), config, list(options)))
        if not self.capabilities.option_logprobs:
            raise LogprobsUnavailable(f"{self.name} was set up without log-probabilities")
        if self.latency:
            await asyncio.sleep(self.latency)
        if callable(self._option_probs):
            probs = dict(self._option_probs(messages, options))
        elif self._option_probs is not None:
            probs = dict(self._option_probs)
        else:
            h = _digest([m.model_dump() for m in messages], list(options))
            raw = [int(h[i * 4 : i * 4 + 4], 16) + 1 for i in range(len(options))]
            probs = {o: r / sum(raw) for o, r in zip(options, raw, strict=True)}
        if any(o not in probs for o in options) and not any(o in probs for o in options):
            raise BackendError(f"{self.name}: option_probs gives none of {list(options)}")
        logprobs = {o: (math.log(probs[o]) if probs.get(o, 0.0) > 0 else None) for o in options}
        return OptionScores(logprobs=logprobs, prompt_tokens=_count_tokens(messages))

    async def aclose(self) -> None:
        return None

    def _default_text(self, messages: Sequence[Message], config: GenerateConfig) -> str:
        last_user = next((m.content for m in reversed(messages) if m.role == "user"), "")
        text = " ".join(last_user.split())
        if config.temperature > 0:
            tag = _digest([m.model_dump() for m in messages], config.seed)[:6]
            return f"Mock answer {tag} to: {text}"
        return f"Mock answer to: {text}"

    @staticmethod
    def _truncate(text: str, messages: Sequence[Message], config: GenerateConfig) -> Generation:
        words = text.split(" ")
        finish: Literal["stop", "length"] = "stop"
        if len(words) > config.max_tokens:
            words, finish = words[: config.max_tokens], "length"
        for s in config.stop:
            joined = " ".join(words)
            if s in joined:
                words, finish = joined.split(s, 1)[0].split(" "), "stop"
        out = " ".join(words)
        return Generation(
            text=out,
            finish_reason=finish,
            prompt_tokens=_count_tokens(messages),
            completion_tokens=len(out.split()),
        )


def _count_tokens(messages: Sequence[Message]) -> int:
    """Whitespace words stand in for tokens in the mock."""
    return sum(len(m.content.split()) + 2 for m in messages)


_REGISTERED: dict[str, MockBackend] = {}


def register_mock(backend: MockBackend) -> MockBackend:
    """Make ``backend`` addressable as its ``name`` (``mock/<name>``) in this process."""
    _REGISTERED[backend.name] = backend
    return backend


def unregister_mock(name: str) -> None:
    _REGISTERED.pop(name, None)


class MockOptions(BackendOptions):
    """Options of ``mock/<name>``: only the shared ones, which it ignores. A scripted mock is
    built in Python and made addressable with :func:`register_mock`."""


def create(model: str, **options: object) -> MockBackend:
    parse_options("mock/", MockOptions, options)
    spec = f"mock/{model}"
    return _REGISTERED.get(spec) or MockBackend(spec, record_calls=False)
