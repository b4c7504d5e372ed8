"""``respond``: K answers per prompt from the policy model."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from functools import partial

from pydantic import ConfigDict, Field

from charter.config import Sampling, StageOptions
from charter.engines.base import ModelFactory, Prepared, Work
from charter.fingerprint import settings_of
from charter.io import read_prompts
from charter.model import Model
from charter.records import PromptRecord, ResponseRecord
from charter.seeds import sample_seed
from charter.stages.spec import StageSpec
from charter.types import GenerateConfig, Usage

log = logging.getLogger("charter")


class RespondConfig(Sampling):
    """Settings of the respond stage (CLI flags and recipe keys alike)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n: int = Field(default=1, ge=1)
    """Answers per prompt."""


async def respond(
    record: PromptRecord, model: Model | Sequence[Model], config: RespondConfig
) -> ResponseRecord:
    """``config.n`` answers from the model, or from each of several models in turn (their
    answers side by side in one row, so ``label`` compares the models head to head)."""
    models = [model] if isinstance(model, Model) else list(model)
    seeds = [sample_seed(config.seed, record.id, i) for i in range(config.n)]
    generations = await asyncio.gather(
        *(
            m.generate(
                record.messages,
                GenerateConfig(
                    max_tokens=config.max_tokens,
                    temperature=config.temperature,
                    top_p=config.top_p,
                    seed=s,
                ),
            )
            for m in models
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
        model=",".join(m.name for m in models),
        models=[m.name for m in models for _ in seeds] if len(models) > 1 else None,
        seeds=seeds * len(models),
        usage=usage,
    )


class RespondOptions(StageOptions):
    """``charter respond``."""

    model: str
    """Model spec: openai/NAME, hf/PATH, smollm2, mock/NAME; a comma list gives every prompt
    answers from each model, side by side (label then compares them head to head)."""
    n: int = Field(default=1, ge=1)
    """Answers per prompt."""

    def stage_config(self) -> RespondConfig:
        return RespondConfig(n=self.n, **self.sampling())


def prepare(opts: RespondOptions) -> Prepared:
    config = opts.stage_config()

    def build(models: ModelFactory) -> Work:
        if config.n > 1 and config.temperature == 0:
            log.warning("--n %d with --temperature 0 gives identical answers", config.n)
        specs = [m.strip() for m in opts.model.split(",") if m.strip()]
        chosen = [models(spec) for spec in specs]
        return partial(respond, model=chosen[0] if len(chosen) == 1 else chosen, config=config)

    return Prepared(
        settings=settings_of("respond", opts),
        read=partial(read_prompts, opts.input),
        build=build,
    )


SPEC = StageSpec(
    name="respond",
    options=RespondOptions,
    prepare=prepare,
    help="Generate K answers per prompt.",
)
