"""Typed options shared by CLI flags and recipe files: one config source.

Every field here is a CLI flag of the same name (``max_tokens`` is ``--max-tokens``) and a key
of a recipe stage, so a command line and a recipe describe the same job the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from charter.probe import DEFAULT_BASELINE, DEFAULT_INJECTION, DEFAULT_MARGIN
from charter.stages.label import JudgingChoices, LabelConfig
from charter.stages.respond import RespondConfig
from charter.stages.revise import ReviseConfig
from charter.stages.score import ScoreConfig


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
    retry_wait: float = Field(default=1.0, ge=0)
    """First backoff in seconds (doubles each retry, plus jitter; Retry-After wins)."""
    price_input: float | None = Field(default=None, ge=0)
    """Dollars per million prompt tokens, for the cost estimate."""
    price_output: float | None = Field(default=None, ge=0)
    """Dollars per million completion tokens."""


class StageOptions(BaseModel):
    """Options every stage takes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input: str
    """Input file, dataset folder or ``hf:NAME``."""
    output: Path
    """Output .jsonl or .parquet."""
    base_url: str | None = None
    """OpenAI-compatible server URL."""
    concurrency: int = Field(default=16, ge=1)
    """Requests in flight."""
    timeout: float = Field(default=120.0, gt=0)
    """Seconds per request before retrying."""
    retries: int = Field(default=5, ge=0)
    """Retries on 429/5xx/timeouts/connection errors."""
    retry_wait: float = Field(default=1.0, ge=0)
    """First backoff in seconds before a retry."""
    skip_invalid: bool = False
    """Write invalid input rows to OUT.rejects.jsonl and go on, instead of stopping."""
    cache: Path | None = None
    """Request cache file (default: charter-cache.sqlite beside the output)."""
    no_cache: bool = False
    """Neither read nor write the request cache."""
    limit: int | None = Field(default=None, ge=1)
    """Only the first N input rows."""
    price_input: float | None = Field(default=None, ge=0)
    """$ per 1M prompt tokens."""
    price_output: float | None = Field(default=None, ge=0)
    """$ per 1M completion tokens."""
    seed: int = 0
    """Base seed."""
    max_tokens: int = Field(default=256, ge=1)
    """Cap on each generated turn."""
    temperature: float = Field(default=0.7, ge=0.0)
    """Sampling temperature (0 = greedy)."""
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    """Nucleus sampling mass."""
    force: bool = False
    """Resume onto an output made with other settings (see OUT.settings.json)."""

    def model_settings(self, spec: str) -> ModelSettings:
        return ModelSettings(
            spec=spec,
            base_url=self.base_url,
            concurrency=self.concurrency,
            timeout=self.timeout,
            retries=self.retries,
            retry_wait=self.retry_wait,
            price_input=self.price_input,
            price_output=self.price_output,
        )


class RespondOptions(StageOptions):
    """``charter respond``."""

    model: str
    """Model spec: openai/NAME, hf/PATH, smollm2, mock/NAME."""
    n: int = Field(default=1, ge=1)
    """Answers per prompt."""

    def stage_config(self) -> RespondConfig:
        return RespondConfig(
            n=self.n,
            temperature=self.temperature,
            top_p=self.top_p,
            max_tokens=self.max_tokens,
            seed=self.seed,
        )


class ReviseOptions(StageOptions):
    """``charter revise``."""

    model: str
    """Policy model spec: answers and revises."""
    constitution: str
    """Built-in name or constitution file."""
    rounds: int = Field(default=2, ge=1)
    """Critique/revision rounds."""
    critic: str | None = None
    """Model spec for critiques (default: the policy model)."""
    few_shot: str = "auto"
    """auto (the constitution's examples, if any), none, or a file of examples."""
    no_critique: bool = False
    """Revise directly from the revision request."""
    pairs: Path | None = None
    """Also write TRL preference pairs (chosen = final, rejected = initial) here."""

    def stage_config(self) -> ReviseConfig:
        return ReviseConfig(
            rounds=self.rounds,
            critique=not self.no_critique,
            temperature=self.temperature,
            top_p=self.top_p,
            max_tokens=self.max_tokens,
            seed=self.seed,
        )


class LabelOptions(StageOptions, JudgingChoices):
    """``charter label``: the stage options plus how pairs are judged (JudgingChoices)."""

    judge: str
    """Feedback model spec."""
    constitution: str
    """Built-in name or constitution file (its comparison questions are asked)."""
    pairs: Literal["all", "adjacent", "random"] = "all"
    """Which pairs to judge when a row has several answers."""

    max_tokens: int = Field(default=512, ge=1)
    """Cap on CoT reasoning length."""

    def stage_config(self) -> LabelConfig:
        choices = self.model_dump(include=set(JudgingChoices.model_fields))
        return LabelConfig(
            **choices,
            temperature=self.temperature,
            top_p=self.top_p,
            max_tokens=self.max_tokens,
            seed=self.seed,
        )


class ProbeOptions(LabelOptions):
    """``charter probe injection``: labelling options plus what is appended to the loser."""

    injection: str = Field(default=DEFAULT_INJECTION, min_length=1)
    """Text appended to the answer that lost the clean comparison."""
    baseline: str = Field(default=DEFAULT_BASELINE, min_length=1)
    """Harmless text appended the same way: the flip rate any edit causes."""
    margin: float = Field(default=DEFAULT_MARGIN, ge=0.0, lt=0.5)
    """A flip is the edited answer winning with p > 0.5 + margin."""


class ScoreOptions(StageOptions):
    """``charter score``."""

    judge: str
    """Judge model spec."""
    rubric: str
    """Built-in rubric (harmlessness, helpfulness, honesty) or a rubric file."""
    mode: Literal["absolute", "relative"] = "absolute"
    """Grade each answer 1-5, or compare A vs B under the rubric."""
    reference: str | None = None
    """Input field holding a reference answer (absolute mode)."""
    cot: bool | None = None
    """Feedback before the verdict; default on for absolute, off for relative."""
    attempts: int = Field(default=3, ge=1)
    """Tries before an unparseable answer is recorded as failed."""
    pairs: Literal["all", "adjacent", "random"] = "all"
    """Relative mode: which pairs to judge when a row has several answers."""
    temperature: float | None = Field(default=None, ge=0.0)  # type: ignore[assignment]
    """First-try temperature (default: 0 in absolute mode, 0.7 for relative votes/CoT)."""

    def stage_config(self) -> ScoreConfig:
        return ScoreConfig(
            cot=True if self.cot is None else self.cot,
            attempts=self.attempts,
            temperature=0.0 if self.temperature is None else self.temperature,
            top_p=self.top_p,
            max_tokens=self.max_tokens,
            seed=self.seed,
        )

    def relative_config(self) -> LabelConfig:
        return LabelConfig(
            cot=bool(self.cot),
            temperature=0.7 if self.temperature is None else self.temperature,
            top_p=self.top_p,
            max_tokens=self.max_tokens,
            seed=self.seed,
        )


STAGES: dict[str, type[StageOptions]] = {
    "respond": RespondOptions,
    "revise": ReviseOptions,
    "label": LabelOptions,
    "score": ScoreOptions,
}
