"""Jobs: wire options, models, cache, stage and progress together. The CLI and recipes call
these; library users may call the stage functions directly instead."""

from __future__ import annotations

import itertools
import json
import logging
import os
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from contextlib import AsyncExitStack
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel

from charter.cache import DEFAULT_NAME, RequestCache
from charter.config import (
    LabelOptions,
    ModelSettings,
    RespondOptions,
    ReviseOptions,
    ScoreOptions,
    StageOptions,
)
from charter.constitution import FewShotExample, load_constitution, load_few_shot
from charter.errors import ConfigError, InputError
from charter.io import JsonlWriter, OnInvalid, count_rows, jsonl_to_parquet, read_prompts
from charter.model import Model, Prices, RetryPolicy
from charter.pairs import PairRecord, read_pairs
from charter.pipeline import OutputPaths, RunStats, Stage
from charter.progress import RunProgress, print_summary
from charter.records import PromptRecord
from charter.rubric import load_rubric
from charter.stages.label import label
from charter.stages.respond import respond
from charter.stages.revise import revise
from charter.stages.score import AnswerRecord, read_answers, score

log = logging.getLogger("charter")

Work = Callable[[PromptRecord], Awaitable[BaseModel]]
R = TypeVar("R", PromptRecord, PairRecord, AnswerRecord)


def open_cache(opts: StageOptions, output: Path) -> RequestCache | None:
    if opts.no_cache:
        return None
    return RequestCache(opts.cache or output.parent / DEFAULT_NAME)


def build_model(settings: ModelSettings, cache: RequestCache | None) -> Model:
    prices = None
    if settings.price_input is not None or settings.price_output is not None:
        prices = Prices(settings.price_input or 0.0, settings.price_output or 0.0)
    options: dict[str, object] = {"timeout": settings.timeout}
    if settings.base_url:
        options["base_url"] = settings.base_url
    return Model.from_spec(
        settings.spec,
        backend_options=options,
        concurrency=settings.concurrency,
        timeout=settings.timeout,
        retry=RetryPolicy(attempts=settings.retries + 1, initial=settings.retry_wait),
        cache=cache,
        prices=prices,
    )


def _limited(records: Iterator[R], limit: int | None) -> Iterator[R]:
    return records if limit is None else itertools.islice(records, limit)


async def _run(
    name: str,
    opts: StageOptions,
    read: Callable[[OnInvalid | None], Iterator[R]],
    make_work: Callable[[list[Model], RequestCache | None], Callable[[R], Awaitable[BaseModel]]],
    *,
    show_progress: bool,
) -> tuple[RunStats, OutputPaths]:
    """Open the cache, let ``make_work`` build models and the stage function, run it over the
    input with a progress bar, and print the summary."""
    paths = OutputPaths.for_output(opts.output)
    total = count_rows(opts.input) if Path(opts.input).is_file() else None
    if total is not None and opts.limit is not None:
        total = min(total, opts.limit)
    models: list[Model] = []
    rejected = 0
    async with AsyncExitStack() as stack:
        on_invalid: OnInvalid | None = None
        if opts.skip_invalid:
            paths.rejects.unlink(missing_ok=True)  # rebuilt from the input on every run
            rejects = JsonlWriter(paths.rejects)
            stack.callback(rejects.close)

            def on_invalid(error: InputError, row: object) -> None:
                nonlocal rejected
                rejected += 1
                rejects.write({"error": str(error), "row": row})

        cache = open_cache(opts, paths.out)
        if cache is not None:
            stack.callback(cache.close)
        work = make_work(models, cache)
        for m in models:
            stack.push_async_callback(m.aclose)
        tokens = lambda: sum(m.usage.total_tokens for m in models)  # noqa: E731
        with RunProgress(name, total, tokens, enabled=show_progress) as bar:
            stage: Stage[R] = Stage(
                name, work, paths, window=max(2 * opts.concurrency, 8), on_result=bar.advance
            )
            stats = await stage.run(_limited(read(on_invalid), opts.limit))
            bar.skip(stats.skipped)
    outputs = [f"output: {paths.out}"]
    if paths.failed.exists():
        outputs.append(f"failed records: {paths.failed}")
    if rejected:
        outputs.append(f"invalid input rows skipped: {rejected:,} (see {paths.rejects})")
    print_summary(f"charter {name}", stats, models, outputs)
    return stats, paths


async def run_respond(opts: RespondOptions, *, show_progress: bool = True) -> RunStats:
    config = opts.stage_config()
    if config.n > 1 and config.temperature == 0:
        log.warning("--n %d with --temperature 0 gives identical answers", config.n)

    def make_work(models: list[Model], cache: RequestCache | None) -> Work:
        model = build_model(opts.model_settings(opts.model), cache)
        models.append(model)
        return partial(respond, model=model, config=config)

    stats, _ = await _run(
        "respond", opts, partial(read_prompts, opts.input), make_work, show_progress=show_progress
    )
    return stats


def resolve_few_shot(
    choice: str, constitution_examples: tuple[FewShotExample, ...]
) -> tuple[FewShotExample, ...]:
    if choice == "auto":
        return constitution_examples
    if choice == "none":
        return ()
    return load_few_shot(choice)


async def run_revise(opts: ReviseOptions, *, show_progress: bool = True) -> RunStats:
    constitution = load_constitution(opts.constitution)
    if opts.rounds > len(constitution.principles):
        raise ConfigError(
            f"--rounds {opts.rounds} needs that many distinct principles; "
            f"{constitution.name!r} has {len(constitution.principles)}"
        )
    few_shot = resolve_few_shot(opts.few_shot, constitution.few_shot)
    for ex in few_shot:
        if ex.principle_id is not None:
            constitution.principle(ex.principle_id)  # fail early on a dangling reference
    config = opts.stage_config()

    def make_work(models: list[Model], cache: RequestCache | None) -> Work:
        policy = build_model(opts.model_settings(opts.model), cache)
        models.append(policy)
        critic = policy
        if opts.critic and opts.critic != opts.model:
            critic = build_model(opts.model_settings(opts.critic), cache)
            models.append(critic)
        return partial(
            revise,
            policy=policy,
            critic=critic,
            constitution=constitution,
            config=config,
            few_shot=few_shot,
        )

    stats, paths = await _run(
        "revise", opts, partial(read_prompts, opts.input), make_work, show_progress=show_progress
    )
    if opts.pairs is not None:
        written, same = write_pairs(paths.work, opts.pairs)
        log.info(
            "preference pairs: %d written to %s (%d unrevised records left out)",
            written,
            opts.pairs,
            same,
        )
    return stats


def write_pairs(revisions: Path, dest: Path) -> tuple[int, int]:
    """TRL preference pairs from a revise output: prompt, chosen = final, rejected = initial.
    Derived from the whole output each time, so it is always consistent with it after a resume.
    Records whose final answer equals the initial one carry no preference and are left out."""
    work = dest.with_name(dest.name + ".partial.jsonl") if dest.suffix == ".parquet" else dest
    tmp = work.with_name(work.name + ".tmp")
    written = same = 0
    writer = JsonlWriter(tmp)
    try:
        with revisions.open("r", encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    continue
                rec = json.loads(line)
                if rec["final"] == rec["initial"]:
                    same += 1
                    continue
                writer.write(
                    {
                        "id": rec["id"],
                        "prompt": rec["prompt"],
                        "chosen": [{"role": "assistant", "content": rec["final"]}],
                        "rejected": [{"role": "assistant", "content": rec["initial"]}],
                        "constitution_hash": rec["constitution_hash"],
                    }
                )
                written += 1
    finally:
        writer.close()
    os.replace(tmp, work)
    if work != dest:
        jsonl_to_parquet(work, dest)
        work.unlink()
    return written, same


def _pair_reader(
    opts: LabelOptions | ScoreOptions,
) -> Callable[[OnInvalid | None], Iterator[PairRecord]]:
    def read(on_invalid: OnInvalid | None) -> Iterator[PairRecord]:
        return read_pairs(opts.input, mode=opts.pairs, seed=opts.seed, on_invalid=on_invalid)

    return read


async def _run_judged(
    name: str,
    opts: LabelOptions | ScoreOptions,
    read: Callable[[OnInvalid | None], Iterator[R]],
    work_for: Callable[[Model], Callable[[R], Awaitable[BaseModel]]],
    *,
    show_progress: bool,
) -> tuple[RunStats, OutputPaths]:
    """Run a stage whose only model is the judge: build it, hand it to ``work_for``."""

    def make_work(
        models: list[Model], cache: RequestCache | None
    ) -> Callable[[R], Awaitable[BaseModel]]:
        judge = build_model(opts.model_settings(opts.judge), cache)
        models.append(judge)
        return work_for(judge)

    return await _run(name, opts, read, make_work, show_progress=show_progress)


async def run_label(opts: LabelOptions, *, show_progress: bool = True) -> RunStats:
    constitution = load_constitution(opts.constitution)
    if opts.principles > len(constitution.principles):
        raise ConfigError(
            f"--principles {opts.principles} exceeds the {len(constitution.principles)} "
            f"principles of {constitution.name!r}"
        )
    config = opts.stage_config()

    def work_for(judge: Model) -> Callable[[PairRecord], Awaitable[BaseModel]]:
        if not judge.capabilities.option_logprobs:
            how = f"{config.votes} votes" if config.votes > 1 else "one parsed answer"
            log.warning(
                "%s gives no log-probabilities: labels come from %s per judgement", judge.name, how
            )
        return partial(label, judge=judge, constitution=constitution, config=config)

    stats, paths = await _run_judged(
        "label", opts, _pair_reader(opts), work_for, show_progress=show_progress
    )
    _label_summary(paths.work)
    return stats


def _label_summary(path: Path) -> None:
    """One line a practitioner wants before trusting the labels."""
    n = inconsistent = low = 0
    confidence = 0.0
    with path.open("r", encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            n += 1
            inconsistent += rec["position_consistent"] is False
            low += bool(rec["low_confidence"])
            confidence += abs(rec["p_a"] - 0.5)
    if n:
        log.info(
            "labels: %d pairs, %d position-inconsistent (%.0f%%), %d below --min-confidence, "
            "mean |p_a - 0.5| = %.3f",
            n,
            inconsistent,
            100 * inconsistent / n,
            low,
            confidence / n,
        )


async def run_score(opts: ScoreOptions, *, show_progress: bool = True) -> RunStats:
    rubric = load_rubric(opts.rubric)
    if opts.mode == "relative":
        constitution = rubric.as_constitution()
        relative = opts.relative_config()
        stats, paths = await _run_judged(
            "score",
            opts,
            _pair_reader(opts),
            lambda judge: partial(label, judge=judge, constitution=constitution, config=relative),
            show_progress=show_progress,
        )
        _label_summary(paths.work)
        return stats

    config = opts.stage_config()

    def read(on_invalid: OnInvalid | None) -> Iterator[AnswerRecord]:
        return read_answers(opts.input, opts.reference, on_invalid)

    stats, paths = await _run_judged(
        "score",
        opts,
        read,
        lambda judge: partial(score, judge=judge, rubric=rubric, config=config),
        show_progress=show_progress,
    )
    _score_summary(paths.work)
    return stats


def _score_summary(path: Path) -> None:
    counts: dict[int, int] = {}
    with path.open("r", encoding="utf-8") as f:
        for line in f:
            s = json.loads(line)["score"]
            counts[s] = counts.get(s, 0) + 1
    n = sum(counts.values())
    if n:
        mean = sum(k * v for k, v in counts.items()) / n
        spread = ", ".join(f"{k}: {counts[k]}" for k in sorted(counts))
        log.info("scores: %d answers, mean %.2f (%s)", n, mean, spread)


async def run_probe_injection(
    opts: LabelOptions, injection: str, *, show_progress: bool = True
) -> dict[str, float]:
    """Label every pair clean and injected; return and log the flip rate."""
    from charter.probe import probe_injection

    constitution = load_constitution(opts.constitution)
    config = opts.stage_config()
    _, paths = await _run_judged(
        "probe",
        opts,
        _pair_reader(opts),
        lambda judge: partial(
            probe_injection,
            judge=judge,
            constitution=constitution,
            config=config,
            injection=injection,
        ),
        show_progress=show_progress,
    )
    n = flips = 0
    shift = 0.0
    with paths.work.open("r", encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            n += 1
            flips += bool(rec["flipped"])
            shift += rec["shift"]
    summary = {
        "pairs": n,
        "flip_rate": flips / n if n else 0.0,
        "mean_shift": shift / n if n else 0.0,
    }
    log.info(
        "injection probe: %d pairs, flip rate %.3f (%d flipped), mean shift toward the "
        "injected answer %+.3f",
        n,
        summary["flip_rate"],
        flips,
        summary["mean_shift"],
    )
    return summary


STAGE_RUNNERS: dict[str, Callable[..., Coroutine[Any, Any, RunStats]]] = {
    "respond": run_respond,
    "revise": run_revise,
    "label": run_label,
    "score": run_score,
}
