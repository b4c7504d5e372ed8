"""``OUT.cost.json``: what an output has cost, beside it.

Each run onto an output adds its models' usage to the ledger (a resumed run adds to what
the earlier runs spent), and the ledger prices the whole at each model's prices: dollars by
model and by kind of token (live and batched input, cached input, cache writes, output), in
all and per 1,000 records, with the prices used and where they come from. A recipe's stages
each write their own; ``recipe_total`` adds them up. The format is in docs/cost.md.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from charter.prices import Prices
from charter.types import Usage

VERSION = 1


class ModelCost(BaseModel):
    """One model's line in the ledger."""

    model_config = ConfigDict(extra="forbid")

    usage: Usage
    """Requests, cache hits and tokens, over every run (``batch``: those sent in batches)."""
    cost: float | None = None
    """Dollars at ``prices``; None when the model has no price."""
    cost_by_kind: dict[str, float] = Field(default_factory=dict)
    """Dollars by kind of token: input, cached_input, cache_write, output, and batch_...
    for batched requests."""
    prices: dict[str, Any] | None = None
    """$ per 1M tokens it was priced at, with their source and the date they were read."""


class Ledger(BaseModel):
    """What an output has cost."""

    model_config = ConfigDict(extra="forbid")

    version: int = VERSION
    stage: str
    """The stage that writes the output."""
    output: str
    """The output file (its name)."""
    runs: int = 0
    """Runs that have written to the output (a resumed run counts again)."""
    records: int = 0
    """Records in the output after the last run."""
    requests: int = 0
    """Requests answered by the models, over every run (cache hits excluded)."""
    tokens: int = 0
    """Prompt and completion tokens, over every run."""
    cost: float | None = None
    """Dollars over every run and model; None when a model has no price."""
    cost_per_1000_records: float | None = None
    """``cost`` per 1,000 records in the output (failed records' requests included in it)."""
    unpriced: list[str] = Field(default_factory=list)
    """Models with no price (their spend is unknown)."""
    models: dict[str, ModelCost] = Field(default_factory=dict)
    """By model spec."""


def ledger_path(out: Path) -> Path:
    """``OUT.cost.json`` for an output ``OUT.jsonl``, ``OUT.parquet`` or folder ``OUT``."""
    name = out.name
    for suffix in (".jsonl", ".parquet"):
        if name.endswith(suffix):
            return out.with_name(name[: -len(suffix)] + ".cost.json")
    return out.with_name(name + ".cost.json")


def read_ledger(path: Path) -> Ledger | None:
    """The ledger at ``path``; None when there is none (or it cannot be read: a ledger is
    an account, not an input, and a damaged one is started again)."""
    try:
        return Ledger.model_validate_json(path.read_text(encoding="utf-8"))
    except (OSError, ValidationError, ValueError):
        return None


def spent(path: Path) -> float:
    """Dollars an output's ledger says were spent on it (0 when there is none)."""
    ledger = read_ledger(path)
    return 0.0 if ledger is None or ledger.cost is None else ledger.cost


def record_run(
    path: Path,
    *,
    stage: str,
    output: Path,
    records: int,
    models: Sequence[tuple[str, Usage, Prices | None]],
) -> Ledger:
    """Add one run's ``(model, usage, prices)`` to the ledger at ``path`` and write it."""
    ledger = read_ledger(path) or Ledger(stage=stage, output=output.name)
    ledger.stage, ledger.output = stage, output.name
    ledger.runs += 1
    ledger.records = records
    for name, usage, prices in models:
        line = ledger.models.get(name) or ModelCost(usage=Usage())
        total = line.usage.model_copy(deep=True)
        total.add(usage)
        if prices is None and line.prices is not None:
            prices = Prices(**line.prices)
        ledger.models[name] = _priced(total, prices)
    _totals(ledger)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(ledger.model_dump_json(indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return ledger


def _priced(usage: Usage, prices: Prices | None) -> ModelCost:
    if prices is None:
        return ModelCost(usage=usage)
    parts = prices.breakdown(usage)
    return ModelCost(
        usage=usage,
        cost=sum(parts.values()),
        cost_by_kind={k: v for k, v in parts.items() if v},
        prices=prices.as_dict(),
    )


def _totals(ledger: Ledger) -> None:
    lines = ledger.models.values()
    ledger.requests = sum(m.usage.requests for m in lines)
    ledger.tokens = sum(m.usage.total_tokens for m in lines)
    ledger.unpriced = sorted(n for n, m in ledger.models.items() if m.cost is None)
    ledger.cost = None if ledger.unpriced else sum(m.cost or 0.0 for m in lines)
    ledger.cost_per_1000_records = None
    if ledger.cost is not None and ledger.records:
        ledger.cost_per_1000_records = ledger.cost * 1000 / ledger.records


def recipe_total(paths: Sequence[Path]) -> tuple[float | None, list[tuple[str, float | None]]]:
    """A recipe's stages' ledgers added up: (dollars, or None when a stage's is unknown;
    each stage's output and dollars)."""
    each: list[tuple[str, float | None]] = []
    for path in paths:
        ledger = read_ledger(path)
        if ledger is not None:
            each.append((ledger.output, ledger.cost))
    known = [c for _, c in each]
    total = None if any(c is None for c in known) else sum(c or 0.0 for c in known)
    return total, each
