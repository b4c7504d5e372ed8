"""Command line: parse flags into typed settings, call the library, format errors as one line.

Heavy modules (openai, torch) are imported only inside the commands that need them, so
``charter --help`` stays fast.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from charter.errors import CharterError

app = typer.Typer(
    name="charter",
    help="Constitutional AI and RLAIF: a written constitution plus any LLM into training data.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
constitution_app = typer.Typer(help="List, show and validate constitutions.", no_args_is_help=True)
cache_app = typer.Typer(help="Inspect or clear a request cache.", no_args_is_help=True)
app.add_typer(constitution_app, name="constitution")
app.add_typer(cache_app, name="cache")

F = TypeVar("F", bound=Callable[..., Any])
EXIT_ERROR = 2


def _fail(message: str, code: int = EXIT_ERROR) -> typer.Exit:
    from charter.progress import console

    console.print(f"[bold red]error:[/] {message}", highlight=False, markup=True, soft_wrap=True)
    return typer.Exit(code)


def friendly(fn: F) -> F:
    """Turn charter errors into one line on stderr and a non-zero exit, no traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except CharterError as e:
            raise _fail(_escape(str(e))) from None
        except KeyboardInterrupt:
            raise _fail(
                "interrupted; records written so far are kept, re-run to resume", 130
            ) from None

    return wrapper  # type: ignore[return-value]


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def _setup_logging(verbose: bool) -> None:
    from rich.logging import RichHandler

    from charter.progress import console

    handler = RichHandler(console=console, show_time=False, show_path=False)
    logging.basicConfig(level=logging.WARNING, handlers=[handler], format="%(message)s")
    logging.getLogger("charter").setLevel(logging.DEBUG if verbose else logging.INFO)


@app.command()
@friendly
def respond(
    input: Annotated[str, typer.Argument(help="JSONL/Parquet file, dataset folder or hf:NAME.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Output .jsonl or .parquet.")],
    model: Annotated[
        str,
        typer.Option(
            "--model", "-m", help="provider/model: openai/NAME, hf/PATH, smollm2, mock/NAME."
        ),
    ],
    n: Annotated[int, typer.Option("--n", help="Answers per prompt.")] = 1,
    temperature: Annotated[float, typer.Option(help="Sampling temperature (0 = greedy).")] = 0.7,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling mass.")] = 1.0,
    max_tokens: Annotated[int, typer.Option(help="Cap on each answer's length.")] = 256,
    concurrency: Annotated[
        int, typer.Option("--concurrency", "-c", help="Requests in flight.")
    ] = 16,
    seed: Annotated[int, typer.Option(help="Base sampling seed.")] = 0,
    base_url: Annotated[
        str | None, typer.Option(help="OpenAI-compatible server URL [env: OPENAI_BASE_URL].")
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds per request before retrying.")] = 120.0,
    retries: Annotated[
        int, typer.Option(help="Retries on 429/5xx/timeouts/connection errors.")
    ] = 5,
    cache: Annotated[
        Path | None, typer.Option(help="Request cache file [default: beside the output].")
    ] = None,
    no_cache: Annotated[
        bool, typer.Option("--no-cache", help="Do not read or write the request cache.")
    ] = False,
    limit: Annotated[int | None, typer.Option(help="Only the first N input rows.")] = None,
    price_input: Annotated[
        float | None, typer.Option(help="$ per 1M prompt tokens, for the cost estimate.")
    ] = None,
    price_output: Annotated[float | None, typer.Option(help="$ per 1M completion tokens.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Log retries and details.")
    ] = False,
) -> None:
    """Generate K answers per prompt and write them as records."""
    from pydantic import ValidationError

    from charter.config import CacheSettings, ModelSettings, RespondJob
    from charter.jobs import run_respond
    from charter.stages.respond import RespondConfig

    _setup_logging(verbose)
    try:
        job = RespondJob(
            input=input,
            output=output,
            model=ModelSettings(
                spec=model,
                base_url=base_url,
                concurrency=concurrency,
                timeout=timeout,
                retries=retries,
                price_input=price_input,
                price_output=price_output,
            ),
            respond=RespondConfig(
                n=n, temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed
            ),
            cache=CacheSettings(enabled=not no_cache, path=cache),
            limit=limit,
        )
    except ValidationError as e:
        err = e.errors()[0]
        raise _fail(f"--{str(err['loc'][-1]).replace('_', '-')}: {err['msg']}") from None
    if n > 1 and temperature == 0:
        logging.getLogger("charter").warning(
            "--n %d with --temperature 0 gives identical answers", n
        )
    asyncio.run(run_respond(job, show_progress=not quiet and sys.stderr.isatty()))


@constitution_app.command("list")
@friendly
def constitution_list() -> None:
    """The built-in constitutions."""
    from rich.table import Table

    from charter.constitution import builtin_names, load_constitution
    from charter.progress import console

    table = Table("name", "principles", "hash", "description", header_style="bold")
    for name in builtin_names():
        c = load_constitution(name)
        table.add_row(name, str(len(c.principles)), c.hash, " ".join(c.description.split()))
    console.file = sys.stdout
    try:
        console.print(table)
    finally:
        console.file = sys.stderr


@constitution_app.command("show")
@friendly
def constitution_show(
    name: Annotated[str, typer.Argument(help="Built-in name or a file path.")],
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the validated constitution as JSON.")
    ] = False,
) -> None:
    """Print a constitution's principles."""
    from charter.constitution import load_constitution

    c = load_constitution(name)
    if as_json:
        typer.echo(
            json.dumps({"hash": c.hash, **c.model_dump(mode="json")}, indent=2, ensure_ascii=False)
        )
        return
    typer.echo(f"{c.name}  ({len(c.principles)} principles, {len(c.few_shot)} few-shot, {c.hash})")
    if c.description:
        typer.echo(" ".join(c.description.split()))
    if c.preamble:
        typer.echo("\n" + c.preamble.rstrip())
    for p in c.principles:
        extra = [f"weight {p.weight:g}"] + ([f"priority {p.priority}"] if p.priority else [])
        extra += [f"tags: {', '.join(p.tags)}"] if p.tags else []
        typer.echo(f"\n[{p.id}]  ({'; '.join(extra)})")
        typer.echo(f"  critique:   {' '.join(p.critique_request.split())}")
        typer.echo(f"  revision:   {' '.join(p.revision_request.split())}")
        typer.echo(f"  comparison: {' '.join(p.comparison_question.split())}")


@constitution_app.command("validate")
@friendly
def constitution_validate(path: Annotated[Path, typer.Argument(help="Constitution file.")]) -> None:
    """Check a constitution file; exit non-zero naming the field if it is invalid."""
    from charter.constitution import load_constitution

    c = load_constitution(path)
    typer.echo(f"{path}: ok — {c.name}, {len(c.principles)} principles, {c.hash}")


@cache_app.command("stats")
@friendly
def cache_stats(
    path: Annotated[Path, typer.Argument(help="Cache file (e.g. runs/x/charter-cache.sqlite).")],
) -> None:
    """Entries per model and file size."""
    from charter.cache import RequestCache

    if not path.exists():
        raise _fail(f"cache not found: {path}")
    c = RequestCache(path)
    try:
        s = c.stats()
    finally:
        c.close()
    typer.echo(f"{s['path']}: {s['entries']:,} entries, {s['file_bytes'] / 1e6:.2f} MB")
    for row in s["by_model"]:
        typer.echo(f"  {row['model']:<40} {row['kind']:<9} {row['entries']:>8,}")


@cache_app.command("clear")
@friendly
def cache_clear(
    path: Annotated[Path, typer.Argument(help="Cache file.")],
    model: Annotated[str | None, typer.Option(help="Only this model spec's entries.")] = None,
) -> None:
    """Delete cached results (all, or one model's)."""
    from charter.cache import RequestCache

    if not path.exists():
        raise _fail(f"cache not found: {path}")
    c = RequestCache(path)
    try:
        n = c.clear(model)
    finally:
        c.close()
    typer.echo(f"removed {n:,} entries from {path}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
