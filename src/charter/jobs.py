"""Jobs: wire options, models, cache, stage and progress together. The CLI and recipes call
these; library users may call the stage functions directly instead."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import logging
import os
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from contextlib import AsyncExitStack
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel

from charter.cache import DEFAULT_NAME, RequestCache
from charter.config import (
    LabelOptions,
    ModelSettings,
    ProbeOptions,
    RespondOptions,
    ReviseOptions,
    ScoreOptions,
    StageOptions,
)
from charter.constitution import (
    Constitution,
    FewShotExample,
    load_constitution,
    load_few_shot,
)
from charter.errors import ConfigError, InputError
from charter.fingerprint import RUN_ONLY, check_and_record
from charter.io import (
    JsonlWriter,
    OnInvalid,
    count_rows,
    iter_records,
    jsonl_to_parquet,
    read_answers,
    read_prompts,
)
from charter.model import Model, Prices, RetryPolicy
from charter.pairs import PairRecord, read_pairs
from charter.pipeline import OutputPaths, RunStats, Stage
from charter.progress import RunProgress, print_summary
from charter.prompts import templates_hash
from charter.records import AnswerRecord, PromptRecord
from charter.rubric import load_rubric
from charter.stages.label import label
from charter.stages.respond import respond
from charter.stages.revise import revise
from charter.stages.score import score

log = logging.getLogger("charter")

Work = Callable[[PromptRecord], Awaitable[BaseModel]]
R = TypeVar("R", PromptRecord, PairRecord, AnswerRecord)


def build_model(
    settings: ModelSettings, cache: RequestCache | None, *, share_limit_with: Model | None = None
) -> Model:
    """The model for a spec; ``share_limit_with``: a model on the same server, whose request
    limit this one shares (one ``--concurrency`` per server, not per model)."""
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
        limit=None if share_limit_with is None else share_limit_with.limit,
    )


def _limited(records: Iterator[R], limit: int | None) -> Iterator[R]:
    return records if limit is None else itertools.islice(records, limit)


def settings_of(
    stage: str, opts: StageOptions, *, exclude: Sequence[str] = (), **resolved: object
) -> dict[str, Any]:
    """The settings that define a stage's records (``charter.fingerprint``): the options less
    those that only change how the run goes (and ``exclude``), with files named by their
    content (``resolved`` replaces an option such as ``constitution`` by the loaded
    constitution's hash)."""
    values = opts.model_dump(mode="json", exclude={*RUN_ONLY, *exclude, *resolved})
    return {"stage": stage, "prompts": templates_hash(), **values, **resolved}


def defaults_of(opts: StageOptions) -> dict[str, Any]:
    """Each option's default, as stored in the settings file: an option that an older charter
    did not have reads as its default there, so adding one does not refuse every resume."""
    from pydantic_core import to_jsonable_python

    return {
        name: to_jsonable_python(field.default)
        for name, field in type(opts).model_fields.items()
        if not field.is_required()
    }


def _content_hash(value: object) -> str:
    blob = json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)
    return "sha256:" + hashlib.sha256(blob.encode()).hexdigest()[:16]


def _same_file(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_outputs(inputs: Sequence[str | Path], outputs: Sequence[Path], where: str = "") -> None:
    """Refuse (before anything is opened for writing) an output that is one of the inputs,
    also through symlinks and hard links: appending to the input would corrupt it."""
    for source in inputs:
        if str(source).startswith("hf:"):
            continue
        src = Path(source)
        for out in outputs:
            if _same_file(src, out):
                raise ConfigError(
                    f"{where}{out} is the input file {source}: choose another output "
                    "(charter appends to its outputs)"
                )


def check_distinct(targets: Sequence[Path], out: Path) -> None:
    """Refuse two of a run's files landing on one path (``--pairs`` or ``--cache`` on the
    output or its side files), and OUT.jsonl beside OUT.parquet, which would share the side
    files (failed, rejects, settings)."""
    for i, a in enumerate(targets):
        for b in targets[i + 1 :]:
            if _same_file(a, b):
                raise ConfigError(
                    f"{a} would be written as two of this run's files (output, its failed, "
                    "rejects or settings file, --pairs, --cache): choose distinct paths"
                )
    name = out.name
    stem = name[: -len(".parquet")] if name.endswith(".parquet") else name[: -len(".jsonl")]
    other = out.with_name(stem + (".jsonl" if name.endswith(".parquet") else ".parquet"))
    partial = other.with_name(other.name + ".partial.jsonl")
    for sibling in (other, partial) if other.suffix == ".parquet" else (other,):
        if sibling.exists():
            raise ConfigError(
                f"{sibling} exists beside {out}: they would share {stem}.failed.jsonl and "
                f"{stem}.settings.json; choose another output name"
            )


async def _ticker(bar: RunProgress, every: float) -> None:
    while True:
        await asyncio.sleep(every)
        bar.log_line()


def _progress_every() -> float:
    try:
        return max(0.1, float(os.environ.get("CHARTER_PROGRESS_EVERY", "10")))
    except ValueError:
        return 10.0


async def _run(
    name: str,
    opts: StageOptions,
    read: Callable[[OnInvalid | None], Iterator[R]],
    make_work: Callable[[list[Model], RequestCache | None], Callable[[R], Awaitable[BaseModel]]],
    *,
    settings: dict[str, Any],
    show_progress: bool,
    extra_outputs: Sequence[Path] = (),
) -> tuple[RunStats, OutputPaths]:
    """Lock the output, check it was made with these settings, open the cache, let
    ``make_work`` build models and the stage function, run it over the input with progress,
    and print the summary."""
    paths: OutputPaths = OutputPaths.for_output(opts.output)
    cache_path: Path | None = None
    if not opts.no_cache:
        cache_path = opts.cache or paths.out.parent / DEFAULT_NAME
    targets: list[Path] = list(paths.files) + list(extra_outputs)
    if cache_path is not None:
        targets.append(cache_path)
    check_outputs([opts.input], targets)
    check_distinct(targets, paths.out)
    total = count_rows(opts.input) if Path(opts.input).is_file() else None
    if total is not None and opts.limit is not None:
        total = min(total, opts.limit)
    models: list[Model] = []
    rejected = 0
    # The lock comes first: a refused second process must not touch any file of the first.
    writer = JsonlWriter(paths.work, exclusive=True)
    async with AsyncExitStack() as stack:
        stack.callback(writer.close)  # closing twice is harmless; the stage closes it first
        check_and_record(
            paths.settings,
            settings,
            has_records=paths.work.exists() and paths.work.stat().st_size > 0,
            force=opts.force,
            output=paths.out,
            defaults=defaults_of(opts),
        )
        on_invalid: OnInvalid | None = None
        if opts.skip_invalid:
            paths.rejects.unlink(missing_ok=True)  # rebuilt from the input on every run
            rejects = JsonlWriter(paths.rejects)
            stack.callback(rejects.close)

            def on_invalid(error: InputError, row: object) -> None:
                nonlocal rejected
                rejected += 1
                rejects.write({"error": str(error), "row": row})

        cache = RequestCache(cache_path) if cache_path is not None else None
        if cache is not None:
            stack.callback(cache.close)
        work = make_work(models, cache)
        for m in models:
            stack.push_async_callback(m.aclose)
        tokens = lambda: sum(m.usage.total_tokens for m in models)  # noqa: E731
        with RunProgress(name, total, tokens, enabled=show_progress) as bar:
            ticker = None
            if show_progress and not bar.is_terminal:
                ticker = asyncio.ensure_future(_ticker(bar, _progress_every()))
            try:
                stage: Stage[R] = Stage(
                    name,
                    work,
                    paths,
                    window=max(2 * opts.concurrency, 8),
                    on_result=bar.advance,
                    on_skip=bar.skip_one,
                )
                stats = await stage.run(
                    _limited(read(on_invalid), opts.limit),
                    writer=writer,
                    complete=opts.limit is None,
                )
            finally:
                if ticker is not None:
                    ticker.cancel()
    outputs = [f"output: {paths.out}"]
    if paths.failed.exists():
        outputs.append(f"failed records: {paths.failed}")
    if rejected:
        outputs.append(f"invalid input rows skipped: {rejected:,} (see {paths.rejects})")
    print_summary(f"charter {name}", stats, models, outputs)
    _report_stale(stats, paths.out)
    if stats.failed and not stats.written and not stats.skipped:
        log.warning("every record failed (%d); the reasons are in %s", stats.failed, paths.failed)
    return stats, paths


def _report_stale(stats: RunStats, out: Path) -> None:
    def some(ids: list[str]) -> str:
        shown = ", ".join(ids[:5])
        return shown + (f" and {len(ids) - 5:,} more" if len(ids) > 5 else "")

    if stats.changed:
        log.warning(
            "%d input row(s) changed since their records were written to %s; those records are "
            "stale and were kept (delete them from the output to redo them): %s",
            len(stats.changed),
            out,
            some(stats.changed),
        )
    if stats.orphans:
        log.warning(
            "%d record(s) in %s match no input row any more (rows edited or removed; with "
            "content-hash ids an edited row gets a new id): %s",
            len(stats.orphans),
            out,
            some(stats.orphans),
        )


async def run_respond(opts: RespondOptions, *, show_progress: bool = True) -> RunStats:
    config = opts.stage_config()
    if config.n > 1 and config.temperature == 0:
        log.warning("--n %d with --temperature 0 gives identical answers", config.n)

    def make_work(models: list[Model], cache: RequestCache | None) -> Work:
        model = build_model(opts.model_settings(opts.model), cache)
        models.append(model)
        return partial(respond, model=model, config=config)

    stats, _ = await _run(
        "respond",
        opts,
        partial(read_prompts, opts.input),
        make_work,
        settings=settings_of("respond", opts),
        show_progress=show_progress,
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


def _revise_setup(opts: ReviseOptions) -> tuple[Constitution, tuple[FewShotExample, ...]]:
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
    return constitution, few_shot


async def run_revise(opts: ReviseOptions, *, show_progress: bool = True) -> RunStats:
    constitution, few_shot = _revise_setup(opts)
    config = opts.stage_config()

    def make_work(models: list[Model], cache: RequestCache | None) -> Work:
        policy = build_model(opts.model_settings(opts.model), cache)
        models.append(policy)
        critic = policy
        if opts.critic and opts.critic != opts.model:
            # same --base-url, same server: one request limit for both
            critic = build_model(opts.model_settings(opts.critic), cache, share_limit_with=policy)
            models.append(critic)
        return partial(
            revise,
            policy=policy,
            critic=critic,
            constitution=constitution,
            config=config,
            few_shot=few_shot,
        )

    settings = settings_of(
        "revise",
        opts,
        exclude=["pairs", "critic"],
        critic=opts.critic or opts.model,
        constitution=constitution.hash,
        few_shot=_content_hash([ex.model_dump(mode="json") for ex in few_shot]),
    )
    stats, paths = await _run(
        "revise",
        opts,
        partial(read_prompts, opts.input),
        make_work,
        settings=settings,
        show_progress=show_progress,
        extra_outputs=[opts.pairs] if opts.pairs is not None else [],
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
        for rec in iter_records(revisions):
            if not {"id", "prompt", "initial", "final"} <= rec.keys():
                continue
            if rec["final"] == rec["initial"]:
                same += 1
                continue
            writer.write(
                {
                    "id": rec["id"],
                    "prompt": rec["prompt"],
                    "chosen": [{"role": "assistant", "content": rec["final"]}],
                    "rejected": [{"role": "assistant", "content": rec["initial"]}],
                    "constitution_hash": rec.get("constitution_hash"),
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


class _PairReader:
    """Reads the pairs of a label/score/probe input and counts the rows that gave none."""

    def __init__(self, opts: LabelOptions | ScoreOptions) -> None:
        self.opts = opts
        self.no_pair: list[str] = []

    def __call__(self, on_invalid: OnInvalid | None) -> Iterator[PairRecord]:
        self.no_pair.clear()
        return read_pairs(
            self.opts.input,
            mode=self.opts.pairs,
            seed=self.opts.seed,
            on_invalid=on_invalid,
            on_no_pair=self.no_pair.append,
        )

    def report(self, stats: RunStats) -> None:
        """Say how many rows had nothing to compare; fail when no row had anything."""
        if not self.no_pair:
            return
        n = len(self.no_pair)
        first = self.no_pair[0]
        if stats.written + stats.skipped + stats.failed == 0:
            raise InputError(
                f"{self.opts.input}: no pair to judge: all {n:,} row(s) have fewer than two "
                f"distinct answers (first: {first})"
            )
        log.warning(
            "%d input row(s) have fewer than two distinct answers and gave no pair (first: %s)",
            n,
            first,
        )


async def _run_judged(
    name: str,
    opts: LabelOptions | ScoreOptions,
    read: Callable[[OnInvalid | None], Iterator[R]],
    work_for: Callable[[Model], Callable[[R], Awaitable[BaseModel]]],
    *,
    settings: dict[str, Any],
    show_progress: bool,
) -> tuple[RunStats, OutputPaths]:
    """Run a stage whose only model is the judge: build it, hand it to ``work_for``."""

    def make_work(
        models: list[Model], cache: RequestCache | None
    ) -> Callable[[R], Awaitable[BaseModel]]:
        judge = build_model(opts.model_settings(opts.judge), cache)
        models.append(judge)
        return work_for(judge)

    stats, paths = await _run(
        name, opts, read, make_work, settings=settings, show_progress=show_progress
    )
    if isinstance(read, _PairReader):
        read.report(stats)
    return stats, paths


def _label_setup(opts: LabelOptions) -> Constitution:
    constitution = load_constitution(opts.constitution)
    if opts.principles > len(constitution.principles):
        raise ConfigError(
            f"--principles {opts.principles} exceeds the {len(constitution.principles)} "
            f"principles of {constitution.name!r}"
        )
    return constitution


async def run_label(opts: LabelOptions, *, show_progress: bool = True) -> RunStats:
    constitution = _label_setup(opts)
    config = opts.stage_config()

    def work_for(judge: Model) -> Callable[[PairRecord], Awaitable[BaseModel]]:
        if not judge.capabilities.option_logprobs:
            how = f"{config.votes} votes" if config.votes > 1 else "one parsed answer"
            log.warning(
                "%s gives no log-probabilities: labels come from %s per judgement", judge.name, how
            )
        return partial(label, judge=judge, constitution=constitution, config=config)

    stats, paths = await _run_judged(
        "label",
        opts,
        _PairReader(opts),
        work_for,
        settings=settings_of("label", opts, constitution=constitution.hash),
        show_progress=show_progress,
    )
    _label_summary(paths.work)
    return stats


def _label_summary(path: Path) -> None:
    """One line a practitioner wants before trusting the labels."""
    n = inconsistent = low = 0
    confidence = 0.0
    for rec in iter_records(path):
        n += 1
        inconsistent += rec.get("position_consistent") is False
        low += bool(rec.get("low_confidence"))
        confidence += abs(float(rec.get("p_a", 0.5)) - 0.5)
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
    # --attempts decides how hard to try, not what a written record says
    settings = settings_of("score", opts, exclude=["attempts"], rubric=rubric.hash)
    if opts.mode == "relative":
        constitution = rubric.as_constitution()
        relative = opts.relative_config()
        stats, paths = await _run_judged(
            "score",
            opts,
            _PairReader(opts),
            lambda judge: partial(label, judge=judge, constitution=constitution, config=relative),
            settings=settings,
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
        settings=settings,
        show_progress=show_progress,
    )
    _score_summary(paths.work)
    return stats


def _score_summary(path: Path) -> None:
    counts: dict[int, int] = {}
    for rec in iter_records(path):
        if isinstance(rec.get("score"), int):
            counts[rec["score"]] = counts.get(rec["score"], 0) + 1
    n = sum(counts.values())
    if n:
        mean = sum(k * v for k, v in counts.items()) / n
        spread = ", ".join(f"{k}: {counts[k]}" for k in sorted(counts))
        log.info("scores: %d answers, mean %.2f (%s)", n, mean, spread)


async def run_probe_injection(opts: ProbeOptions, *, show_progress: bool = True) -> RunStats:
    """Label every pair clean, with a harmless baseline text and with the injection appended
    to the losing answer; log the flip rates side by side."""
    from charter.probe import probe_injection, summarize

    constitution = _label_setup(opts)
    config = opts.stage_config()
    stats, paths = await _run_judged(
        "probe",
        opts,
        _PairReader(opts),
        lambda judge: partial(
            probe_injection,
            judge=judge,
            constitution=constitution,
            config=config,
            injection=opts.injection,
            baseline=opts.baseline,
            margin=opts.margin,
        ),
        settings=settings_of("probe", opts, constitution=constitution.hash),
        show_progress=show_progress,
    )
    s = summarize(paths.work)
    log.info(
        "injection probe: %d pairs; flip rate %.3f (%d flipped beyond a margin of %.2f), "
        "harmless-baseline flip rate %.3f (%d), excess %+.3f; mean shift toward the injected "
        "answer %+.3f (baseline %+.3f)",
        s.pairs,
        s.flip_rate,
        s.flips,
        opts.margin,
        s.baseline_flip_rate,
        s.baseline_flips,
        s.flip_rate - s.baseline_flip_rate,
        s.mean_shift,
        s.mean_baseline_shift,
    )
    return stats


def preflight(opts: StageOptions) -> None:
    """Everything a stage checks before its first request (constitution, rubric, few-shot
    files, principle counts), so a recipe can check every stage before running any."""
    if isinstance(opts, ReviseOptions):
        _revise_setup(opts)
    elif isinstance(opts, LabelOptions):
        _label_setup(opts)
    elif isinstance(opts, ScoreOptions):
        load_rubric(opts.rubric)


STAGE_RUNNERS: dict[str, Callable[..., Coroutine[Any, Any, RunStats]]] = {
    "respond": run_respond,
    "revise": run_revise,
    "label": run_label,
    "score": run_score,
}
