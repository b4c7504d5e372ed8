"""Typed settings shared by CLI flags and recipe files (one config source)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from charter.stages.respond import RespondConfig


class ModelSettings(BaseModel):
    """Which model to call and how to treat it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    spec: str
    """``provider/model``: openai/NAME, hf/PATH, smollm2, mock/NAME."""
    base_url: str | None = None
    """OpenAI-compatible server URL (default: $OPENAI_BASE_URL, else api.openai.com)."""
    concurrency: int = Field(default=16, ge=1)
    """Requests in flight at once."""
    timeout: float = Field(default=120.0, gt=0)
    """Seconds before one request is abandoned and retried."""
    retries: int = Field(default=5, ge=0)
    """Retries after the first try on 429/5xx/timeouts/connection errors."""
    price_input: float | None = Field(default=None, ge=0)
    """Dollars per million prompt tokens, for the cost estimate."""
    price_output: float | None = Field(default=None, ge=0)
    """Dollars per million completion tokens."""


class CacheSettings(BaseModel):
    """Request cache location."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    """Turn the cache off entirely with False."""
    path: Path | None = None
    """SQLite file; default ``charter-cache.sqlite`` beside the output."""


class RespondJob(BaseModel):
    """Everything ``charter respond`` needs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input: str
    """Input file, dataset folder or ``hf:NAME``."""
    output: Path
    """Output .jsonl or .parquet."""
    model: ModelSettings
    """The model that answers."""
    respond: RespondConfig = RespondConfig()
    """Sampling settings."""
    cache: CacheSettings = CacheSettings()
    """Request cache."""
    limit: int | None = Field(default=None, ge=1)
    """Process only the first N input rows."""
