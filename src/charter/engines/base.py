"""What every engine shares: the files a run writes, what it reports, how a stage hands its
work to an engine, and the checks made before anything is written.

An engine runs a :class:`charter.stages.spec.StageSpec` over an input into an output with
charter's guarantees (every input id exactly once in the output or the failed file, resume,
one writer per output); the stage never knows which engine runs it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

from charter.backends import create_backend
from charter.budget import Budget
from charter.cache import RequestCache
from charter.config import ModelAccess, ModelSettings, StageOptions
from charter.endpoints import Limit
from charter.errors import ConfigError
from charter.io import OnInvalid
from charter.model import Model, RetryPolicy
from charter.prices import Prices, PriceTable
from charter.types import Usage

if TYPE_CHECKING:
    from charter.batch.runner import BatchRun

log = logging.getLogger("charter")


class HasId(Protocol):
    id: str

    def model_dump(self, *, mode: str = ...) -> dict[str, object]: ...


@dataclass(frozen=True)
class OutputPaths:
    """Where a stage writes. ``work`` is the JSONL appended during the run: the output itself
    for ``.jsonl``, a ``.partial.jsonl`` beside it for ``.parquet`` (converted at the end)."""

    out: Path
    work: Path
    failed: Path
    rejects: Path
    settings: Path
    """The settings that define the output's records (see ``charter.fingerprint``)."""
    batches: Path
    """The provider batches a --batch run submitted (``charter.batch``)."""
    cost: Path
    """The ledger of what the output has cost (``charter.ledger``)."""

    @classmethod
    def for_output(cls, out: str | Path) -> OutputPaths:
        out = Path(out)
        name = out.name
        if name.endswith(".parquet"):
            stem, work = name[: -len(".parquet")], out.with_name(name + ".partial.jsonl")
        elif name.endswith(".jsonl"):
            stem, work = name[: -len(".jsonl")], out
        else:
            raise ConfigError(
                f"output {out}: use a .jsonl or .parquet file name (or, with --engine ray, "
                "a folder for part files)"
            )
        return cls(
            out=out,
            work=work,
            failed=out.with_name(stem + ".failed.jsonl"),
            rejects=out.with_name(stem + ".rejects.jsonl"),
            settings=out.with_name(stem + ".settings.json"),
            batches=out.with_name(stem + ".batches.json"),
            cost=out.with_name(stem + ".cost.json"),
        )

    @classmethod
    def for_folder(cls, out: Path) -> OutputPaths:
        """An output written as a folder of part files (--engine ray): the side files sit
        beside it (OUT.failed.jsonl, OUT.settings.json); the lock is a hidden file inside."""
        return cls(
            out=out,
            work=out / ".charter.lock",
            failed=out.with_name(out.name + ".failed.jsonl"),
            rejects=out.with_name(out.name + ".rejects.jsonl"),
            settings=out.with_name(out.name + ".settings.json"),
            batches=out.with_name(out.name + ".batches.json"),
            cost=out.with_name(out.name + ".cost.json"),
        )

    @classmethod
    def for_run(cls, out: str | Path, engine: str) -> OutputPaths:
        """A file (.jsonl, .parquet) or, with an engine that writes parts, a folder."""
        out = Path(out)
        if engine == "ray" and (out.is_dir() or out.suffix not in (".jsonl", ".parquet")):
            return cls.for_folder(out)
        return cls.for_output(out)

    @property
    def is_folder(self) -> bool:
        return self.work.parent == self.out

    @property
    def files(self) -> tuple[Path, ...]:
        """Every file a run writes (the cache aside)."""
        files = (self.out, self.work, self.failed, self.rejects, self.settings, self.batches)
        return tuple(dict.fromkeys((*files, self.cost)))


@dataclass
class RunStats:
    """What one pass over the input did."""

    written: int = 0
    failed: int = 0
    skipped: int = 0
    seconds: float = 0.0
    changed: list[str] = field(default_factory=list)
    """Ids already in the output whose input row has changed since (their records are stale)."""
    orphans: list[str] = field(default_factory=list)
    """Ids in the output that no input row has any more (input edited or rows removed)."""


class ModelUsage(BaseModel):
    """What one model did in a run."""

    model_config = ConfigDict(extra="forbid")

    name: str
    """The model spec."""
    usage: Usage
    """Requests answered, cache hits and tokens."""
    failed: int = 0
    """Requests sent that failed (each retry counts)."""
    discarded: int = 0
    """Requests answered without what was asked: replies without log-probabilities while
    deciding whether the server has any, a continuation the server refused."""
    fallbacks: int = 0
    """Of the requests in ``usage``, option requests answered with no option (a judge that
    reasons first), asked again another way: neither failed nor errors."""
    retries: int = 0
    """Retries after transient failures."""
    errors: int = 0
    """Requests that failed for good, after retries."""
    cost: float | None = None
    """Dollars, at ``prices``; None when the model has no price."""
    prices: Prices | None = None
    """The prices it was costed at (the table, --prices FILE, or --price-input/--price-output)."""

    @property
    def sent(self) -> int:
        """Requests sent: answered (fallbacks among them), failed, and answered without what
        was asked."""
        return self.usage.requests + self.failed + self.discarded


class RunSummary(BaseModel):
    """What a run did, as ``charter.run`` returns it and the CLI prints it."""

    model_config = ConfigDict(extra="forbid")

    stage: str
    """The stage that ran."""
    output: Path
    """The output file."""
    written: int = 0
    """Records written by this run."""
    skipped: int = 0
    """Records already in the output (resumed)."""
    failed: int = 0
    """Records that failed (in ``failed_file``)."""
    rejected: int = 0
    """Invalid input rows skipped with --skip-invalid (in ``rejects_file``)."""
    seconds: float = 0.0
    """Wall time of the pass over the input."""
    changed: list[str] = Field(default_factory=list)
    """Ids whose input row changed since their record was written (kept, stale)."""
    orphans: list[str] = Field(default_factory=list)
    """Ids in the output that match no input row."""
    models: list[ModelUsage] = Field(default_factory=list)
    """Usage per model."""
    failed_file: Path | None = None
    """Where failed records are, if any."""
    rejects_file: Path | None = None
    """Where rejected input rows are, if any."""
    cost: float | None = None
    """Dollars the output has cost over every run onto it (OUT.cost.json); None when a model
    has no price."""
    cost_per_1000_records: float | None = None
    """``cost`` per 1,000 records in the output."""
    cost_file: Path | None = None
    """The output's ledger (OUT.cost.json)."""


class ModelFactory:
    """Builds the models a stage asks for, on the run's cache, and keeps them for usage
    accounting and closing. The models that talk to the same server(s) (``--base-url``)
    share one request limit: ``--concurrency`` is per endpoint, not per model."""

    def __init__(
        self,
        opts: ModelAccess,
        cache: RequestCache | None,
        budget: Budget | None = None,
        batches: BatchRun | None = None,
    ) -> None:
        """``budget``: the run's --max-cost, shared by its models (every model then needs a
        price); ``batches``: with --batch, the run's batches, through which every model built
        here sends its requests."""
        self.opts = opts
        self.cache = cache
        self.budget = budget
        self.batches = batches
        self.table = PriceTable.with_file(opts.prices)
        self.models: list[Model] = []
        self._limits: dict[str | None, Limit] = {}
        """Limit by the backend's ``server`` (its sorted endpoints); None for backends that
        name none (local and mock models), which share one between them."""
        self._slots: dict[str | None, int] = {}

    def __call__(self, spec: str) -> Model:
        settings: ModelSettings = self.opts.model_settings(spec)
        prices = self.prices(settings)
        if self.budget is not None and prices is None:
            raise ConfigError(
                f"--max-cost: no price for {settings.spec}: add it with --prices FILE "
                "(or --price-input/--price-output)"
            )
        options: dict[str, object] = {"timeout": settings.timeout}
        if settings.base_url:
            options["base_url"] = settings.base_url
        backend = create_backend(settings.spec, **options)
        if self.batches is not None:
            self.batches.attach(backend, settings.spec)
        server: str | None = getattr(backend, "server", None)
        model = Model(
            backend,
            concurrency=settings.concurrency,
            timeout=settings.timeout,
            retry=RetryPolicy(attempts=settings.retries + 1, initial=settings.retry_wait),
            cache=self.cache,
            prices=prices,
            limit=self._limits.get(server),
            budget=self.budget,
        )
        model.batched = self.batches is not None  # priced at the batch discount
        self._limits.setdefault(server, model.limit)
        endpoints: tuple[str, ...] = getattr(backend, "endpoints", ())
        self._slots.setdefault(server, settings.concurrency * max(1, len(endpoints)))
        self.models.append(model)
        return model

    def prices(self, settings: ModelSettings) -> Prices | None:
        """The model's prices: --price-input/--price-output (the other one from the table,
        else 0), else the table's (--prices FILE over the built-in ones), else None."""
        found = self.table.lookup(settings.spec)
        if settings.price_input is None and settings.price_output is None:
            return found
        base = found or Prices(0.0, 0.0)
        return dataclasses.replace(
            base,
            input=base.input if settings.price_input is None else settings.price_input,
            output=base.output if settings.price_output is None else settings.price_output,
            cached_input=base.cached_input if settings.price_input is None else None,
            cache_write=base.cache_write if settings.price_input is None else None,
            source="--price-input/--price-output",
            checked="",
        )

    @property
    def slots(self) -> int:
        """Requests the models built so far can have in flight together (``--concurrency``
        on each endpoint of each server): what an engine's window of records should cover."""
        return sum(self._slots.values()) or self.opts.concurrency

    def usage(self) -> list[ModelUsage]:
        return [
            ModelUsage(
                name=m.name,
                usage=m.usage.model_copy(deep=True),
                failed=m.failed,
                discarded=m.discarded,
                fallbacks=m.fallbacks,
                retries=m.retries,
                errors=m.errors,
                cost=m.cost,
                prices=m.prices,
            )
            for m in self.models
        ]


Work = Callable[[Any], Awaitable[BaseModel]]


@dataclass
class Prepared:
    """A stage ready to run: what an engine needs, built from the options by the stage."""

    settings: dict[str, Any]
    """What defines the records (``charter.fingerprint``)."""
    read: Callable[[OnInvalid | None], Iterator[Any]]
    """The input records (the engine applies --limit)."""
    build: Callable[[ModelFactory], Work]
    """The work function on one record, given a factory for the models it needs."""
    extra_outputs: Sequence[Path] = ()
    """Other files the stage writes (revise --pairs)."""
    finish: Callable[[RunSummary, OutputPaths], None] | None = None
    """Run after the pass (summary lines, derived files)."""


def same_file(a: Path, b: Path) -> bool:
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
            if same_file(src, out):
                raise ConfigError(
                    f"{where}{out} is the input file {source}: choose another output "
                    "(charter writes its outputs)"
                )


def check_read_files(opts: StageOptions, outputs: Sequence[Path], where: str = "") -> None:
    """Refuse an output that is a file the stage's options name to be read (constitution,
    rubric, few-shot, personas...): any option value naming an existing file, the options
    that name outputs (``StageOptions.output_fields``) and the input aside."""
    for name in type(opts).model_fields:
        value = getattr(opts, name)
        if name == "input" or name in opts.output_fields or not isinstance(value, str | Path):
            continue
        try:
            if not Path(value).is_file():
                continue
        except OSError:  # a name too long to be a path, say
            continue
        for out in outputs:
            if same_file(Path(value), out):
                flag = "--" + name.replace("_", "-")
                raise ConfigError(
                    f"{where}{out} is the {flag} file this run reads: choose another output"
                )


def check_distinct(targets: Sequence[Path], out: Path) -> None:
    """Refuse two of a run's files landing on one path (``--pairs`` or ``--cache`` on the
    output or its side files), and OUT.jsonl beside OUT.parquet, which would share the side
    files (failed, rejects, settings)."""
    for i, a in enumerate(targets):
        for b in targets[i + 1 :]:
            if same_file(a, b):
                raise ConfigError(
                    f"{a} would be written as two of this run's files (output, its failed, "
                    "rejects or settings file, --pairs, --sft, --cache): choose distinct paths"
                )
    name = out.name
    stem = name.removesuffix(".parquet").removesuffix(".jsonl")
    others = [out.with_name(stem + ext) for ext in ("", ".jsonl", ".parquet")]
    others.append(out.with_name(stem + ".parquet.partial.jsonl"))
    for sibling in others:
        if sibling == out or sibling.name == f"{name}.partial.jsonl" or not sibling.exists():
            continue
        if not sibling.is_dir() or any(sibling.glob("part-*")):  # a folder of parts
            raise ConfigError(
                f"{sibling} exists beside {out}: they would share {stem}.failed.jsonl and "
                f"{stem}.settings.json; choose another output name"
            )


def report_stale(summary: RunSummary) -> None:
    """Warn about records whose input changed or went away."""

    def some(ids: list[str]) -> str:
        shown = ", ".join(ids[:5])
        return shown + (f" and {len(ids) - 5:,} more" if len(ids) > 5 else "")

    if summary.changed:
        log.warning(
            "%d input row(s) changed since their records were written to %s; those records are "
            "stale and were kept (delete them from the output to redo them): %s",
            len(summary.changed),
            summary.output,
            some(summary.changed),
        )
    if summary.orphans:
        log.warning(
            "%d record(s) in %s match no input row any more (rows edited or removed; with "
            "content-hash ids an edited row gets a new id): %s",
            len(summary.orphans),
            summary.output,
            some(summary.orphans),
        )
