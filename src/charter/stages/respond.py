"""``respond``: K answers per prompt from the policy model."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from functools import partial
from pathlib import Path

from pydantic import ConfigDict, Field

from charter.config import Sampling, StageOptions
from charter.engines.base import ModelFactory, OutputPaths, Prepared, RunSummary, Work
from charter.fingerprint import settings_of
from charter.io import read_output, read_prompts, write_rows
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
    sft: Path | None = None
    """Also write TRL SFT rows here: one ``messages`` row (the prompt, then the answer) per
    answer, for ``charter train sft``."""
    sft_keep_truncated: bool = False
    """Keep answers cut off at max_tokens in the --sft rows (default: left out)."""

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

    def finish(summary: RunSummary, paths: OutputPaths) -> None:
        if opts.sft is None:
            return
        written, cut, empty = write_sft(
            paths.work, opts.sft, keep_truncated=opts.sft_keep_truncated
        )
        if not written:
            log.warning(
                "no SFT rows written to %s: %d answer(s) were cut off at max_tokens (raise "
                "--max-tokens, or --sft-keep-truncated keeps them) and %d were empty",
                opts.sft,
                cut,
                empty,
            )
            return
        log.info(
            "SFT rows: %d written to %s (%d cut off at max_tokens%s, %d empty left out)",
            written,
            opts.sft,
            cut,
            " kept" if opts.sft_keep_truncated else " left out",
            empty,
        )

    return Prepared(
        settings=settings_of("respond", opts, exclude=["sft", "sft_keep_truncated"]),
        read=partial(read_prompts, opts.input),
        build=build,
        extra_outputs=[opts.sft] if opts.sft is not None else [],
        finish=finish,
    )


def write_sft(responses: Path, dest: Path, *, keep_truncated: bool = False) -> tuple[int, int, int]:
    """TRL conversational SFT rows from a respond output: ``{"id": "ID:k", "messages": [prompt
    turns..., the k-th answer], "model"}``, k counting every answer of the record (across
    models too). Derived from the whole output each time and replaced at once, so after a
    resume it covers every record. Answers cut off at max_tokens are left out unless
    ``keep_truncated``; empty answers always (nothing to learn). Returns (written, cut off,
    empty)."""
    lines: list[str] = []
    cut = empty = 0
    for rec in read_output(responses, ResponseRecord):
        prompt = [m.model_dump() for m in rec.messages]
        for k, answer in enumerate(rec.responses):
            truncated = k < len(rec.finish_reasons) and rec.finish_reasons[k] == "length"
            cut += truncated
            if truncated and not keep_truncated:
                continue
            if not answer.strip():
                empty += 1
                continue
            row = {
                "id": f"{rec.id}:{k}",
                "messages": [*prompt, {"role": "assistant", "content": answer}],
                "model": rec.models[k] if rec.models else rec.model,
            }
            lines.append(json.dumps(row, ensure_ascii=False))
    write_rows(dest, lines)
    return len(lines), cut, empty


SPEC = StageSpec(
    name="respond",
    options=RespondOptions,
    prepare=prepare,
    help="Generate K answers per prompt.",
)
