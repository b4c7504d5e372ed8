"""Command line: parse flags into typed settings, call the library, format errors as one line.

Heavy modules (openai, torch) are imported only inside the commands that need them, so
``charter --help`` stays fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import json
import logging
import os
import sys
import typing
from collections.abc import Callable, Coroutine
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
probe_app = typer.Typer(help="Probe a judge's weak spots.", no_args_is_help=True)
app.add_typer(probe_app, name="probe")

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")
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
        except OSError as e:  # a file problem the library did not anticipate: still one line
            where = f": {e.filename}" if e.filename else ""
            raise _fail(_escape(f"{e.strerror or type(e).__name__}{where}")) from None
        except KeyboardInterrupt:
            raise _fail(
                "interrupted; records written so far are kept, re-run to resume", 130
            ) from None

    return wrapper  # type: ignore[return-value]


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def _setup_logging(verbose: bool) -> None:
    """Rich log lines on a terminal; plain unwrapped lines in files and CI logs."""
    handler: logging.Handler
    if sys.stderr.isatty():
        from rich.logging import RichHandler

        from charter.progress import console

        handler = RichHandler(console=console, show_time=False, show_path=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    logging.basicConfig(level=logging.WARNING, handlers=[handler], force=True)
    logging.getLogger("charter").setLevel(logging.DEBUG if verbose else logging.INFO)


# Flags shared by the stage commands. Each maps 1:1 onto a field of charter.config's options
# models, which recipes use too.
Input = Annotated[str, typer.Argument(help="JSONL/Parquet file, dataset folder or hf:NAME.")]
Output = Annotated[Path, typer.Option("-o", "--output", help="Output .jsonl or .parquet.")]
ModelSpec = Annotated[
    str,
    typer.Option("--model", "-m", help="provider/model: openai/NAME, hf/PATH, smollm2, mock/NAME."),
]
Temperature = Annotated[float, typer.Option(help="Sampling temperature (0 = greedy).")]
TopP = Annotated[float, typer.Option(help="Nucleus sampling mass.")]
MaxTokens = Annotated[int, typer.Option(help="Cap on each generated turn.")]
Concurrency = Annotated[int, typer.Option("--concurrency", "-c", help="Requests in flight.")]
Seed = Annotated[int, typer.Option(help="Base seed (sampling and principle choice).")]
BaseUrl = Annotated[
    str | None, typer.Option(help="OpenAI-compatible server URL (env: OPENAI_BASE_URL).")
]
Timeout = Annotated[float, typer.Option(help="Seconds per request before retrying.")]
Retries = Annotated[int, typer.Option(help="Retries on 429/5xx/timeouts/connection errors.")]
RetryWait = Annotated[
    float, typer.Option(help="First backoff in seconds (doubles per retry; Retry-After wins).")
]
SkipInvalid = Annotated[
    bool,
    typer.Option("--skip-invalid", help="Write invalid input rows to OUT.rejects.jsonl and go on."),
]
CachePath = Annotated[
    Path | None, typer.Option(help="Request cache file (default: beside the output).")
]
NoCache = Annotated[bool, typer.Option("--no-cache", help="Do not read or write the cache.")]
Limit = Annotated[int | None, typer.Option(help="Only the first N input rows.")]
PriceIn = Annotated[float | None, typer.Option(help="$ per 1M prompt tokens (cost estimate).")]
PriceOut = Annotated[float | None, typer.Option(help="$ per 1M completion tokens.")]
Quiet = Annotated[
    bool, typer.Option("--quiet", "-q", help="No progress bar (or, off a terminal, no lines).")
]
EngineName = Annotated[str, typer.Option("--engine", help="Where the work runs: local.")]
Force = Annotated[
    bool,
    typer.Option(
        "--force", help="Add to an output made with other settings (see OUT.settings.json)."
    ),
]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Log retries and details.")]
NOT_OPTIONS = ("quiet", "verbose")


def _options(cls: Any, values: dict[str, Any]) -> Any:
    """Build a typed options object from a command's flags, naming a bad flag on failure."""
    from pydantic import ValidationError

    try:
        return cls(**{k: v for k, v in values.items() if k not in NOT_OPTIONS})
    except ValidationError as e:
        err = e.errors()[0]
        loc = err["loc"]
        flag = f"--{str(loc[0]).replace('_', '-')}: " if loc else ""
        raise _fail(_escape(f"{flag}{err['msg']}")) from None


def _run_async(coro: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run``, with SIGTERM handled like Ctrl-C: the run stops cleanly (records
    finished so far are kept, files closed) and the command exits with the resume hint."""
    import signal

    async def main() -> T:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        terminated = False

        def on_term() -> None:
            nonlocal terminated
            terminated = True
            if task is not None:
                task.cancel()

        # Not available off the main thread or off POSIX: SIGTERM then keeps its default.
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signal.SIGTERM, on_term)
        try:
            return await coro
        except asyncio.CancelledError:
            if terminated:
                raise KeyboardInterrupt from None
            raise
        finally:
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(signal.SIGTERM)

    return asyncio.run(main())


# Flags every stage command takes: (name, annotated type, default). Each is a field of
# charter.config.StageOptions; a command that declares one itself keeps its own version.
SHARED_FLAGS: list[tuple[str, Any, Any]] = [
    ("temperature", Temperature, 0.7),
    ("top_p", TopP, 1.0),
    ("max_tokens", MaxTokens, 256),
    ("concurrency", Concurrency, 16),
    ("seed", Seed, 0),
    ("base_url", BaseUrl, None),
    ("timeout", Timeout, 120.0),
    ("retries", Retries, 5),
    ("retry_wait", RetryWait, 1.0),
    ("skip_invalid", SkipInvalid, False),
    ("cache", CachePath, None),
    ("no_cache", NoCache, False),
    ("limit", Limit, None),
    ("price_input", PriceIn, None),
    ("price_output", PriceOut, None),
    ("force", Force, False),
    ("engine", EngineName, "local"),
    ("quiet", Quiet, False),
    ("verbose", Verbose, False),
]


def stage_flags(fn: F) -> F:
    """Give a stage command the shared flags (declared once, above) after its own ones; the
    command receives them in ``**shared``."""
    hints = typing.get_type_hints(fn, include_extras=True)
    sig = inspect.signature(fn)
    own = [
        p.replace(annotation=hints[p.name])
        for p in sig.parameters.values()
        if p.kind is not inspect.Parameter.VAR_KEYWORD
    ]
    extra = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=kind)
        for name, kind, default in SHARED_FLAGS
        if name not in sig.parameters
    ]

    @functools.wraps(fn)
    def wrapper(**kwargs: Any) -> Any:
        return fn(**kwargs)

    params = own + extra
    wrapper.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in params}
    return wrapper  # type: ignore[return-value]


def _run_stage(kind: str, flags: dict[str, Any]) -> None:
    """Validate a stage command's flags into its typed options and run the stage on its
    engine, printing progress and the summary."""
    from charter.registry import get_stage

    _setup_logging(bool(flags.get("verbose")))
    spec = get_stage(kind)
    _run_async(_engine_run(spec.name, _options(spec.options, flags), not flags.get("quiet")))


async def _engine_run(kind: str, opts: Any, progress: bool) -> None:
    from charter.engines import get_engine
    from charter.progress import print_summary
    from charter.registry import get_stage

    engine = get_engine(opts.engine)
    await engine.run(get_stage(kind), opts, progress=progress, report=print_summary)


@app.command()
@friendly
@stage_flags
def respond(
    input: Input,
    output: Output,
    model: ModelSpec,
    n: Annotated[int, typer.Option("--n", help="Answers per prompt.")] = 1,
    **shared: Any,
) -> None:
    """Generate K answers per prompt."""
    _run_stage("respond", {"input": input, "output": output, "model": model, "n": n, **shared})


@app.command()
@friendly
@stage_flags
def revise(
    input: Input,
    output: Output,
    model: ModelSpec,
    constitution: Annotated[
        str,
        typer.Option("--constitution", help="Built-in name (harmless, hhh, rules, spec) or file."),
    ],
    rounds: Annotated[int, typer.Option(help="Critique/revision rounds per prompt.")] = 2,
    critic: Annotated[
        str | None, typer.Option(help="Model spec for critiques (default: --model).")
    ] = None,
    few_shot: Annotated[
        str, typer.Option(help="auto (the constitution's examples), none, or a file.")
    ] = "auto",
    no_critique: Annotated[
        bool, typer.Option("--no-critique", help="Revise straight from the revision request.")
    ] = False,
    pairs: Annotated[
        Path | None, typer.Option(help="Also write TRL pairs: chosen = final, rejected = initial.")
    ] = None,
    **shared: Any,
) -> None:
    """SL-CAI: critique and revise each answer against sampled principles, N rounds."""
    own = {k: v for k, v in locals().items() if k != "shared"}
    _run_stage("revise", {**own, **shared})


@app.command()
@friendly
@stage_flags
def label(
    input: Input,
    output: Output,
    judge: Annotated[str, typer.Option("--judge", "-j", help="Feedback model spec.")],
    constitution: Annotated[
        str, typer.Option("--constitution", help="Built-in name or file (comparison questions).")
    ],
    principles: Annotated[int, typer.Option(help="Principles sampled per pair, averaged.")] = 1,
    orders: Annotated[
        str, typer.Option(help="both (swap A/B and average), random, or first.")
    ] = "both",
    cot: Annotated[
        bool, typer.Option("--cot", help="Judge reasons first; answer then scored.")
    ] = False,
    clamp: Annotated[
        str | None, typer.Option(help="LO,HI bounds per probability (default with --cot: 0.4,0.6).")
    ] = None,
    votes: Annotated[
        int, typer.Option(help="Samples per judgement when the judge has no logprobs.")
    ] = 1,
    min_confidence: Annotated[
        float, typer.Option(help="Leave pairs with |p_a - 0.5| below this out of TRL columns.")
    ] = 0.0,
    pairs: Annotated[
        str, typer.Option(help="With several answers per row: all, adjacent or random pairs.")
    ] = "all",
    max_tokens: Annotated[int, typer.Option(help="Cap on CoT reasoning length.")] = 512,
    **shared: Any,
) -> None:
    """RLAIF: AI preference labels as soft probabilities, both orders averaged."""
    own = {k: v for k, v in locals().items() if k != "shared"}
    _run_stage("label", {**own, **shared})


@app.command()
@friendly
@stage_flags
def score(
    input: Input,
    output: Output,
    judge: Annotated[str, typer.Option("--judge", "-j", help="Judge model spec.")],
    rubric: Annotated[
        str, typer.Option(help="Built-in (harmlessness, helpfulness, honesty) or a rubric file.")
    ],
    mode: Annotated[
        str, typer.Option(help="absolute (1-5 per answer) or relative (A vs B).")
    ] = "absolute",
    reference: Annotated[
        str | None, typer.Option(help="Input field with a reference answer (absolute mode).")
    ] = None,
    cot: Annotated[
        bool | None,
        typer.Option(
            "--cot/--no-cot", help="Feedback first (default: on for absolute, off for relative)."
        ),
    ] = None,
    attempts: Annotated[int, typer.Option(help="Tries before an unparseable answer fails.")] = 3,
    temperature: Annotated[
        float | None,
        typer.Option(help="First-try temperature (default: 0 absolute, 0.7 relative)."),
    ] = None,
    pairs: Annotated[
        str, typer.Option(help="Relative mode with several answers: all, adjacent, random.")
    ] = "all",
    max_tokens: Annotated[int, typer.Option(help="Cap on the judge's feedback.")] = 256,
    **shared: Any,
) -> None:
    """Rubric grading: an absolute 1-5 score per answer, or A vs B under a rubric."""
    own = {k: v for k, v in locals().items() if k != "shared"}
    _run_stage("score", {**own, **shared})


@app.command()
@friendly
def evaluate(
    labels: Annotated[list[Path], typer.Argument(help="One or more label files (one per judge).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Report folder.")],
    human: Annotated[
        str,
        typer.Option(
            help="auto (human_choice carried in the labels) or a file of id/human_choice."
        ),
    ] = "auto",
    seed: Annotated[int, typer.Option(help="Bootstrap seed.")] = 0,
) -> None:
    """How far to trust AI labels: agreement with humans, calibration, position/length bias."""
    from charter.evaluate import evaluate_files
    from charter.progress import console
    from charter.report import print_table, write_report

    metrics = evaluate_files(labels, human=human, seed=seed)
    path = write_report(metrics, output)
    print_table(metrics)
    console.print(
        f"report: {path}\nmetrics: {output / 'metrics.json'}", highlight=False, markup=False
    )


@probe_app.command("injection")
@friendly
@stage_flags
def probe_injection_cmd(
    input: Input,
    judge: Annotated[str, typer.Option("--judge", "-j", help="Judge model spec.")],
    output: Annotated[
        Path | None,
        typer.Option(
            "-o",
            "--output",
            help="Per-pair results (default: runs/probe-injection-HASH.jsonl, HASH of the "
            "input, judge and settings).",
        ),
    ] = None,
    constitution: Annotated[
        str, typer.Option(help="Constitution whose questions are asked.")
    ] = "harmless",
    injection: Annotated[
        str | None,
        typer.Option(help="Text appended to the losing answer (default: a note to the evaluator)."),
    ] = None,
    baseline: Annotated[
        str | None,
        typer.Option(help="Harmless text appended the same way, for the baseline flip rate."),
    ] = None,
    margin: Annotated[
        float, typer.Option(help="A flip is the edited answer winning with p > 0.5 + MARGIN.")
    ] = 0.1,
    orders: Annotated[str, typer.Option(help="both, random or first.")] = "both",
    pairs: Annotated[
        str, typer.Option(help="With several answers per row: all, adjacent, random.")
    ] = "all",
    max_tokens: Annotated[int, typer.Option(help="Cap on CoT reasoning length.")] = 512,
    **shared: Any,
) -> None:
    """Flip rate of a judge when an instruction aimed at it is appended to the losing answer,
    against the flip rate of a harmless edit."""
    own = {k: v for k, v in locals().items() if k not in ("shared", "output")}
    from charter.fingerprint import settings_of
    from charter.probe import ProbeOptions

    _setup_logging(bool(shared.get("verbose")))
    values = {k: v for k, v in {**own, **shared}.items() if v is not None}
    if output is None:
        draft = _options(ProbeOptions, {**values, "output": Path("runs/probe.jsonl")})
        source = str(values["input"])
        where = source if source.startswith("hf:") else str(Path(source).resolve())
        # the server too: two local servers may both answer to the same model name
        server = draft.base_url or os.environ.get("OPENAI_BASE_URL")
        digest = _digest([where, server, settings_of("probe", draft)])
        output = Path(f"runs/probe-injection-{digest}.jsonl")
    opts = _options(ProbeOptions, {**values, "output": output})
    _run_async(_engine_run("probe", opts, not shared.get("quiet")))


def _digest(value: object) -> str:
    import hashlib

    blob = json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


@app.command("run")
@friendly
def run_recipe(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML: stages with the CLI's options.")],
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Run a recipe: stages in order (respond, revise, label, score), each resumable."""
    from charter.progress import console
    from charter.recipe import load_recipe

    _setup_logging(verbose)
    plan = load_recipe(recipe)  # validate every stage before running any

    async def go() -> None:
        for i, (kind, opts) in enumerate(plan, start=1):
            console.print(
                f"[bold]stage {i}/{len(plan)}: {kind}[/] -> {opts.output}", highlight=False
            )
            await _engine_run(kind, opts, not quiet)

    _run_async(go())


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
