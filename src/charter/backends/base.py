"""The backend protocol: one async ``generate`` and, where possible, option log-probabilities.

A backend talks to one model and does nothing else. Retries, timeouts, concurrency limits,
caching and usage accounting live once in :class:`charter.model.Model`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from charter.types import GenerateConfig, Generation, Message, OptionScores


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do, so callers can choose a path before sending anything."""

    option_logprobs: bool = False
    """Can score a closed set of single-token options at the next position."""


@runtime_checkable
class Backend(Protocol):
    """A model provider. Implement ``generate``; implement ``option_logprobs`` if
    ``capabilities.option_logprobs`` is true (otherwise raise LogprobsUnavailable)."""

    name: str
    """The spec it was created from, e.g. ``openai/gpt-4o-mini``; recorded in outputs."""
    capabilities: Capabilities
    # A backend that talks to a server may also set ``server`` (a str naming it, without
    # credentials): the request cache keeps answers from different servers apart.

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


# How option tokens are commonly spelled by tokenizers and servers: a bare letter, with a
# leading space, or wrapped in brackets/punctuation. Matching is on the stripped form.
_OPTION_PUNCT = " \t\n\r()[]{}<>*\"'.:,;-_"


def option_key(token: str) -> str:
    """Normalise a returned token to the option it spells (``' (A'`` -> ``'A'``)."""
    return token.strip(_OPTION_PUNCT)


def option_spellings(option: str) -> list[str]:
    """Spellings of an option to look up in a local tokenizer's vocabulary."""
    return [option, " " + option, "(" + option, " (" + option]
