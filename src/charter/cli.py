"""Command line: parse flags into typed settings, call the library, format errors as one line.

Heavy modules (openai, torch) are imported only inside the commands that need them, so
``charter --help`` stays fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import sys
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
constitution_app = typer.Typer(
    help="List, show and validate constitutions; make one from a Polis conversation.",
    no_args_is_help=True,
)
cache_app = typer.Typer(help="Inspect or clear a request cache.", no_args_is_help=True)
app.add_typer(constitution_app, name="constitution")
app.add_typer(cache_app, name="cache")
batch_app = typer.Typer(
    help="Show or cancel the provider batches a --batch run submitted.", no_args_is_help=True
)
app.add_typer(batch_app, name="batch")
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


NOT_OPTIONS = ("quiet", "verbose")


def _flag_error(e: Any) -> str:
    """A bad flag's value as one line naming the flag (``e``: pydantic's ValidationError)."""
    err = e.errors()[0]
    loc = err["loc"]
    flag = f"--{str(loc[0]).replace('_', '-')}: " if loc else ""
    return f"{flag}{str(err['msg']).removeprefix('Value error, ')}"


def _options(cls: Any, values: dict[str, Any]) -> Any:
    """Build a typed options object from a command's flags, naming a bad flag on failure."""
    from pydantic import ValidationError

    try:
        return cls(**{k: v for k, v in values.items() if k not in NOT_OPTIONS})
    except ValidationError as e:
        raise _fail(_escape(_flag_error(e))) from None


def _run_job(name: str, flags: dict[str, Any]) -> None:
    """A job's command: its flags into typed options (a bad one named in one line), run it,
    print its summary."""
    from charter.api import job_options
    from charter.estimate import estimate_job, split_estimate
    from charter.registry import find

    _setup_logging(bool(flags.get("verbose")))
    job = find(name)
    values = {k: v for k, v in flags.items() if k not in NOT_OPTIONS}
    if "extra_args" in values:  # train: any other TRL option, as --name value
        values["trl"] = values.pop("extra_args")
    try:
        estimate, values = split_estimate(values)
        opts, engine = job_options(job, values, _flag_error)
    except CharterError as e:
        raise _fail(_escape(str(e))) from None
    if estimate.estimate:
        _estimate(lambda: estimate_job(job, opts, estimate))
        return
    _run_step(job, opts, engine, bool(flags.get("quiet")))


def _estimate(make: Callable[[], Coroutine[Any, Any, Any]]) -> None:
    """Run an estimate (``charter.estimate``) and print it on stdout: nothing sent, nothing
    written."""
    from charter.estimate import print_estimate

    print_estimate(_run_async(make()), file=sys.stdout)


def _run_step(job: Any, opts: Any, engine: Any, quiet: bool) -> None:
    """Run one job with its options (a command, a recipe's stage), printing its summary."""
    from charter.registry import FileStage, Trainer

    if isinstance(job, Trainer):
        _train_and_report(job, opts, quiet)  # TRL runs its own loops: outside any event loop
    elif isinstance(job, FileStage):
        _report(job.run(opts), quiet)
    else:
        _run_async(_engine_run(job, opts, engine, not quiet))


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

    factory = _loop_factory()
    if factory is None:
        return asyncio.run(main())
    with asyncio.Runner(loop_factory=factory) as runner:  # asyncio.run on that loop
        return runner.run(main())


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop where it is installed (not on Windows, and from Python 3.11): it
    takes less CPU per request, which at hundreds of requests in flight is what limits one
    process (benchmarks/client_limit.py)."""
    if sys.platform == "win32" or sys.version_info < (3, 11):
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


async def _engine_run(spec: Any, opts: Any, engine: Any, progress: bool) -> None:
    """Run a stage on its engine, printing the summary."""
    from charter.api import run_job
    from charter.progress import print_summary

    await run_job(spec, opts, engine, progress=progress, report=print_summary)


def _register_jobs() -> None:
    """One command per job in the registry (``charter.registry``), its flags derived from
    the job's options (``charter.cli_options``): stages with the engine's options after
    their own, file stages, and ``train METHOD``; ``probe`` has its own group below."""
    from charter.cli_options import EXTRA_ARGS, command_for
    from charter.config import EngineOptions
    from charter.estimate import EstimateOptions
    from charter.registry import JOBS, FileStage, Trainer

    for name, job in JOBS.items():
        run = functools.partial(_run_job, name)
        if isinstance(job, Trainer):
            command = command_for(job.options, run, skip=("method", "trl"), extra_args=True)
            train_app.command(
                job.method, help=job.help, epilog=TRAIN_EPILOG, context_settings=EXTRA_ARGS
            )(friendly(command))
        elif isinstance(job, FileStage):
            command = command_for(
                job.options, run, cli_help={"quiet": "No summary line.", "verbose": "Log details."}
            )
            group = {None: app, "constitution": constitution_app}[job.group]
            group.command(name, help=job.help)(friendly(command))
        elif name != "probe":
            command = command_for(job.options, run, groups=(EngineOptions, EstimateOptions))
            app.command(name, help=job.help)(friendly(command))


train_app = typer.Typer(
    help="Train on TRL: SFT, a reward model on soft labels, soft DPO, GRPO "
    "(pip install 'charter\\[train]').",
    no_args_is_help=True,
)
app.add_typer(train_app, name="train")

TRAIN_EPILOG = (
    "Any other TRL option: --config FILE.yaml, or --name value after the flags "
    "(e.g. --warmup_steps 10 --lr_scheduler_type cosine); flags override the file."
)
_register_jobs()


def _train_and_report(job: Any, opts: Any, quiet: bool = False) -> None:
    from charter.progress import console

    try:
        result = job.run(opts, quiet=quiet)
    except KeyboardInterrupt:
        raise _fail(
            "interrupted; the checkpoints written so far are kept: run the same command again "
            "to resume",
            130,
        ) from None
    if not result.skipped and result.main_process:  # once, not once per process
        loss = result.metrics.get("train_loss")
        said = f", final loss {loss:.4f}" if loss is not None else ""
        if result.judged is not None:
            said += f", the judge left {result.judged} completions ungraded"
        console.print(
            f"trained {opts.method}: {result.steps} steps{said} -> {result.output}",
            highlight=False,
        )


@app.command()
@friendly
def evaluate(
    labels: Annotated[list[Path], typer.Argument(help="One or more label files (one per judge).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Report folder.")],
    human: Annotated[
        str,
        typer.Option(
            help="auto (human_choice carried in the labels), a file of id/human_choice, or "
            "an annotation log (charter annotate output: adds agreement between annotators "
            "and on routed pairs vs the rest)."
        ),
    ] = "auto",
    seed: Annotated[int, typer.Option(help="Bootstrap seed.")] = 0,
    prices: Annotated[
        Path | None,
        typer.Option(
            help="Prices file over the built-in table, for each judge's $ per 1,000 labels."
        ),
    ] = None,
    human_random: Annotated[
        bool,
        typer.Option(
            help="The human labels (carried, or --human FILE) are a random draw of the pairs: "
            "use them for the prediction-powered estimates. An annotation log's control and "
            "random pairs are used without it; its pairs routed for doubt never are."
        ),
    ] = False,
) -> None:
    """How far to trust AI labels: agreement with humans, calibration, position/length bias,
    length-controlled win rates, self-preference, prediction-powered estimates, and what the
    labels cost."""
    from charter.evaluate import evaluate_files
    from charter.progress import console
    from charter.report import print_table, write_report

    metrics = evaluate_files(
        labels, human=human, seed=seed, prices=prices, human_random=human_random
    )
    path = write_report(metrics, output)
    print_table(metrics)
    console.print(
        f"report: {path}\nmetrics: {output / 'metrics.json'}", highlight=False, markup=False
    )


def _report(summary: object, quiet: bool = False) -> None:
    """A file stage's one summary line (route, select, merge)."""
    from charter.progress import console

    if not quiet:
        console.print(str(summary), highlight=False, markup=False, soft_wrap=True)


def _register_probe() -> None:
    """``probe injection``: the probe stage, its output named by the library when not given
    (``charter.probe.default_output``)."""
    from charter.cli_options import Override, command_for
    from charter.config import EngineOptions
    from charter.estimate import EstimateOptions
    from charter.probe import DEFAULT_BASELINE, DEFAULT_INJECTION, PROBE_IGNORES
    from charter.registry import find

    spec = find("probe")
    command = command_for(
        spec.options,
        functools.partial(_run_job, "probe"),
        groups=(EngineOptions, EstimateOptions),
        overrides={
            "output": Override(
                Path,
                None,
                "Per-pair results (default: runs/probe-injection-HASH.jsonl, HASH of the "
                "input, server, judge and settings).",
            ),
            "injection": Override(str, DEFAULT_INJECTION, show_default="a note to the evaluator"),
            "baseline": Override(
                str, DEFAULT_BASELINE, show_default="(This is the end of the reply.)"
            ),
        },
        skip=PROBE_IGNORES,
    )
    probe_app.command("injection", help=spec.help)(friendly(command))


_register_probe()


def _annotate(values: dict[str, Any]) -> None:
    from charter.annotate.options import AnnotateOptions
    from charter.annotate.server import serve
    from charter.progress import console

    _setup_logging(bool(values.get("verbose")))
    opts = _options(AnnotateOptions, values)

    def ready(url: str) -> None:
        if values.get("quiet"):  # the address alone, for scripts
            console.print(url, highlight=False, markup=False, soft_wrap=True)
            return
        console.print(
            f"annotating {opts.input} ({opts.per_pair} label(s) per pair): open {url}\n"
            f"labels are appended to {opts.output}; Ctrl-C stops, re-running resumes",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )

    try:
        _run_async(serve(opts, on_ready=ready))
    except KeyboardInterrupt:
        console.print(f"stopped; labels so far are in {opts.output}", highlight=False, markup=False)


def _register_annotate() -> None:
    from charter.annotate.options import AnnotateOptions
    from charter.cli_options import command_for

    app.command(
        "annotate",
        help="People label the pairs of a queue (charter route) in a local web page; the page "
        "and its JSON API are described in docs/humans.md.",
    )(
        friendly(
            command_for(
                AnnotateOptions,
                _annotate,
                cli_help={
                    "quiet": "Print the page's address alone (for scripts).",
                    "verbose": "Log details.",
                },
            )
        )
    )


_register_annotate()


def _serve(values: dict[str, Any]) -> None:
    from charter.progress import console
    from charter.serve.options import ServeOptions
    from charter.serve.server import Service, serve

    _setup_logging(bool(values.get("verbose")))
    opts = _options(ServeOptions, values)

    def ready(url: str, service: Service, token: str | None) -> None:
        if values.get("quiet"):  # the address alone (and a token made for it), for scripts
            shown = f"{url} {token}" if token and not opts.token else url
            console.print(shown, highlight=False, markup=False, soft_wrap=True)
            return
        query = f"?token={token}" if token else ""
        made = f"token (made for this run): {token}\n" if token and not opts.token else ""
        console.print(
            f"serving rewards from {' + '.join(service.mix.names)} on {url}\n{made}"
            f"  OpenRLHF: --remote_rm_url {url}/get_reward{query}\n"
            f"  charter's JSON (TRL, verl: charter.integrations): {url}/v1/rewards\n"
            f"  {url}/health, {url}/metrics; Ctrl-C stops",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )

    try:
        _run_async(serve(opts, on_ready=ready))
    except KeyboardInterrupt:
        console.print("stopped", highlight=False, markup=False)


def _register_serve() -> None:
    from charter.cli_options import command_for
    from charter.config import JudgingChoices
    from charter.serve.options import JUDGING_UNUSED, SERVE_HELP, ServeOptions

    app.command("serve", help=SERVE_HELP)(
        friendly(
            command_for(
                ServeOptions,
                _serve,
                skip=JUDGING_UNUSED,
                groups=(JudgingChoices,),
                cli_help={
                    "quiet": "Print the server's address alone (for scripts).",
                    "verbose": "Log details.",
                },
            )
        )
    )


_register_serve()


def _run_recipe(values: dict[str, Any]) -> None:
    """``charter run RECIPE``: every stage checked, then run in order (or, with --estimate,
    run dry)."""
    from charter.estimate import estimate_recipe, split_estimate
    from charter.progress import console
    from charter.recipe import load_recipe

    _setup_logging(bool(values.get("verbose")))
    recipe = Path(values["recipe"])
    estimate, _ = split_estimate(
        {k: v for k, v in values.items() if k not in ("recipe", *NOT_OPTIONS)}
    )
    plan = load_recipe(recipe)  # validate every stage before running any
    if estimate.estimate:
        _estimate(lambda: estimate_recipe(plan, estimate))
        return
    quiet = bool(values.get("quiet"))
    for i, step in enumerate(plan, start=1):
        console.print(
            f"[bold]stage {i}/{len(plan)}: {step.job.name}[/] -> {step.output}", highlight=False
        )
        _run_step(step.job, step.options, step.engine, quiet)
    _recipe_cost([step.output for step in plan])


def _recipe_cost(outputs: list[Path]) -> None:
    """The recipe's total from its stages' ledgers (OUT.cost.json), when any has one."""
    from charter.ledger import ledger_path, recipe_total
    from charter.progress import console

    total, each = recipe_total([ledger_path(out) for out in outputs])
    if not each:
        return
    parts = ", ".join(f"{name} {'?' if c is None else f'${c:,.4f}'}" for name, c in each)
    said = "unknown (a model has no price)" if total is None else f"${total:,.4f}"
    console.print(f"recipe cost so far: {said} ({parts})", highlight=False, markup=False)


def _register_run() -> None:
    from charter.cli_options import command_for
    from charter.estimate import RecipeRun

    app.command(
        "run", help="Run a recipe: stages in order (any stage command's name), each resumable."
    )(friendly(command_for(RecipeRun, _run_recipe)))


_register_run()


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
        if p.statement:
            typer.echo(f"  statement:  {' '.join(p.statement.split())}")
        typer.echo(f"  critique:   {' '.join(p.critique_request.split())}")
        typer.echo(f"  revision:   {' '.join(p.revision_request.split())}")
        typer.echo(f"  comparison: {' '.join(p.comparison_question.split())}")
        if p.provenance:
            v = p.provenance
            typer.echo(
                f"  from:       {v.source or 'public input'}, statement "
                f"{', '.join(v.comment_ids)}: {v.agrees} agree, {v.disagrees} disagree, "
                f"{v.passes} pass; group-informed consensus {v.consensus:.4f}"
            )


@constitution_app.command("validate")
@friendly
def constitution_validate(path: Annotated[Path, typer.Argument(help="Constitution file.")]) -> None:
    """Check a constitution file; exit non-zero naming the field if it is invalid."""
    from charter.constitution import load_constitution

    c = load_constitution(path)
    typer.echo(f"{path}: ok — {c.name}, {len(c.principles)} principles, {c.hash}")


@batch_app.command("list")
@friendly
def batch_list(
    output: Annotated[Path, typer.Argument(help="The run's output (its OUT.batches.json).")],
    offline: Annotated[bool, typer.Option(help="Show what was recorded; ask no provider.")] = False,
) -> None:
    """Each batch the run submitted: its id, provider, state and requests answered (asked
    of the provider, unless --offline)."""
    _show_batches(output, cancel=False, offline=offline)


@batch_app.command("cancel")
@friendly
def batch_cancel(
    output: Annotated[Path, typer.Argument(help="The run's output (its OUT.batches.json).")],
) -> None:
    """Cancel every batch of the run whose results have not been read. What they answered
    before stopping is kept: a re-run reads it and submits only the rest again."""
    _show_batches(output, cancel=True, offline=False)


def _show_batches(output: Path, *, cancel: bool, offline: bool) -> None:
    from rich.table import Table

    from charter.batch.runner import manifest_of, refresh
    from charter.progress import console

    manifest = manifest_of(output)
    if offline:
        rows = [(b, "as recorded") for b in manifest.batches]
    else:
        rows = asyncio.run(refresh(manifest, cancel=cancel))
    table = Table("batch", "provider", "submitted", "requests", "state", "answered", "failed", "")
    for entry, note in rows:
        table.add_row(
            entry.id,
            entry.provider,
            entry.submitted,
            f"{len(entry.custom_ids):,}",
            entry.status,
            f"{entry.completed:,}",
            f"{entry.failed:,}",
            note,
        )
    console.print(table)


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
