"""Typed options shared by CLI flags, recipe files and ``charter.run``: one config source.

Every field is a CLI flag of the same name (``max_tokens`` is ``--max-tokens``), a key of a
recipe stage and a keyword of ``charter.run``, so all three describe a job the same way. The
options come in groups, composed the way TRL composes its config dataclasses: how models are
reached (``ModelAccess``), how text is sampled (``Sampling``), what a stage reads and writes
(``StageOptions``), how pairs are judged (``JudgingChoices``), and where the work runs
(``EngineOptions``, which the engine takes apart from the stage's options). Each stage's own
options extend :class:`StageOptions` in the stage's module.
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, field_validator


class ModelRef:
    """Marks an option that names a model (``ModelSpec``): recipes check that its local
    folder exists or is trained earlier, the Ray engine asks GPUs for a local one."""


ModelSpec = Annotated[str, ModelRef()]
"""A model spec option: ``openai/NAME``, ``hf/PATH``, ``rm/DIR``, ``smollm2``, ``mock/NAME``."""


def model_options(options: type[BaseModel]) -> tuple[str, ...]:
    """The options of ``options`` that name models (declared with ``ModelSpec``)."""

    def names_a_model(annotation: Any) -> bool:
        if any(isinstance(m, ModelRef) for m in getattr(annotation, "__metadata__", ())):
            return True
        return any(names_a_model(arg) for arg in typing.get_args(annotation))

    return tuple(
        name
        for name, field in options.model_fields.items()
        if any(isinstance(m, ModelRef) for m in field.metadata) or names_a_model(field.annotation)
    )


class Positional:
    """Marks an option given on the command line as an argument, not a flag (``input``, and
    ``merge``'s annotation logs)."""


InputPath = Annotated[str, Positional()]
"""What a job reads: the command line's first argument."""


OrderChoice = Literal["both", "random", "first"]
"""Which presentation orders a pairwise judge is asked in."""
Weights = Literal["equal", "priority", "inverse-priority"]
"""How --principles verdicts make one p_a (``charter.judges.weights``)."""
PRIORITY_MARGIN = 0.05
"""With --weights priority, a level whose verdict is no further than this from 0.5 has no
clear preference and gives way to the levels below (--priority-margin). Small, so that a
principle that separates the answers at all decides, as the spec's rule says; inside the
default CoT clamp (0.4, 0.6), so that reasoned verdicts can be clear."""
PairMode = Literal["all", "adjacent", "random"]
"""Which pairs a row with several answers gives (``charter.pairs``)."""


class ModelAccess(BaseModel):
    """How the models a stage builds are reached and treated: shared by a stage's options and
    each model's settings, declared once."""

    # Field docstrings are the CLI help texts too (charter.cli_options).
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    base_url: str | None = None
    """OpenAI-compatible server URL, or several endpoints of one deployment separated by
    commas (a list in a recipe): each request goes to the one with the fewest in flight, and
    one that refuses connections or keeps failing is set aside for a while (default:
    $OPENAI_BASE_URL, else api.openai.com)."""
    concurrency: int = Field(default=16, ge=1)
    """Requests in flight per endpoint (shared by the run's models on the same server)."""
    timeout: float = Field(default=120.0, gt=0)
    """Seconds per request before retrying."""
    retries: int = Field(default=5, ge=0)
    """Retries on 429/5xx/timeouts/connection errors."""
    retry_wait: float = Field(default=1.0, ge=0)
    """First backoff in seconds (doubles each retry, plus jitter; Retry-After wins)."""
    price_input: float | None = Field(default=None, ge=0)
    """$ per 1M prompt tokens (cost estimate)."""
    price_output: float | None = Field(default=None, ge=0)
    """$ per 1M completion tokens."""
    prices: Path | None = None
    """Prices file (YAML or JSON: model name -> input, output, cached_input, cache_write,
    batch_discount per 1M tokens) adding to or overriding the built-in table (docs/cost.md);
    --price-input/--price-output win over both."""

    @field_validator("base_url", mode="before")
    @classmethod
    def _endpoints_as_text(cls, value: object) -> object:
        """A recipe's list of endpoints travels as one comma-separated string, as the flag."""
        if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
            return ",".join(value)
        return value

    def model_settings(self, spec: str) -> ModelSettings:
        """``spec`` reached and treated as these options say."""
        return ModelSettings(spec=spec, **self.model_dump(include=set(ModelAccess.model_fields)))


class Sampling(BaseModel):
    """How text is sampled: shared by a stage's options and its config, declared once."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    temperature: float = Field(default=0.7, ge=0.0)
    """Sampling temperature (0 = greedy)."""
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    """Nucleus sampling mass."""
    max_tokens: int = Field(default=256, ge=1)
    """Cap on each generated turn."""
    seed: int = 0
    """Base seed: each request's seed derives from it and the record id."""

    def sampling(self) -> dict[str, object]:
        """The sampling settings, for a stage's config."""
        return self.model_dump(include=set(Sampling.model_fields))


class ModelSettings(ModelAccess):
    """Which model to call and how to treat it."""

    spec: str
    """``provider/model``: openai/NAME, hf/PATH, smollm2, mock/NAME."""


class StageOptions(ModelAccess):
    """Options every stage takes: how its models are reached, what it reads and writes. A
    stage composes how it samples (``Sampling``) and, if it judges pairs, how
    (``JudgingChoices``)."""

    input: InputPath
    """Input file, dataset folder or ``hf:NAME``."""
    output: Path
    """Output .jsonl or .parquet."""
    skip_invalid: bool = False
    """Write invalid input rows to OUT.rejects.jsonl and go on, instead of stopping."""
    cache: Path | None = None
    """Request cache file (default: charter-cache.sqlite beside the output)."""
    no_cache: bool = False
    """Neither read nor write the request cache."""
    limit: int | None = Field(default=None, ge=1)
    """Only the first N input rows."""
    force: bool = False
    """Resume onto an output made with other settings (see OUT.settings.json)."""
    batch: bool = False
    """Send the requests through the provider's batch API (openai/, anthropic/): about half
    the price, answered within a day. Each round of requests goes out as batches recorded in
    OUT.batches.json before the run waits; a re-run attaches to them and submits nothing
    again (see ``charter batch``)."""
    batch_poll: float = Field(default=30.0, gt=0)
    """With --batch: seconds between checks of the batches' states."""
    max_cost: float | None = Field(default=None, gt=0)
    """Stop before the output's spend (this run's and, from OUT.cost.json, earlier runs')
    would pass this many dollars; a re-run with a higher cap resumes. Every model needs a
    price."""

    output_fields: ClassVar[tuple[str, ...]] = ("output", "cache")
    """The options that name files the run writes (a stage adds its own: ``--sft``,
    ``--pairs``); every other option naming a file is read, and may not be written."""

    @field_validator("input", mode="before")
    @classmethod
    def _path_as_text(cls, value: object) -> object:
        return str(value) if isinstance(value, Path) else value


class EngineOptions(BaseModel):
    """Where a stage's work runs: the engine's options, taken apart from the stage's (a stage
    never reads them, and they never change what a record says)."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    engine: Literal["local", "ray"] = "local"
    """Where the work runs: ``local`` (this process; the default) or ``ray`` (shards on the
    workers of a Ray cluster; pip install 'charter[ray]')."""
    ray_address: str | None = None
    """With --engine ray: the cluster to join (``auto``: the one this machine belongs to;
    ``ray://HOST:10001``); default: $RAY_ADDRESS, else the cluster running on this machine,
    else a local Ray started for the run."""
    workers: int | None = Field(default=None, ge=1)
    """With --engine ray: workers to run (default: one per CPU of the cluster, or one per GPU
    for local models)."""
    shard_size: int = Field(default=256, ge=1)
    """With --engine ray: input rows per shard, the unit Ray schedules, retries and caches."""
    part_format: Literal["jsonl", "parquet"] = "jsonl"
    """With --engine ray and a folder as the output: the part files' format."""


def parse_clamp(value: object) -> object:
    """``LO,HI`` as the pair it names (a tuple or list passes as it is)."""
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",")]
        if len(parts) != 2:
            raise ValueError("write LO,HI, e.g. 0.4,0.6")
        return tuple(parts)
    return value


def check_clamp(value: tuple[float, float] | None) -> tuple[float, float] | None:
    """A clamp inside [0, 1], low end first."""
    if value is not None and not 0.0 <= value[0] <= value[1] <= 1.0:
        raise ValueError("write LO,HI with 0 <= LO <= HI <= 1, e.g. 0.4,0.6")
    return value


Clamp = Annotated[
    tuple[float, float] | None, BeforeValidator(parse_clamp), AfterValidator(check_clamp)
]
"""A clamp of probabilities, ``LO,HI`` on the command line; None: none (or CoT's)."""


class JudgingChoices(BaseModel):
    """How a pair is judged: shared by the judge's config and the ``charter label`` options,
    so the CLI flag, the recipe key and the judge's setting are one declaration."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    principles: int = Field(default=1, ge=1)
    """Principles sampled per pair, each asked on its own; their probabilities are averaged
    (see --weights)."""
    principles_in_prompt: int = Field(default=1, ge=1)
    """Principles sampled per pair and shown together in one question (listed by priority,
    with the order stated, when the constitution has priorities); excludes --principles."""
    weights: Weights = "equal"
    """How the --principles verdicts make p_a: equal (their mean); priority (the spec's rule:
    the verdicts of each priority level are averaged, and the highest level whose verdict is
    clear, see --priority-margin, decides alone; lower levels only break ties); or
    inverse-priority (a mean weighted by 1/priority, so lower levels together can outvote a
    higher one). A principle without a priority ranks as the lowest stated one."""
    priority_margin: float | None = Field(default=None, ge=0.0, lt=0.5)
    """With --weights priority: a level's verdict is clear, and decides, when its p_a is
    further than this from 0.5; nearer, it gives way to the next level down. When no level is
    clear, p_a is the mean of the levels' verdicts. Default 0.05."""
    orders: OrderChoice = "both"
    """Ask in both orders (default), one random order, or the given order only."""
    cot: bool = False
    """Let the judge reason first, then score its answer."""
    cot_style: Literal["ask", "continue"] = "ask"
    """With --cot, how the answer is scored: ``ask`` (default, works with every judge): the
    letter is asked in a second user turn after the reasoning; ``continue`` (the CAI paper's
    form): the reasoning and the answer in one sequence, the assistant turn continued with
    "So the answer is (" and the option scored there (hf/, smollm2, openai-completions/,
    vLLM's continue_final_message; a judge that cannot falls back to ``ask``, with a
    warning)."""
    clamp: Clamp = None
    """Clamp each probability to [lo, hi] (``LO,HI``); default 0.4,0.6 with CoT, none otherwise."""
    votes: int = Field(default=1, ge=1)
    """Samples per judgement when the judge returns no log-probabilities."""
    min_confidence: float = Field(default=0.0, ge=0.0, le=0.5)
    """Pairs with |p_a - 0.5| below this get no TRL columns (kept and flagged)."""
    keep_inconsistent: bool = False
    """Give position-inconsistent pairs TRL columns too; by default they keep p_a only, like
    ties, and are flagged excluded_reason: inconsistent."""

    PRIORITY_SETTING: ClassVar[tuple[str, ...]] = ("priority_margin",)
    """Left out of a stage's settings as an option: ``priority_setting`` states it."""

    @property
    def effective_clamp(self) -> tuple[float, float] | None:
        return self.clamp if self.clamp is not None else ((0.4, 0.6) if self.cot else None)

    @property
    def effective_margin(self) -> float:
        """--priority-margin, or its default."""
        return PRIORITY_MARGIN if self.priority_margin is None else self.priority_margin

    def priority_setting(self) -> dict[str, float]:
        """The margin --weights priority decides by, for a stage's settings: stated even at
        its default, so that an output labelled under --weights priority before the highest
        clear level decided (its settings name no margin) is not resumed under the new rule.
        Absent with other weights, whose settings stay as they were before the option
        existed."""
        if self.weights != "priority":
            return {}
        return {"priority_margin": self.effective_margin}


class PairJudgeOptions(StageOptions, Sampling, JudgingChoices):
    """Options of a stage that asks a judge about pairs (label, probe): the stage options,
    how pairs are judged, and the judge."""

    judge: ModelSpec
    """Feedback model spec."""
    constitution: str
    """Built-in name or constitution file (its comparison questions are asked)."""
    pairs: PairMode = "all"
    """Which pairs to judge when a row has several answers."""

    max_tokens: int = Field(default=512, ge=1)
    """Cap on reasoning: CoT reasoning, or the whole reply of a judge that reasons before it
    answers."""
