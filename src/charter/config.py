"""Typed options shared by CLI flags, recipe files and ``charter.run``: one config source.

Every field is a CLI flag of the same name (``max_tokens`` is ``--max-tokens``), a key of a
recipe stage and a keyword of ``charter.run``, so all three describe a job the same way. Each
stage's own options extend :class:`StageOptions` in the stage's module.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class ModelAccess(BaseModel):
    """How the models a stage builds are reached and treated: shared by a stage's options and
    each model's settings, declared once."""

    # Field docstrings are the CLI help texts too (charter.cli_options).
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    base_url: str | None = None
    """OpenAI-compatible server URL, or several endpoints of one deployment separated by
    commas (a list in a recipe): each request goes to the one with the fewest in flight, and
    one that refuses connections or keeps failing is set aside for a while (default:
    $OPENAI_BASE_URL, else api.openai.com)."""
    concurrency: int = Field(default=16, ge=1)
    """Requests in flight per endpoint (shared by the run's models on the same server)."""
    timeout: float = Field(default=120.0, gt=0)
    """Seconds per request before retrying."""
    retries: int = Field(default=5, ge=0)
    """Retries on 429/5xx/timeouts/connection errors."""
    retry_wait: float = Field(default=1.0, ge=0)
    """First backoff in seconds (doubles each retry, plus jitter; Retry-After wins)."""
    price_input: float | None = Field(default=None, ge=0)
    """$ per 1M prompt tokens (cost estimate)."""
    price_output: float | None = Field(default=None, ge=0)
    """$ per 1M completion tokens."""

    @field_validator("base_url", mode="before")
    @classmethod
    def _endpoints_as_text(cls, value: object) -> object:
        """A recipe's list of endpoints travels as one comma-separated string, as the flag."""
        if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
            return ",".join(value)
        return value


class Sampling(BaseModel):
    """How text is sampled: shared by a stage's options and its config, declared once."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    temperature: float = Field(default=0.7, ge=0.0)
    """Sampling temperature (0 = greedy)."""
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    """Nucleus sampling mass."""
    max_tokens: int = Field(default=256, ge=1)
    """Cap on each generated turn."""
    seed: int = 0
    """Base seed: each request's seed derives from it and the record id."""


class ModelSettings(ModelAccess):
    """Which model to call and how to treat it."""

    spec: str
    """``provider/model``: openai/NAME, hf/PATH, smollm2, mock/NAME."""


class StageOptions(ModelAccess, Sampling):
    """Options every stage takes."""

    input: str
    """Input file, dataset folder or ``hf:NAME``."""
    output: Path
    """Output .jsonl or .parquet."""
    skip_invalid: bool = False
    """Write invalid input rows to OUT.rejects.jsonl and go on, instead of stopping."""
    cache: Path | None = None
    """Request cache file (default: charter-cache.sqlite beside the output)."""
    no_cache: bool = False
    """Neither read nor write the request cache."""
    limit: int | None = Field(default=None, ge=1)
    """Only the first N input rows."""
    force: bool = False
    """Resume onto an output made with other settings (see OUT.settings.json)."""
    engine: Literal["local", "ray"] = "local"
    """Where the work runs: ``local`` (this process; the default) or ``ray`` (shards on the
    workers of a Ray cluster; pip install 'charter[ray]')."""
    ray_address: str | None = None
    """With --engine ray: the cluster to join (``auto``: the one this machine belongs to;
    ``ray://HOST:10001``); default: $RAY_ADDRESS, else the cluster running on this machine,
    else a local Ray started for the run."""
    workers: int | None = Field(default=None, ge=1)
    """With --engine ray: workers to run (default: one per CPU of the cluster, or one per GPU
    for local models)."""
    shard_size: int = Field(default=256, ge=1)
    """With --engine ray: input rows per shard, the unit Ray schedules, retries and caches."""
    part_format: Literal["jsonl", "parquet"] = "jsonl"
    """With --engine ray and a folder as the output: the part files' format."""

    output_fields: ClassVar[tuple[str, ...]] = ("output", "cache")
    """The options that name files the run writes (a stage adds its own: ``--sft``,
    ``--pairs``); every other option naming a file is read, and may not be written."""

    @field_validator("input", mode="before")
    @classmethod
    def _path_as_text(cls, value: object) -> object:
        return str(value) if isinstance(value, Path) else value

    def sampling(self) -> dict[str, object]:
        """The sampling settings, for a stage's config."""
        return self.model_dump(include=set(Sampling.model_fields))

    def model_settings(self, spec: str) -> ModelSettings:
        return ModelSettings(spec=spec, **self.model_dump(include=set(ModelAccess.model_fields)))
