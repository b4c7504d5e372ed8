"""Recipes: a YAML file that chains stages with the same options as the CLI flags.

```yaml
defaults:                 # applied to every stage that takes the option
  model: smollm2
  max_tokens: 128
stages:
  - stage: respond
    input: examples/prompts.jsonl
    output: runs/demo/responses.jsonl
  - stage: revise
    input: "@respond"     # the output of the stage named respond
    output: runs/demo/revisions.jsonl
    constitution: harmless
```

A ``stage: train`` entry runs ``charter train METHOD`` (``method: sft|reward|dpo|rl``) with
the same keys as its flags; any other TRL option goes under ``trl:``. Its ``output`` is a
model folder, which later stages name as ``hf/FOLDER`` or ``rm/FOLDER``.

A ``stage: route`` entry runs ``charter route`` (``budget``, ``by``, ``control``, ``seed``,
``question``): its input is a label file (e.g. ``"@label"``), its output the queue for
``charter annotate``. It rewrites the queue whole each run, identically for the same labels.

A ``stage: select`` entry runs ``charter select`` (``pairs``, ``threshold``, ``min_gap``,
``all_pairs``): its input is a score file (e.g. ``"@score"``), its output the best-of-n SFT
rows; ``pairs`` names the preference-pair file a later train stage can take.

A ``stage: merge`` entry runs ``charter merge`` (``human``: the annotation logs): its input
is a label file, its output the merged file a later train stage can take.

Any name in ``charter.registry`` is a stage; the engine's options (``engine``, ``workers``,
``shard_size``...) go to the stages an engine runs.

Relative paths are relative to the directory charter runs in, as on the command line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from charter.api import Describe, job_options
from charter.config import EngineOptions, StageOptions, model_options
from charter.errors import CharterError, ConfigError
from charter.registry import JOBS, FileStage, Job, Trainer, find
from charter.stages.spec import StageSpec
from charter.train.options import TrainOptions
from charter.validation import describe_validation

TRAIN = "train"
"""The recipe stage that trains a model (``charter train METHOD``, with ``method:``)."""


@dataclass(frozen=True)
class Step:
    """One stage of a recipe, checked: the job, its options, and (for a stage an engine
    runs) the engine's."""

    job: Job
    options: Any
    engine: EngineOptions | None = None
    name: str = ""
    """Its ``name`` in the recipe, else the stage's kind."""

    @property
    def output(self) -> Path:
        return Path(self.options.output)


class Recipe(BaseModel):
    """A recipe file."""

    model_config = ConfigDict(extra="forbid")

    name: str = ""
    """Shown in logs."""
    defaults: dict[str, Any] = Field(default_factory=dict)
    """Options applied to every stage that takes them."""
    stages: list[dict[str, Any]] = Field(min_length=1)
    """Stages in order; each has ``stage`` (a name in ``charter.registry``) and its options."""


def load_recipe(path: str | Path) -> list[Step]:
    """Validate a recipe into its steps; errors name the file, stage and field."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(e).split())}") from e
    try:
        recipe = Recipe.model_validate(data if isinstance(data, dict) else {})
    except ValidationError as e:
        raise ConfigError(f"{path}: {describe_validation(e)}") from e
    known = set(EngineOptions.model_fields).union(
        *(job.options.model_fields for job in JOBS.values())
    )
    unknown = sorted(set(recipe.defaults) - known)
    if unknown:
        raise ConfigError(f"{path}: defaults: unknown option(s) {', '.join(unknown)}")
    named: dict[str, int] = {}
    """Stage name -> index; an implicit name (the stage kind) used twice maps to -1."""
    plan: list[Step] = []
    for i, raw in enumerate(recipe.stages):
        entry = dict(raw)
        kind = entry.pop("stage", None)
        explicit = "name" in entry
        label = str(entry.pop("name", kind))
        where = f"{path}: stages[{i}]"
        job = _job(kind, entry, f"{where} ({label})", where)
        takes = set(job.options.model_fields)
        if isinstance(job, StageSpec):
            takes |= set(EngineOptions.model_fields)
        values = {k: v for k, v in recipe.defaults.items() if k in takes}
        values.update(entry)
        ref = values.get("input")
        if isinstance(ref, str) and ref.startswith("@"):
            source = named.get(ref[1:])
            if source is None:
                raise ConfigError(f"{where} ({label}): input {ref!r} names no earlier stage")
            if source < 0:
                raise ConfigError(
                    f"{where} ({label}): input {ref!r} is ambiguous: several earlier stages are "
                    f"{ref[1:]!r} stages; give each a 'name' and refer to that"
                )
            values["input"] = str(plan[source].output)
        options, engine = job_options(job, values, _said_at(f"{where} ({label})"))
        if label in named:
            if explicit:
                raise ConfigError(f"{where}: two stages are named {label!r}")
            named[label] = -1
        else:
            named[label] = i
        plan.append(Step(job, options, engine, label))
    _check_plan(path, plan)
    return plan


def _said_at(at: str) -> Describe:
    """A bad option named with the recipe's stage."""
    return lambda e: f"{at}: {describe_validation(e)}"


def _job(kind: object, entry: dict[str, Any], where: str, at: str) -> Job:
    """The job a recipe entry names: ``stage: train`` with ``method:``, else any name in
    the registry other than a trainer's."""
    if kind == TRAIN:
        method = entry.get("method")
        trainers = [job.method for job in JOBS.values() if isinstance(job, Trainer)]
        if method not in trainers:
            raise ConfigError(
                f"{where}: a train stage needs 'method': one of {', '.join(trainers)} "
                f"(got {method!r})"
            )
        return find(f"{TRAIN} {method}")
    names = [name for name, job in JOBS.items() if not isinstance(job, Trainer)]
    if kind not in names:
        kinds = [*names, TRAIN]
        raise ConfigError(f"{at}: 'stage' must be one of {', '.join(kinds)} (got {kind!r})")
    return find(str(kind))


def _check_plan(path: Path, plan: list[Step]) -> None:
    """Before any stage runs: every input is there or made by an earlier stage, no output is
    written twice or overwrites an input, and each stage's files (constitution, rubric,
    few-shot) load."""
    from charter.engines.base import OutputPaths, check_outputs, check_read_files

    written: dict[Path, int] = {}
    models: dict[Path, int] = {}
    """Model folders written by train stages, by stage index."""
    for i, step in enumerate(plan):
        opts, job = step.options, step.job
        where = f"{path}: stages[{i}] ({job.name}): "
        made_earlier = any(_same(Path(opts.input), p) for p in written)
        if not made_earlier and not opts.input.startswith("hf:") and not Path(opts.input).exists():
            raise ConfigError(f"{where}input not found: {opts.input}")
        for folder, j in models.items():
            if _same(Path(opts.input), folder):
                raise ConfigError(
                    f"{where}input {opts.input} is the model folder stages[{j}] trains, not data"
                )
        _check_models(where, opts, models)
        if isinstance(job, Trainer):
            files = [opts.output]
            models[opts.output] = i
            if _same(Path(opts.input), opts.output):
                raise ConfigError(f"{where}the model folder is the stage's own input")
        elif isinstance(job, FileStage):
            files = job.writes(opts)
            for read in job.reads(opts):
                if not read.exists() and not any(_same(read, p) for p in written):
                    raise ConfigError(f"{where}not found: {read}")
        else:
            assert step.engine is not None
            try:
                outputs = OutputPaths.for_run(opts.output, step.engine.engine)
            except ConfigError as e:
                raise ConfigError(f"{where}{e}") from e
            if _reads_made(opts, written):  # a constitution from-polis writes: loaded later
                extra = [
                    getattr(opts, f) for f in opts.output_fields if f not in ("output", "cache")
                ]
                files = [*outputs.files, *(Path(f) for f in extra if f)]
            else:
                try:
                    prepared = job.prepare(opts)
                except CharterError as e:
                    raise ConfigError(f"{where}{e}") from e
                files = [*outputs.files, *prepared.extra_outputs]
        try:  # writing into this stage's input, or an earlier stage's, would corrupt it
            check_outputs([r for s in plan[: i + 1] for r in _reads(s)], files)
            for earlier in plan[: i + 1]:
                if isinstance(earlier.options, StageOptions):
                    check_read_files(earlier.options, files)
        except ConfigError as e:
            raise ConfigError(f"{where}{e}") from e
        for f in files:
            for other, j in written.items():
                if _same(f, other) and j == i:
                    raise ConfigError(
                        f"{where}writes {f} as two of its files (output, pairs, sft...): give "
                        "each its own path"
                    )
                if _same(f, other):
                    raise ConfigError(
                        f"{where}writes {f}, which stages[{j}] writes too: give each stage its "
                        "own output"
                    )
            written[f] = i


def _reads_made(opts: StageOptions, written: dict[Path, int]) -> bool:
    """Whether a file the stage reads besides its input (a constitution, a rubric) is one an
    earlier stage writes: the stage is then prepared (its files loaded) when it runs."""
    for name in type(opts).model_fields:
        value = getattr(opts, name)
        if name == "input" or name in opts.output_fields or not isinstance(value, str | Path):
            continue
        if any(_same(Path(value), p) for p in written):
            return True
    return False


def _reads(step: Step) -> list[str]:
    """What a step reads: its input, and a file stage's other files (merge's logs)."""
    extra = step.job.reads(step.options) if isinstance(step.job, FileStage) else []
    return [step.options.input, *map(str, extra)]


def _same(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve()


def _check_models(where: str, opts: Any, trained: dict[Path, int]) -> None:
    """Every model folder a stage names (``hf/DIR``, ``rm/DIR``, a train stage's ``model``)
    exists, or is the output of an earlier train stage."""
    for name in model_options(type(opts)):
        value = getattr(opts, name)
        specs = value if isinstance(value, list) else str(value or "").split(",")
        for spec in (s.strip() for s in specs if s and s.strip()):
            if spec.startswith(("hf/", "rm/")):
                folder = Path(spec[3:])
                hub = spec.startswith("hf/") and len(spec[3:].split("/")) == 2
            elif isinstance(opts, TrainOptions) and name == "model" and spec != "smollm2":
                folder, hub = Path(spec), False
            else:
                continue
            if folder.exists() or hub or any(_same(folder, t) for t in trained):
                continue
            raise ConfigError(
                f"{where}{name}: {spec}: no such model folder, and no earlier train stage writes it"
            )
