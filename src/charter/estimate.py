"""``--estimate``: what a job will cost, said before anything is sent or written.

A sample of the real input (``--estimate-sample`` records, drawn with the stage's seed) goes
through the stage's own work function, with every model replaced by a dry one that sends
nothing: ``generate`` answers with a placeholder ``--estimate-fill`` x ``max_tokens`` tokens
long (by default the cap itself, so the estimate is a ceiling), option requests get even
scores, reward requests 0. So a record makes exactly the requests a real run makes (orders,
principles, rounds, CoT's second turn, votes...), and each prompt is counted with the
model's own tokenizer where charter has one (``charter.tokens``). What the sample spent,
per record, times the records the job would go through is the projection.

In a recipe, a stage whose input an earlier stage writes reads that stage's dry outputs as
its sample (written to a temporary folder, removed at the end), and that stage's projected
records as its total. Nothing is written beside the job's files: no output, no settings
file, no cache.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import math
import random
import re
import tempfile
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from charter.backends import Capabilities, create_backend, parse_spec
from charter.config import ModelAccess, ModelSettings, Positional, StageOptions
from charter.engines.base import ModelFactory
from charter.errors import CharterError, ConfigError
from charter.io import JsonlWriter, OnInvalid
from charter.model import Model, RetryPolicy
from charter.prices import Prices
from charter.registry import FileStage, Job, Trainer
from charter.stages.spec import StageSpec
from charter.tokens import Counter, counter_for
from charter.types import GenerateConfig, Generation, Message, OptionScores, Reward

SAMPLE = 20
"""Records whose requests are rendered and counted, by default."""
FILL = 0.7
"""Answers are assumed this fraction of max_tokens long, by default: SmolLM2's answers in
the demo recipe averaged 0.69 of its cap (respond 0.77, revise's critiques and revisions
0.65). A guess for other models and caps, so the ceiling (every answer at the cap) is given
beside it."""
SHORT_REPLY = 8
"""A judge's reply capped at this many tokens or fewer is its verdict alone (a vote)."""


class EstimateOptions(BaseModel):
    """``--estimate``: a dry run of a sample that says what the job will cost (taken apart
    from the stage's options, like the engine's: it never changes what a record says)."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    estimate: bool = False
    """Say what the job will cost (requests, tokens, dollars per model and stage) from a dry
    run of a sample of the input: nothing is sent, nothing written."""
    estimate_sample: int = Field(default=SAMPLE, ge=1)
    """With --estimate: input records run dry (drawn with --seed); the rest are projected."""
    estimate_fill: float = Field(default=FILL, gt=0.0, le=1.0)
    """With --estimate: each generated answer is taken to be this fraction of --max-tokens
    (the ceiling, every answer at the cap, is said too)."""

    def check(self) -> None:
        """Refuse --estimate-sample or --estimate-fill without --estimate (they would reach
        nothing)."""
        given = sorted(self.model_fields_set - {"estimate"})
        if given and not self.estimate:
            flags = ", ".join("--" + name.replace("_", "-") for name in given)
            raise ConfigError(f"{flags} only apply with --estimate")


class RecipeRun(EstimateOptions):
    """``charter run RECIPE``: the recipe, and the estimate's options."""

    recipe: Annotated[Path, Positional()]
    """Recipe YAML: stages with the CLI's options."""


def split_estimate(values: dict[str, Any]) -> tuple[EstimateOptions, dict[str, Any]]:
    """The estimate's options out of a job's keywords (the rest returned as they were)."""
    from pydantic import ValidationError

    from charter.validation import describe_validation

    mine = {k: v for k, v in values.items() if k in EstimateOptions.model_fields}
    rest = {k: v for k, v in values.items() if k not in mine}
    try:
        opts = EstimateOptions(**mine)
    except ValidationError as e:
        raise ConfigError(describe_validation(e)) from e
    opts.check()
    return opts, rest


# -- what it says ------------------------------------------------------------------------------
class ModelEstimate(BaseModel):
    """What one model of one stage would be asked, projected over the whole input."""

    model_config = ConfigDict(extra="forbid")

    name: str
    """The model spec."""
    requests: int
    """Requests (cache hits not subtracted: the estimate assumes none)."""
    prompt_tokens: int
    """Tokens read."""
    completion_tokens: int
    """Tokens written (placeholders of the assumed length; 1 per option request to a server,
    which writes that token; 0 for a local model's forward pass)."""
    cost: float | None = None
    """Dollars, where the model has prices (the price table, --prices FILE, or
    --price-input/--price-output); with --batch at the batch discount."""
    tokenizer: str
    """How its tokens were counted."""


class StageEstimate(BaseModel):
    """One stage of the job."""

    model_config = ConfigDict(extra="forbid")

    stage: str
    """The stage (its recipe name, if any)."""
    estimated: bool = True
    """False for work that calls no model or that the estimate cannot run (see ``note``)."""
    records: int = 0
    """Records the job would go through (input rows, or pairs; --limit respected)."""
    sampled: int = 0
    """Of those, run dry."""
    failed: int = 0
    """Sampled records whose dry run failed (their requests so far are counted)."""
    models: list[ModelEstimate] = Field(default_factory=list)
    """Per model."""
    note: str | None = None
    """Why it is not estimated, or what failed."""


class Estimate(BaseModel):
    """What ``--estimate`` says about a job (``charter.run(..., estimate=True)`` returns it)."""

    model_config = ConfigDict(extra="forbid")

    stages: list[StageEstimate]
    """The job's stages in order."""
    sample: int
    """--estimate-sample."""
    fill: float
    """--estimate-fill: answers assumed this fraction of max_tokens long."""
    ceiling: Estimate | None = None
    """The same with every answer at max_tokens (None when ``fill`` is 1: this is it)."""

    @property
    def requests(self) -> int:
        return sum(m.requests for s in self.stages for m in s.models)

    @property
    def prompt_tokens(self) -> int:
        return sum(m.prompt_tokens for s in self.stages for m in s.models)

    @property
    def completion_tokens(self) -> int:
        return sum(m.completion_tokens for s in self.stages for m in s.models)

    @property
    def cost(self) -> float | None:
        """Dollars for the models that have prices (None when none has)."""
        costs = [m.cost for s in self.stages for m in s.models if m.cost is not None]
        return math.fsum(costs) if costs else None


# -- the dry model -----------------------------------------------------------------------------
_WORDS = [
    "the",
    "answer",
    "is",
    "clear",
    "and",
    "helpful",
    "because",
    "it",
    "explains",
    "each",
    "step",
    "with",
    "care",
    "so",
    "that",
    "a",
    "reader",
    "can",
    "follow",
    "what",
    "to",
    "do",
    "next",
    "when",
    "the",
    "question",
    "asks",
    "for",
    "more",
    "detail",
    "about",
    "how",
    "this",
    "works",
    "in",
    "practice",
    "and",
    "why",
    "it",
    "matters",
    "for",
    "people",
    "who",
    "use",
    "it",
    "every",
    "day",
    "at",
    "home",
    "or",
    "at",
    "work",
]


@dataclass
class Tally:
    """What a dry model was asked."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


def capabilities_of(spec: str, settings: ModelSettings) -> tuple[Capabilities, Any]:
    """What the real model can do, learnt without loading or calling it: (capabilities, a
    backend made to learn them that needs closing, or None)."""
    provider, _ = parse_spec(spec)
    if provider in ("openai", "openai-completions", "hf", "smollm2"):
        return Capabilities(option_logprobs=True, continue_final=True), None
    if provider == "rm":
        return Capabilities(reward=True), None
    if provider == "mock":
        from charter.backends.mock import _REGISTERED

        registered = _REGISTERED.get(spec)
        caps = registered.capabilities if registered else Capabilities(option_logprobs=True)
        return caps, None
    # another provider (a plugin): its constructor, which by convention connects lazily
    options: dict[str, object] = {"timeout": settings.timeout}
    if settings.base_url:
        options["base_url"] = settings.base_url
    backend = create_backend(spec, **options)
    return backend.capabilities, backend


class DryBackend:
    """A backend that sends nothing: placeholder answers of the assumed length, even option
    scores, reward 0; every prompt counted with ``counter``."""

    def __init__(
        self, name: str, capabilities: Capabilities, counter: Counter, fill: float
    ) -> None:
        self.name = name
        self.capabilities = capabilities
        self.counter = counter
        self.fill = fill
        self.tally = Tally()
        provider, _ = parse_spec(name)
        self.option_completion = 1 if provider in ("openai", "openai-completions") else 0
        """A server writes (and bills) the one token whose log-probabilities are read."""
        self._words_per_token: float | None = None

    def _count(self, prompt: int, completion: int) -> None:
        self.tally.requests += 1
        self.tally.prompt_tokens += prompt
        self.tally.completion_tokens += completion

    async def generate(self, messages: Sequence[Message], config: GenerateConfig) -> Generation:
        prompt = self.counter.prompt(messages)
        asked = messages[-1].content if messages else ""
        verdict, alone = verdict_for(asked)
        if alone or (verdict and config.max_tokens <= SHORT_REPLY):
            text = verdict
            n = min(config.max_tokens, max(1, self.counter.text(text)))
        else:
            n = max(1, round(self.fill * config.max_tokens))
            text = self._placeholder(n, messages, config, verdict)
        self._count(prompt, n)
        return Generation(text=text, prompt_tokens=prompt, completion_tokens=n)

    async def option_logprobs(
        self, messages: Sequence[Message], options: Sequence[str], config: GenerateConfig
    ) -> OptionScores:
        prompt = self.counter.prompt(messages)
        self._count(prompt, self.option_completion)
        even = -math.log(len(options)) if options else 0.0
        return OptionScores(logprobs={o: even for o in options}, prompt_tokens=prompt)

    async def reward(self, messages: Sequence[Message], response: str) -> Reward:
        prompt = self.counter.prompt([*messages, Message(role="assistant", content=response)])
        self._count(prompt, 0)
        return Reward(value=0.0, prompt_tokens=prompt)

    async def aclose(self) -> None:
        return None

    def _placeholder(
        self, n: int, messages: Sequence[Message], config: GenerateConfig, verdict: str
    ) -> str:
        """About ``n`` tokens of plain words, different for each request (a revision never
        equals the answer it revises), ending with the verdict the prompt asks for."""
        digest = hashlib.sha256(
            repr(([m.content for m in messages], config.seed)).encode()
        ).digest()
        rng = random.Random(digest)
        room = max(1, n - (self.counter.text(verdict) if verdict else 0))
        if self._words_per_token is None:
            probe = " ".join(_WORDS * 4)
            self._words_per_token = len(_WORDS) * 4 / max(1, self.counter.text(probe))
        words = [rng.choice(_WORDS) for _ in range(max(1, round(room * self._words_per_token)))]
        body = " ".join(words).capitalize()
        return f"{body}.\n{verdict}" if verdict else f"{body}."


_FROM_TO = re.compile(r"from (\d+) to (\d+)")
_LEVEL = re.compile(r"Score (\d+):")


def verdict_for(asked: str) -> tuple[str, bool]:
    """What a judge's reply must end with for the stage to read it, from the request's last
    turn: (the verdict, whether the reply is the verdict alone); ("", False) for an ordinary
    answer. Even-handed: A, or the middle of a score scale."""
    if asked.rstrip().endswith("###Feedback:"):  # Prometheus
        if "Response A" in asked:
            return "[RESULT] A", False
        levels = [int(s) for s in _LEVEL.findall(asked)] or [1, 5]
        return f"[RESULT] {(min(levels) + max(levels)) // 2}", False
    scale = _FROM_TO.search(asked)
    if scale is not None and ("Score" in asked or "score" in asked):
        middle = (int(scale.group(1)) + int(scale.group(2))) // 2
        if '"Score: "' in asked:
            return f"Score: {middle}", False
        return str(middle), True
    if '"Answer: A"' in asked:
        return "Answer: A", False
    if "A or B" in asked:
        return "A", True
    return "", False


class DryFactory(ModelFactory):
    """Builds dry models in place of the ones a stage asks for: one per spec, each with the
    real model's capabilities and tokenizer."""

    def __init__(self, opts: ModelAccess, estimate: EstimateOptions) -> None:
        super().__init__(opts, None)
        self.estimate = estimate
        self.dry: dict[str, DryBackend] = {}
        self.model_prices: dict[str, Prices | None] = {}
        """By spec: the price table's (--prices FILE over the built-in ones), or the flags'."""
        self._made: list[Any] = []
        """Backends made only to learn their capabilities, closed at the end."""

    def __call__(self, spec: str) -> Model:
        settings = self.opts.model_settings(spec)
        backend = self.dry.get(spec)
        if backend is None:
            caps, made = capabilities_of(spec, settings)
            if made is not None:
                self._made.append(made)
            backend = DryBackend(spec, caps, _counter(spec), self.estimate.estimate_fill)
            self.dry[spec] = backend
            self.model_prices[spec] = self.prices(settings)
        model = Model(
            backend,
            concurrency=settings.concurrency,
            timeout=settings.timeout,
            retry=RetryPolicy(attempts=1),
        )
        self.models.append(model)
        return model

    async def aclose(self) -> None:
        for backend in self._made:
            await backend.aclose()


_COUNTERS: dict[str, Counter] = {}


def _counter(spec: str) -> Counter:
    """One counter per spec in this process (a tokenizer loads once)."""
    if spec not in _COUNTERS:
        _COUNTERS[spec] = counter_for(spec)
    return _COUNTERS[spec]


# -- one stage ---------------------------------------------------------------------------------
@dataclass
class DryStage:
    """One stage run dry: what it says, and its sample's outputs for the stages after it."""

    said: StageEstimate
    outputs: list[BaseModel] = field(default_factory=list)
    """The output record of each sampled record that went through."""
    extra_outputs: Sequence[Path] = ()
    """Other files a run would write (revise --pairs): made after the run, not estimated."""


def sample_records(
    read: Callable[[OnInvalid | None], Iterator[Any]],
    limit: int | None,
    size: int,
    seed: int,
    skip_invalid: bool,
) -> tuple[list[Any], int]:
    """A seeded reservoir sample of ``size`` records, and how many records there are
    (``limit`` respected). Invalid rows stop it as they stop a run, unless skipped."""
    on_invalid: OnInvalid | None = (lambda error, row: None) if skip_invalid else None
    records = read(on_invalid)
    if limit is not None:
        records = itertools.islice(records, limit)
    rng = random.Random(f"estimate:{seed}")
    sample: list[Any] = []
    n = 0
    for n, record in enumerate(records, start=1):
        if len(sample) < size:
            sample.append(record)
        else:
            j = rng.randrange(n)
            if j < size:
                sample[j] = record
    return sample, n


async def dry_stage(
    spec: StageSpec,
    opts: StageOptions,
    estimate: EstimateOptions,
    *,
    name: str | None = None,
    scale: float | None = None,
) -> DryStage:
    """Run a sample of the stage's input through its work with dry models. ``scale``: the
    input is an earlier stage's dry sample, and each of its records stands for ``scale`` of
    the real input's (``--limit`` then caps the projection, not the sample)."""
    prepared = spec.prepare(opts)
    seed = int(getattr(opts, "seed", 0) or 0)
    limit = opts.limit if scale is None else None
    sample, n = sample_records(
        prepared.read, limit, estimate.estimate_sample, seed, opts.skip_invalid
    )
    if scale is not None:
        n = round(n * scale)
        if opts.limit is not None:
            n = min(n, opts.limit)
        sample = sample[: max(n, 0)]
    said = StageEstimate(stage=name or spec.name, records=n, sampled=len(sample))
    factory = DryFactory(opts, estimate)
    try:
        work = prepared.build(factory)
        results = await asyncio.gather(*(work(r) for r in sample), return_exceptions=True)
    finally:
        await factory.aclose()
    outputs: list[BaseModel] = []
    errors: list[BaseException] = []
    for result in results:
        if isinstance(result, BaseException):
            if not isinstance(result, Exception):
                raise result  # Ctrl-C, cancellation: not a record's failure
            errors.append(result)
        else:
            outputs.append(result)
    said.failed = len(errors)
    if errors:
        said.note = f"{len(errors)} sampled record(s) failed dry: {_one_line(errors[0])}"
    per = n / len(sample) if sample else 0.0
    for spec_name, backend in factory.dry.items():
        t = backend.tally
        usage = Tally(
            round(t.requests * per), round(t.prompt_tokens * per), round(t.completion_tokens * per)
        )
        prices = factory.model_prices[spec_name]
        cost = None
        if prices is not None:  # no prompt caching assumed; --batch at the batch discount
            batched = bool(getattr(opts, "batch", False))
            cost = prices.request_cost(
                usage.prompt_tokens, usage.completion_tokens, batched=batched
            )
        said.models.append(
            ModelEstimate(
                name=spec_name,
                requests=usage.requests,
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
                cost=cost,
                tokenizer=backend.counter.rule,
            )
        )
    return DryStage(said, outputs, prepared.extra_outputs)


def _one_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())}"[:300]


# -- a job, a recipe ---------------------------------------------------------------------------
def not_estimated(job: Job, name: str | None = None) -> StageEstimate:
    """A step the estimate does not run, saying why."""
    if isinstance(job, Trainer):
        why = "trains a model: not estimated (a judge it grades with is not counted)"
    elif isinstance(job, FileStage):
        why = "calls no model"
    else:
        why = "not estimated"
    return StageEstimate(stage=name or job.name, estimated=False, note=why)


async def estimate_job(job: Job, opts: BaseModel, estimate: EstimateOptions) -> Estimate:
    """One job (a command, ``charter.run``): its estimate, and its ceiling; nothing sent,
    nothing written."""
    return await _with_ceiling(lambda e: _job(job, opts, e), estimate)


async def estimate_recipe(plan: Sequence[Any], estimate: EstimateOptions) -> Estimate:
    """A recipe's steps (``charter.recipe.load_recipe``), in order: its estimate, and its
    ceiling. A stage whose input an earlier stage writes reads that stage's dry outputs (from
    a temporary folder, removed at the end) and is projected over that stage's records."""
    return await _with_ceiling(lambda e: _recipe(plan, e), estimate)


async def _with_ceiling(
    run: Callable[[EstimateOptions], Awaitable[Estimate]], estimate: EstimateOptions
) -> Estimate:
    said = await run(estimate)
    if estimate.estimate_fill < 1:
        ceiling = await run(estimate.model_copy(update={"estimate_fill": 1.0}))
        said.ceiling = ceiling
    return said


async def _job(job: Job, opts: BaseModel, estimate: EstimateOptions) -> Estimate:
    stages = [not_estimated(job)]
    if isinstance(job, StageSpec):
        assert isinstance(opts, StageOptions)
        stages = [(await dry_stage(job, opts, estimate)).said]
    return Estimate(stages=stages, sample=estimate.estimate_sample, fill=estimate.estimate_fill)


async def _recipe(plan: Sequence[Any], estimate: EstimateOptions) -> Estimate:
    stages: list[StageEstimate] = []
    made: dict[Path, tuple[Path, float] | str] = {}
    """An output -> (its dry sample file, real records per sampled one), or why none."""
    with tempfile.TemporaryDirectory(prefix="charter-estimate-") as tmp:
        for i, step in enumerate(plan):
            job, opts = step.job, step.options
            name = f"{i + 1}. {getattr(step, 'name', '') or job.name}"
            source = made.get(Path(opts.input).resolve())
            if not isinstance(job, StageSpec):
                stages.append(not_estimated(job, name))
                for out in _outputs(step):
                    made[out] = f"stage {i + 1} ({job.name}) writes it and is not estimated"
                continue
            if isinstance(source, str):
                stages.append(
                    StageEstimate(
                        stage=name, estimated=False, note=f"its input is not estimated: {source}"
                    )
                )
                made[Path(opts.output).resolve()] = f"stage {i + 1} ({job.name}) is not estimated"
                continue
            scale = None
            if source is not None:
                path, scale = source
                opts = opts.model_copy(update={"input": str(path)})
            try:
                dry = await dry_stage(job, opts, estimate, name=name, scale=scale)
            except CharterError as e:
                raise ConfigError(f"stage {i + 1} ({job.name}): {e}") from e
            stages.append(dry.said)
            for extra in dry.extra_outputs:
                made[Path(extra).resolve()] = (
                    f"{Path(extra).name} is written by stage {i + 1} ({job.name}) after its "
                    "run, from its output"
                )
            if not dry.outputs:
                made[Path(step.options.output).resolve()] = (
                    f"no sampled record of stage {i + 1} ({job.name}) went through"
                )
                continue
            sample_file = Path(tmp) / f"{i + 1}.jsonl"
            writer = JsonlWriter(sample_file)
            try:
                for output in dry.outputs:
                    writer.write(output)
            finally:
                writer.close()
            per = dry.said.records / len(dry.outputs)
            made[Path(step.options.output).resolve()] = (sample_file, per)
    return Estimate(stages=stages, sample=estimate.estimate_sample, fill=estimate.estimate_fill)


def _outputs(step: Any) -> list[Path]:
    """The files a step that the estimate does not run writes."""
    job, opts = step.job, step.options
    if isinstance(job, FileStage):
        return [p.resolve() for p in job.writes(opts)]
    return [Path(opts.output).resolve()]


# -- printing ----------------------------------------------------------------------------------
def print_estimate(est: Estimate, file: Any = None) -> None:
    """The estimate as a table (stage, model, records, requests, tokens, cost), then the
    rules it rests on."""
    from rich.console import Console
    from rich.table import Table

    console = Console(file=file, soft_wrap=True, highlight=False)
    table = Table(
        "stage",
        "model",
        "records",
        "requests",
        "prompt tokens",
        "completion tokens",
        "cost",
        header_style="bold",
        title="--estimate: nothing sent, nothing written",
    )
    for s in est.stages:
        if not s.estimated:
            table.add_row(s.stage, "-", "-", "-", "-", "-", "-")
            continue
        for i, m in enumerate(s.models or [None]):
            if m is None:
                table.add_row(s.stage, "(no model called)", f"{s.records:,}", "0", "0", "0", "-")
                continue
            table.add_row(
                s.stage if i == 0 else "",
                m.name,
                f"{s.records:,}" if i == 0 else "",
                f"{m.requests:,}",
                f"{m.prompt_tokens:,}",
                f"{m.completion_tokens:,}",
                "-" if m.cost is None else f"${m.cost:,.4f}",
            )
    cost = est.cost
    table.add_section()
    table.add_row(
        "total",
        "",
        "",
        f"{est.requests:,}",
        f"{est.prompt_tokens:,}",
        f"{est.completion_tokens:,}",
        "-" if cost is None else f"${cost:,.4f}",
    )
    console.print(table)
    fill = "max_tokens (the cap: a ceiling)" if est.fill == 1 else f"{est.fill:g} x max_tokens"
    lines = []
    top = est.ceiling
    if top is not None and (top.prompt_tokens, top.completion_tokens) != (
        est.prompt_tokens,
        est.completion_tokens,
    ):
        dollars = "" if top.cost is None else f", ${top.cost:,.4f}"
        lines.append(
            f"ceiling, every answer at max_tokens: {top.prompt_tokens:,} prompt + "
            f"{top.completion_tokens:,} completion tokens{dollars}"
        )
    lines += [
        f"sample: up to {est.sample} records per stage run dry (seeded), the rest projected; "
        f"no cache hits assumed",
        f"answers assumed {fill} long; option requests 1 token from a server, 0 locally",
    ]
    counted: dict[str, str] = {}
    for s in est.stages:
        for m in s.models:
            counted.setdefault(m.name, m.tokenizer)
        if s.estimated and s.sampled:
            lines.append(f"{s.stage}: {s.sampled} of {s.records:,} records run dry")
        if s.note:
            lines.append(f"{s.stage}: {s.note}")
    lines += [f"tokens of {name}: {rule}" for name, rule in counted.items()]
    if cost is None:
        lines.append(
            "cost: no prices (the built-in table has none of these models: give --prices FILE, "
            "or --price-input and --price-output, $ per 1M tokens)"
        )
    for line in lines:
        console.print(line, markup=False)
