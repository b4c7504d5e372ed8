"""Jobs: wire settings, models, cache, stage and progress together. The CLI and recipes call
these; library users may call the stages directly instead."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from functools import partial
from pathlib import Path

from charter.cache import DEFAULT_NAME, RequestCache
from charter.config import CacheSettings, ModelSettings, RespondJob
from charter.io import count_rows, read_prompts
from charter.model import Model, Prices, RetryPolicy
from charter.pipeline import OutputPaths, RunStats, Stage
from charter.progress import RunProgress, print_summary
from charter.records import PromptRecord
from charter.stages.respond import respond


def open_cache(settings: CacheSettings, output: Path) -> RequestCache | None:
    if not settings.enabled:
        return None
    return RequestCache(settings.path or output.parent / DEFAULT_NAME)


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
        retry=RetryPolicy(attempts=settings.retries + 1),
        cache=cache,
        prices=prices,
    )


def _limited(records: Iterator[PromptRecord], limit: int | None) -> Iterator[PromptRecord]:
    return records if limit is None else itertools.islice(records, limit)


async def run_respond(job: RespondJob, *, show_progress: bool = True) -> RunStats:
    paths = OutputPaths.for_output(job.output)
    cache = open_cache(job.cache, paths.out)
    model = build_model(job.model, cache)
    total = count_rows(job.input) if Path(job.input).exists() else None
    if total is not None and job.limit is not None:
        total = min(total, job.limit)
    try:
        with RunProgress(
            "respond", total, lambda: model.usage.total_tokens, enabled=show_progress
        ) as bar:
            stage: Stage[PromptRecord] = Stage(
                "respond",
                partial(respond, model=model, config=job.respond),
                paths,
                window=max(2 * job.model.concurrency, 8),
                on_result=bar.advance,
            )
            stats = await stage.run(_limited(read_prompts(job.input), job.limit))
            bar.skip(stats.skipped)
    finally:
        await model.aclose()
        if cache is not None:
            cache.close()
    outputs = [f"output: {paths.out}"]
    if paths.failed.exists():
        outputs.append(f"failed records: {paths.failed}")
    print_summary("charter respond", stats, [model], outputs)
    return stats
