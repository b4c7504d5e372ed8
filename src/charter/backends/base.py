"""The backend protocol: one async ``generate`` and, where possible, option log-probabilities.

A backend talks to one model and does nothing else. Retries, timeouts, concurrency limits,
caching and usage accounting live once in :class:`charter.model.Model`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from charter.errors import ConfigError
from charter.types import GenerateConfig, Generation, Message, OptionScores


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do, so callers can choose a path before sending anything."""

    option_logprobs: bool = False
    """Can score a closed set of single-token options at the next position."""
    continue_final: bool = False
    """``option_logprobs`` continues a last assistant message (its text is the start of the
    answer) instead of opening a new turn after it."""
    reward: bool = False
    """A reward model: scores an answer with one number (``reward``) and writes no text, so
    it can judge (label, score) but not respond or revise."""
    principles: bool = False
    """A principle-conditioned reward model: its ``reward`` scores under the principle it is
    given (``principle=``, the principle's rule), and needs one."""


@runtime_checkable
class Backend(Protocol):
    """A model provider. Implement ``generate``; implement ``option_logprobs`` if
    ``capabilities.option_logprobs`` is true (otherwise raise LogprobsUnavailable).

    A reward model sets ``capabilities.reward`` and implements, besides, an optional
    ``async def reward(messages: Sequence[Message], response: str) -> Reward``: the scalar
    reward of ``response`` as the assistant's answer to ``messages`` (with
    ``capabilities.principles``, a keyword ``principle: str | None``: the rule it scores
    under). Its ``generate`` raises a ConfigError (it cannot write text)."""

    name: str
    """The spec it was created from, e.g. ``openai/gpt-4o-mini``; recorded in outputs."""
    capabilities: Capabilities
    # A backend that talks to a server may also set ``server`` (a str naming it, without
    # credentials): the request cache keeps answers from different servers apart. A local
    # backend whose weights can change under one name (rm/DIR) sets it to their fingerprint.

    async def generate(self, messages: Sequence[Message], config: GenerateConfig) -> Generation:
        """Continue the conversation with one assistant turn."""
        ...

    async def option_logprobs(
        self, messages: Sequence[Message], options: Sequence[str], config: GenerateConfig
    ) -> OptionScores:
        """Log-probability of each option (e.g. ``A``/``B`` or ``1``..``5``) as the first
        token of the next assistant turn."""
        ...

    async def aclose(self) -> None:
        """Release connections, threads or model memory."""
        ...


class BackendOptions(BaseModel):
    """Options of a built-in backend, checked before anything is loaded or sent.

    charter builds every model with the run's ``timeout`` and, when one is set, its
    ``base_url`` (``--base-url`` applies to a critic or judge too), whatever the provider. So
    every built-in backend accepts these two; those that do not talk to a server ignore them
    (the model wrapper enforces the timeout for all). A backend adds its own options by
    subclassing; any other key is an error, so a typo in a recipe is reported, not dropped.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    timeout: float | None = Field(default=None, gt=0)
    """Seconds per request; the model wrapper enforces it for every backend."""
    base_url: str | None = None
    """Server URL, for backends that talk to one; ignored by local ones."""


OptionsT = TypeVar("OptionsT", bound=BackendOptions)


def parse_options(backend: str, schema: type[OptionsT], options: Mapping[str, object]) -> OptionsT:
    """Validate ``options`` for ``backend`` (``openai/``, ``smollm2``, ...), or raise a
    one-line ConfigError naming the backend and the offending key. Values are never echoed:
    an api_key or a base_url may carry credentials."""
    try:
        return schema.model_validate(dict(options))
    except ValidationError as e:
        raise ConfigError(f"{backend} backend: {_describe(e, schema)}") from e


def _describe(error: ValidationError, schema: type[BackendOptions]) -> str:
    errors = error.errors()
    unknown = [str(err["loc"][0]) for err in errors if err["type"] == "extra_forbidden"]
    if unknown:
        noun = "option" if len(unknown) == 1 else "options"
        names = ", ".join(repr(k) for k in unknown)
        return f"unknown {noun} {names} (known: {', '.join(sorted(schema.model_fields))})"
    first = errors[0]
    key = ".".join(str(part) for part in first["loc"])
    msg = first["msg"]
    return f"option {key!r}: {msg[:1].lower()}{msg[1:]}"


# How option tokens are commonly spelled by tokenizers and servers: a bare letter, with a
# leading space, or wrapped in brackets/punctuation. Matching is on the stripped form.
_OPTION_PUNCT = " \t\n\r()[]{}<>*\"'.:,;-_"


def option_key(token: str) -> str:
    """Normalise a returned token to the option it spells (``' (A'`` -> ``'A'``)."""
    return token.strip(_OPTION_PUNCT)


def option_spellings(option: str) -> list[str]:
    """Spellings of an option to look up in a local tokenizer's vocabulary."""
    return [option, " " + option, "(" + option, " (" + option]
