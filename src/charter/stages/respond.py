"""``respond``: K answers per prompt from the policy model."""

from __future__ import annotations

import asyncio
import logging
from functools import partial

from pydantic import BaseModel, ConfigDict, Field

from charter.config import StageOptions
from charter.engines.base import ModelFactory, Prepared, Work
from charter.fingerprint import settings_of
from charter.io import read_prompts
from charter.model import Model
from charter.records import PromptRecord, ResponseRecord
from charter.seeds import sample_seed
from charter.stages.spec import StageSpec
from charter.types import GenerateConfig, Usage

log = logging.getLogger("charter")


class RespondConfig(BaseModel):
    """Settings of the respond stage (CLI flags and recipe keys alike)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n: int = Field(default=1, ge=1)
    """Answers per prompt."""
    temperature: float = Field(default=0.7, ge=0.0)
    """Sampling temperature; 0 is greedy (then n > 1 gives identical answers)."""
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    """Nucleus sampling mass."""
    max_tokens: int = Field(default=256, ge=1)
    """Cap on each answer's length."""
    seed: int = 0
    """Base seed; each answer's seed derives from it, the record id and the sample index."""


async def respond(record: PromptRecord, model: Model, config: RespondConfig) -> ResponseRecord:
    seeds = [sample_seed(config.seed, record.id, i) for i in range(config.n)]
    generations = await asyncio.gather(
        *(
            model.generate(
                record.messages,
                GenerateConfig(
                    max_tokens=config.max_tokens,
                    temperature=config.temperature,
                    top_p=config.top_p,
                    seed=s,
                ),
            )
            for s in seeds
        )
    )
    usage = Usage()
    for g in generations:
        usage.count(g)
    return ResponseRecord(
        id=record.id,
        messages=record.messages,
        responses=[g.text for g in generations],
        finish_reasons=[g.finish_reason for g in generations],
        model=model.name,
        seeds=seeds,
        usage=usage,
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


def prepare(opts: RespondOptions) -> Prepared:
    config = opts.stage_config()

    def build(models: ModelFactory) -> Work:
        if config.n > 1 and config.temperature == 0:
            log.warning("--n %d with --temperature 0 gives identical answers", config.n)
        return partial(respond, model=models(opts.model), config=config)

    return Prepared(
        settings=settings_of("respond", opts),
        read=partial(read_prompts, opts.input),
        build=build,
    )


SPEC = StageSpec(
    name="respond",
    options=RespondOptions,
    record=ResponseRecord,
    prepare=prepare,
    help="Generate K answers per prompt.",
)
