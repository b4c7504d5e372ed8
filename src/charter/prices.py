"""What tokens cost: a table of well-known models' published prices, ``--prices FILE`` to add
or override entries, and the arithmetic from a ``Usage`` to dollars.

Prices are dollars per million tokens. A request's prompt tokens are billed in three parts:
those read from the provider's prompt cache (``cached_input``), those written to it
(``cache_write``, Anthropic's 5-minute cache) and the rest (``input``); its completion tokens
at ``output``. Requests sent through a provider's batch API pay ``1 - batch_discount`` of every
one of those prices (both OpenAI and Anthropic take 50 % off, caching discounts stacked).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from charter.errors import ConfigError
from charter.types import Usage
from charter.validation import describe_validation


@dataclass(frozen=True)
class Prices:
    """Dollars per million tokens of one model, and where they come from."""

    input: float
    """Prompt tokens neither read from nor written to the provider's prompt cache."""
    output: float
    """Completion tokens (reasoning tokens included)."""
    cached_input: float | None = None
    """Prompt tokens read from the provider's prompt cache (default: ``input``)."""
    cache_write: float | None = None
    """Prompt tokens written to the provider's prompt cache (default: ``input``)."""
    batch_discount: float = 0.5
    """Fraction taken off every price for requests sent through the provider's batch API."""
    source: str = ""
    """Where the prices were read (a page, a file, the command line)."""
    checked: str = ""
    """The date they were read there (YYYY-MM-DD)."""

    def breakdown(self, usage: Usage) -> dict[str, float]:
        """Dollars by kind of token: ``input``, ``cached_input``, ``cache_write``,
        ``output``, each for live requests and, prefixed ``batch_``, for batched ones."""
        batch = usage.batch or Usage()
        live = _minus(usage, batch)
        parts = {k: v for k, v in self._parts(live, 1.0).items()}
        discounted = self._parts(batch, 1.0 - self.batch_discount)
        parts.update({f"batch_{k}": v for k, v in discounted.items()})
        return parts

    def cost(self, usage: Usage) -> float:
        """Dollars for ``usage`` (cache hits of charter's own request cache cost nothing)."""
        return sum(self.breakdown(usage).values())

    def request_cost(
        self, prompt_tokens: int, completion_tokens: int, *, batched: bool = False
    ) -> float:
        """Dollars for one request with no prompt caching (a budget's worst case)."""
        usage = Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
        factor = 1.0 - self.batch_discount if batched else 1.0
        return sum(self._parts(usage, factor).values())

    def as_dict(self) -> dict[str, Any]:
        """As the ledger and ``--prices`` files write them."""
        return {k: v for k, v in asdict(self).items() if v is not None and v != ""}

    def _parts(self, usage: Usage, factor: float) -> dict[str, float]:
        cached = usage.cached_prompt_tokens
        written = usage.cache_write_tokens
        plain = max(usage.prompt_tokens - cached - written, 0)
        cached_price = self.input if self.cached_input is None else self.cached_input
        write_price = self.input if self.cache_write is None else self.cache_write
        return {
            "input": plain * self.input * factor / 1e6,
            "cached_input": cached * cached_price * factor / 1e6,
            "cache_write": written * write_price * factor / 1e6,
            "output": usage.completion_tokens * self.output * factor / 1e6,
        }


def _minus(usage: Usage, part: Usage) -> Usage:
    return Usage(
        requests=usage.requests - part.requests,
        prompt_tokens=usage.prompt_tokens - part.prompt_tokens,
        completion_tokens=usage.completion_tokens - part.completion_tokens,
        cached_prompt_tokens=usage.cached_prompt_tokens - part.cached_prompt_tokens,
        cache_write_tokens=usage.cache_write_tokens - part.cache_write_tokens,
    )


_OPENAI = "OpenAI API pricing page, developers.openai.com/api/docs/pricing (Standard tier)"
_OPENAI_CHECKED = "2026-12-07"
_ANTHROPIC = "Anthropic pricing page, platform.claude.com/docs/en/about-claude/pricing"
_ANTHROPIC_CHECKED = "2026-12-07"


def _openai(input: float, cached: float, output: float) -> Prices:
    return Prices(input, output, cached_input=cached, source=_OPENAI, checked=_OPENAI_CHECKED)


def _anthropic(input: float, output: float) -> Prices:
    """Anthropic prices cache reads at 0.1x and 5-minute cache writes at 1.25x the input."""
    return Prices(
        input,
        output,
        cached_input=round(input * 0.1, 6),
        cache_write=round(input * 1.25, 6),
        source=_ANTHROPIC,
        checked=_ANTHROPIC_CHECKED,
    )


BUILTIN: dict[str, Prices] = {
    "gpt-4o": _openai(2.50, 1.25, 10.00),
    "gpt-4o-mini": _openai(0.15, 0.075, 0.60),
    "gpt-4.1": _openai(2.00, 0.50, 8.00),
    "gpt-4.1-mini": _openai(0.40, 0.10, 1.60),
    "gpt-4.1-nano": _openai(0.10, 0.025, 0.40),
    "o4-mini": _openai(1.10, 0.275, 4.40),
    "gpt-5": _openai(1.25, 0.125, 10.00),
    "gpt-5-mini": _openai(0.25, 0.025, 2.00),
    "gpt-5-nano": _openai(0.05, 0.005, 0.40),
    "claude-opus-4-1": _anthropic(15.00, 75.00),
    "claude-opus-4-5": _anthropic(5.00, 25.00),
    "claude-sonnet-4": _anthropic(3.00, 15.00),
    "claude-sonnet-4-5": _anthropic(3.00, 15.00),
    "claude-sonnet-4-6": _anthropic(3.00, 15.00),
    "claude-haiku-4-5": _anthropic(1.00, 5.00),
    "claude-3-5-haiku": _anthropic(0.80, 4.00),
}
"""Published prices of well-known models (USD per 1M tokens), each with its page and the
date it was read; ``--prices FILE`` adds models or overrides these."""

_VERSION = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{8}|latest)$")
"""A dated or ``-latest`` variant's suffix: ``gpt-4o-mini-2024-07-18``,
``claude-sonnet-4-5-20250929``, ``claude-3-5-haiku-latest``."""


class PriceEntry(BaseModel):
    """One model's entry in a ``--prices`` file."""

    model_config = ConfigDict(extra="forbid")

    input: float = Field(ge=0)
    """$ per 1M uncached prompt tokens."""
    output: float = Field(ge=0)
    """$ per 1M completion tokens."""
    cached_input: float | None = Field(default=None, ge=0)
    """$ per 1M prompt tokens read from the provider's cache (default: input)."""
    cache_write: float | None = Field(default=None, ge=0)
    """$ per 1M prompt tokens written to the provider's cache (default: input)."""
    batch_discount: float = Field(default=0.5, ge=0, le=1)
    """Fraction off every price through the provider's batch API."""
    source: str = ""
    """Where the prices come from."""
    checked: str = ""
    """When they were read there."""


def load_prices(path: str | Path) -> dict[str, Prices]:
    """A ``--prices`` file (YAML or JSON): model name (or full spec) -> its prices. Anything
    wrong is one ConfigError naming the file and the field."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"--prices {path}: {e.strerror or e}") from e
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        where = ""
        mark = getattr(e, "problem_mark", None)
        if mark is not None:
            where = f", line {mark.line + 1}"
        elif isinstance(e, json.JSONDecodeError):
            where = f", line {e.lineno}"
        raise ConfigError(f"--prices {path}{where}: not valid YAML or JSON") from e
    if not isinstance(data, dict) or not data:
        raise ConfigError(f"--prices {path}: expected a mapping of model name to its prices")
    table: dict[str, Prices] = {}
    for name, entry in data.items():
        if not isinstance(entry, dict):
            raise ConfigError(f"--prices {path}: {name}: expected its input and output prices")
        try:
            parsed = PriceEntry.model_validate(entry)
        except ValidationError as e:
            raise ConfigError(f"--prices {path}: {name}.{describe_validation(e)}") from e
        source = parsed.source or str(path)
        table[str(name)] = Prices(**{**parsed.model_dump(), "source": source})
    return table


class PriceTable:
    """The built-in prices, with a ``--prices`` file's entries over them."""

    def __init__(self, extra: Mapping[str, Prices] | None = None) -> None:
        self.entries: dict[str, Prices] = {**BUILTIN, **(extra or {})}

    @classmethod
    def with_file(cls, path: str | Path | None) -> PriceTable:
        return cls(load_prices(path) if path is not None else None)

    def lookup(self, spec: str) -> Prices | None:
        """The prices of ``spec``: the full spec if the table names it, else the model name
        after the provider (``openai/gpt-4o-mini`` -> ``gpt-4o-mini``), else that name less a
        date or ``-latest`` suffix; None when none matches."""
        name = spec.split("/", 1)[1] if "/" in spec else spec
        for key in (spec, name, _VERSION.sub("", name)):
            if key in self.entries:
                return self.entries[key]
        return None


def price_for(spec: str, prices_file: str | Path | None = None) -> Prices | None:
    """The prices of a model spec from the built-in table (and ``prices_file``); None when
    neither has it."""
    return PriceTable.with_file(prices_file).lookup(spec)
