"""Token counts without a model: what ``--estimate`` counts prompts and answers with.

Each model spec gets the most faithful counter charter has for it, and says which it is:

- ``smollm2``, ``hf/PATH`` and ``rm/DIR``: the model's own tokenizer and chat template (for
  smollm2 the vocabulary of the bundled GGUF, or of its converted folder when there is one;
  no weights are loaded), counted as the local backend counts them;
- ``openai/NAME``: tiktoken's encoding for NAME when tiktoken is installed and knows the
  model, with OpenAI's chat overhead (4 tokens per message, 3 to open the answer);
- ``mock/NAME``: the mock's own rule (whitespace words, 2 more per message);
- any other: characters / 4, plus 4 tokens per message.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from charter.backends import parse_spec
from charter.types import Message

log = logging.getLogger("charter")

CHARS_PER_TOKEN = 4
"""The rule of thumb for text no tokenizer is at hand for (English, BPE vocabularies)."""
PER_MESSAGE = 4
"""Tokens a chat format adds around each message (role, separators), by the same rule."""
ANSWER_START = 3
"""Tokens OpenAI's chat format adds to open the assistant's answer."""


class Counter(Protocol):
    """Counts tokens the way one model reads them."""

    rule: str
    """How it counts, in words, for the estimate's output."""

    def prompt(self, messages: Sequence[Message]) -> int:
        """Tokens of a request's prompt."""
        ...

    def text(self, text: str) -> int:
        """Tokens of a piece of text (an answer)."""
        ...


@dataclass
class CharsCounter:
    """characters / 4 (rounded up), plus 4 tokens per message."""

    rule: str = f"characters/{CHARS_PER_TOKEN} (+{PER_MESSAGE} per message)"

    def prompt(self, messages: Sequence[Message]) -> int:
        return sum(self.text(m.content) + PER_MESSAGE for m in messages)

    def text(self, text: str) -> int:
        return math.ceil(len(text) / CHARS_PER_TOKEN)


@dataclass
class MockCounter:
    """The mock backend's own count: whitespace words, 2 more per message."""

    rule: str = "the mock's words (+2 per message)"

    def prompt(self, messages: Sequence[Message]) -> int:
        return sum(len(m.content.split()) + 2 for m in messages)

    def text(self, text: str) -> int:
        return len(text.split())


@dataclass
class TiktokenCounter:
    """tiktoken's encoding, with OpenAI's chat overhead."""

    encoding: Any
    rule: str

    def prompt(self, messages: Sequence[Message]) -> int:
        return sum(self.text(m.content) + PER_MESSAGE for m in messages) + ANSWER_START

    def text(self, text: str) -> int:
        return len(self.encoding.encode(text, disallowed_special=()))


@dataclass
class HFCounter:
    """A transformers tokenizer and its chat template, as ``hf/`` and ``smollm2`` send."""

    tokenizer: Any
    rule: str

    def prompt(self, messages: Sequence[Message]) -> int:
        from charter.backends.hf import chat_text

        text = chat_text(self.tokenizer, messages)
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def text(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False))


@dataclass
class RewardCounter(HFCounter):
    """A reward model's tokenizer: the conversation and the answer in a closed turn, as TRL's
    RewardTrainer builds them (``rm/`` scores that)."""

    def prompt(self, messages: Sequence[Message]) -> int:
        conversation = [{"role": m.role, "content": m.content} for m in messages]
        enc = self.tokenizer.apply_chat_template(conversation, tokenize=True, return_dict=True)
        return len(enc["input_ids"])


def counter_for(spec: str) -> Counter:
    """The most faithful counter charter has for ``spec`` (see the module notes); a
    tokenizer that cannot be loaded falls back to characters / 4, with a warning."""
    provider, model = parse_spec(spec)
    try:
        if provider == "smollm2":
            return _smollm2()
        if provider == "hf" and model:
            return _hf(model)
        if provider == "rm" and model:
            tokenizer = _hf(model).tokenizer
            return RewardCounter(tokenizer, f"{model}'s tokenizer and chat template")
        if provider == "openai" and model:
            found = _tiktoken(model)
            if found is not None:
                return found
        if provider == "mock":
            return MockCounter()
    except Exception as e:  # an estimate without the tokenizer is still an estimate
        log.warning(
            "%s: its tokenizer did not load (%s); counting characters/%d",
            spec,
            " ".join(str(e).split())[:200],
            CHARS_PER_TOKEN,
        )
    return CharsCounter()


def _smollm2() -> HFCounter:
    """The bundled GGUF's vocabulary and chat template: from the converted folder when it
    exists (a tokenizer.json, quick), else read from the GGUF itself (its metadata only)."""
    from charter.backends.hf import import_transformers
    from charter.backends.smollm2 import converted_path, gguf_file

    transformers = import_transformers()
    folder = converted_path()
    if (folder / "tokenizer_config.json").exists():
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder))
        return HFCounter(tokenizer, "smollm2's tokenizer and chat template")
    src = gguf_file()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
    return HFCounter(tokenizer, "smollm2's tokenizer and chat template (from the GGUF)")


def _hf(path: str) -> HFCounter:
    from charter.backends.hf import import_transformers

    transformers = import_transformers()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    return HFCounter(tokenizer, f"{path}'s tokenizer and chat template")


def _tiktoken(model: str) -> TiktokenCounter | None:
    """tiktoken's encoding for an OpenAI model it knows (None: not installed, or a model
    it does not know, such as one a local server serves)."""
    try:
        import tiktoken  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return None
    try:
        encoding = tiktoken.encoding_for_model(model)
    except KeyError:
        return None
    return TiktokenCounter(encoding, f"tiktoken {encoding.name} (+{PER_MESSAGE} per message)")
