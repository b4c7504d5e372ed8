"""Typed values that cross module boundaries: messages, sampling settings, generations."""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
)

Role = Literal["system", "user", "assistant"]


class Message(BaseModel):
    """One chat turn."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    role: Role
    """Who speaks: system, user or assistant."""
    content: str
    """The text of the turn."""


class GenerateConfig(BaseModel):
    """Sampling settings. Every field here changes the output, so all are in the cache key."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_tokens: int = Field(default=256, ge=1)
    """Upper bound on generated tokens."""
    temperature: float = Field(default=0.0, ge=0.0)
    """0 means greedy decoding."""
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    """Nucleus sampling mass."""
    stop: tuple[str, ...] = ()
    """Strings that end generation."""
    seed: int | None = None
    """Sampling seed, passed to servers that honour one."""


class Usage(BaseModel):
    """Token counts for one or more requests."""

    model_config = ConfigDict(extra="forbid")

    requests: int = 0
    """Requests sent to the backend (cache hits excluded)."""
    cache_hits: int = 0
    """Requests answered from the cache."""
    prompt_tokens: int = 0
    """Tokens read by the model."""
    completion_tokens: int = 0
    """Tokens written by the model."""
    cached_prompt_tokens: int = 0
    """Of ``prompt_tokens``, those read from the provider's prompt cache (billed lower)."""
    cache_write_tokens: int = 0
    """Of ``prompt_tokens``, those written to the provider's prompt cache (Anthropic bills
    them higher)."""
    batch: Usage | None = None
    """Of these counts, those of requests sent through a provider's batch API (billed at its
    batch discount); None when there were none."""

    @model_serializer(mode="wrap")
    def _without_zeros(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """The counts added for prompt caching and batches are written only when there are
        some: records written before they existed keep their exact bytes."""
        data: dict[str, Any] = handler(self)
        for key in _OMITTED_WHEN_EMPTY:
            if not data.get(key):
                data.pop(key, None)
        return data

    def count(self, result: Generation | OptionScores | Reward, *, batched: bool = False) -> None:
        """Account for one answer: a cache hit costs no request and no tokens. ``batched``:
        it came through a provider's batch API (counted in ``batch`` as well)."""
        if result.cached:
            self.cache_hits += 1
            return
        self.requests += result.requests if isinstance(result, OptionScores) else 1
        self.prompt_tokens += result.prompt_tokens
        if isinstance(result, Generation):
            self.completion_tokens += result.completion_tokens
        if isinstance(result, Generation | OptionScores):
            self.cached_prompt_tokens += result.cached_prompt_tokens
        if isinstance(result, Generation):
            self.cache_write_tokens += result.cache_write_tokens
        if batched:
            if self.batch is None:
                self.batch = Usage()
            self.batch.count(result)

    def add(self, other: Usage) -> None:
        """Add another record's counts (a stage that runs another's work, say)."""
        self.requests += other.requests
        self.cache_hits += other.cache_hits
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.cached_prompt_tokens += other.cached_prompt_tokens
        self.cache_write_tokens += other.cache_write_tokens
        if other.batch is not None:
            if self.batch is None:
                self.batch = Usage()
            self.batch.add(other.batch)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


_OMITTED_WHEN_EMPTY = ("cached_prompt_tokens", "cache_write_tokens", "batch")


FinishReason = Literal["stop", "length", "content_filter", "error", "unknown"]


class TokenLogprob(BaseModel):
    """One generated token, its log-probability and the candidates the server listed there."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    token: str
    """The token as generated."""
    logprob: float
    """Its log-probability."""
    top: tuple[tuple[str, float], ...] = ()
    """(token, log-probability) of the most likely candidates at this position."""


class Generation(BaseModel):
    """What a backend returns for one generate call."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    text: str
    """The generated text."""
    finish_reason: FinishReason = "stop"
    """Why generation ended; ``length`` means it hit ``max_tokens``."""
    prompt_tokens: int = 0
    """Tokens in the prompt."""
    completion_tokens: int = 0
    """Tokens generated."""
    cached_prompt_tokens: int = 0
    """Of ``prompt_tokens``, those read from the provider's prompt cache (billed lower)."""
    cache_write_tokens: int = 0
    """Of ``prompt_tokens``, those written to the provider's prompt cache (Anthropic bills
    them higher)."""
    cached: bool = False
    """True when the wrapper served this from the request cache."""
    reasoning: str | None = None
    """Reasoning a server returned apart from the answer (``reasoning_content`` or
    ``reasoning``): kept for the record, never read for a verdict (``text`` is the answer)."""
    tokens: tuple[TokenLogprob, ...] | None = None
    """Per-token log-probabilities of the whole reply (reasoning included when the server
    gives them), when asked for (``Model.generate(..., token_logprobs=True)``)."""


class OptionScores(BaseModel):
    """Log-probabilities of a closed set of single-token options at the next position."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    logprobs: dict[str, float | None]
    """Raw log-probability of each option (summed over its spellings), not renormalised;
    None if not seen (its probability is then unknown, not zero)."""
    floor: float | None = None
    """Log-probability of the last token of the top list the options were looked up in: the
    most an option missing from it can have. Used as its value (a bound, flagged)."""
    wide: bool = False
    """The options were looked up in a wider top list than usual, as some were missing."""
    seen_mass: float | None = None
    """With ``wide``: the options' raw probability in the usual top list."""
    prompt_tokens: int = 0
    """Tokens in the prompt."""
    cached_prompt_tokens: int = 0
    """Of ``prompt_tokens``, those read from the provider's prompt cache (billed lower)."""
    requests: int = 1
    """HTTP requests it took (2 when a wider top list was asked for)."""
    cached: bool = False
    """True when the wrapper served this from the request cache."""

    @property
    def method(self) -> Literal["logprobs", "wide_logprobs", "topk_bound"]:
        """``logprobs``: every option was in the top list; ``wide_logprobs``: some were found
        only in a wider one (exact all the same); ``topk_bound``: an option was in neither and
        got the list's floor, an upper bound (the label is less sure than the judge may be)."""
        if self.missing and self.floor is not None:
            return "topk_bound"
        return "wide_logprobs" if self.wide else "logprobs"

    @property
    def probs(self) -> dict[str, float]:
        """Probabilities renormalised over the options, a missing option at the list's floor
        when that is known (at 0 when it is not)."""
        seen = {k: v for k, v in self.logprobs.items() if v is not None}
        if seen and self.floor is not None:
            seen = {k: self.floor if v is None else v for k, v in self.logprobs.items()}
        if not seen:
            return {k: 0.0 for k in self.logprobs}
        top = max(seen.values())
        weights = {k: math.exp(v - top) for k, v in seen.items()}
        total = sum(weights.values())
        return {k: weights.get(k, 0.0) / total for k in self.logprobs}

    @property
    def missing(self) -> list[str]:
        """Options that did not appear among the returned log-probabilities."""
        return [k for k, v in self.logprobs.items() if v is None]

    @property
    def mass(self) -> float:
        """Raw probability the model put on the options that were seen, before
        renormalisation: near 1 when it answered with an option, low when it meant to say
        something else (or when options fell outside a server's top list, see ``missing``)."""
        if self.seen_mass is not None:
            return self.seen_mass
        return math.fsum(math.exp(v) for v in self.logprobs.values() if v is not None)


class Reward(BaseModel):
    """A reward model's scalar score for one answer to a conversation."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    value: float
    """The reward head's output: higher is better; only differences between answers to the
    same conversation mean anything (``sigmoid(r_a - r_b)`` is P(A better))."""
    prompt_tokens: int = 0
    """Tokens read: the conversation and the answer, as the reward model saw them."""
    cached: bool = False
    """True when the wrapper served this from the request cache."""
