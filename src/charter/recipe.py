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

Relative paths are relative to the directory charter runs in, as on the command line.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from charter.annotate.route import ROUTE_HELP, RouteOptions, RouteSummary, run_route
from charter.config import StageOptions
from charter.errors import CharterError, ConfigError
from charter.registry import STAGES
from charter.stages.select import SELECT_HELP, SelectOptions, SelectSummary, run_select
from charter.train.options import TRAINERS, TrainOptions
from charter.validation import describe_validation

TRAIN = "train"
"""The recipe stage that trains a model (``charter train METHOD``)."""
ROUTE = "route"
"""The recipe stage that picks pairs for people to label (``charter route``)."""
SELECT = "select"
"""The recipe stage that picks best-of-n rows and scored pairs (``charter select``)."""


FileSummary = RouteSummary | SelectSummary
"""What a file stage returns; ``str()`` is the line its command prints."""


@dataclass(frozen=True)
class FileStage:
    """A stage that rewrites one file from another in one pass (no engine, no model): its
    command, its recipe stage and ``charter.run`` take the same options."""

    options: type[RouteOptions] | type[SelectOptions]
    run: Callable[[Any], FileSummary]
    """Options -> the summary (one line when printed)."""
    help: str


FILE_STAGES: dict[str, FileStage] = {
    ROUTE: FileStage(RouteOptions, run_route, ROUTE_HELP),
    SELECT: FileStage(SelectOptions, run_select, SELECT_HELP),
}
Options = StageOptions | TrainOptions | RouteOptions | SelectOptions


class Recipe(BaseModel):
    """A recipe file."""

    model_config = ConfigDict(extra="forbid")

    name: str = ""
    """Shown in logs."""
    defaults: dict[str, Any] = Field(default_factory=dict)
    """Options applied to every stage that takes them."""
    stages: list[dict[str, Any]] = Field(min_length=1)
    """Stages in order; each has ``stage`` (a name in ``charter.registry``) and its options."""


def load_recipe(path: str | Path) -> list[tuple[str, Options]]:
    """Validate a recipe into (stage kind, options) pairs; errors name the file, stage, field."""
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
    kinds: list[type[BaseModel]] = [spec.options for spec in STAGES.values()]
    kinds += [*TRAINERS.values(), *(stage.options for stage in FILE_STAGES.values())]
    known = set().union(*(cls.model_fields for cls in kinds))
    unknown = sorted(set(recipe.defaults) - known)
    if unknown:
        raise ConfigError(f"{path}: defaults: unknown option(s) {', '.join(unknown)}")
    named: dict[str, int] = {}
    """Stage name -> index; an implicit name (the stage kind) used twice maps to -1."""
    plan: list[tuple[str, Options]] = []
    for i, raw in enumerate(recipe.stages):
        entry = dict(raw)
        kind = entry.pop("stage", None)
        explicit = "name" in entry
        label = str(entry.pop("name", kind))
        where = f"{path}: stages[{i}]"
        cls: type[BaseModel]
        if kind == TRAIN:
            method = entry.get("method")
            if method not in TRAINERS:
                raise ConfigError(
                    f"{where} ({label}): a train stage needs 'method': one of "
                    f"{', '.join(TRAINERS)} (got {method!r})"
                )
            cls = TRAINERS[method]
        elif kind in FILE_STAGES:
            cls = FILE_STAGES[kind].options
        elif kind in STAGES:
            cls = STAGES[kind].options
        else:
            kinds_ = [*STAGES, TRAIN, *FILE_STAGES]
            raise ConfigError(f"{where}: 'stage' must be one of {', '.join(kinds_)} (got {kind!r})")
        values = {k: v for k, v in recipe.defaults.items() if k in cls.model_fields}
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
            values["input"] = str(plan[source][1].output)
        try:
            options: Options = cls.model_validate(values)  # type: ignore[assignment]
        except ValidationError as e:
            raise ConfigError(f"{where} ({label}): {describe_validation(e)}") from e
        if label in named:
            if explicit:
                raise ConfigError(f"{where}: two stages are named {label!r}")
            named[label] = -1
        else:
            named[label] = i
        plan.append((kind, options))
    _check_plan(path, plan)
    return plan


def _check_plan(path: Path, plan: list[tuple[str, Options]]) -> None:
    """Before any stage runs: every input is there or made by an earlier stage, no output is
    written twice or overwrites an input, and each stage's files (constitution, rubric,
    few-shot) load."""
    from charter.engines.base import OutputPaths, check_outputs, check_read_files

    written: dict[Path, int] = {}
    models: dict[Path, int] = {}
    """Model folders written by train stages, by stage index."""
    for i, (kind, opts) in enumerate(plan):
        where = f"{path}: stages[{i}] ({kind}): "
        made_earlier = any(_same(Path(opts.input), p) for p in written)
        if not made_earlier and not opts.input.startswith("hf:") and not Path(opts.input).exists():
            raise ConfigError(f"{where}input not found: {opts.input}")
        for folder, j in models.items():
            if _same(Path(opts.input), folder):
                raise ConfigError(
                    f"{where}input {opts.input} is the model folder stages[{j}] trains, not data"
                )
        _check_models(where, opts, models)
        if isinstance(opts, TrainOptions):
            files = [opts.output]
            models[opts.output] = i
            if _same(Path(opts.input), opts.output):
                raise ConfigError(f"{where}the model folder is the stage's own input")
        elif isinstance(opts, RouteOptions):
            files = [opts.output]
        elif isinstance(opts, SelectOptions):
            files = [opts.output, *([opts.pairs] if opts.pairs is not None else [])]
        else:
            try:
                prepared = STAGES[kind].prepare(opts)
            except CharterError as e:
                raise ConfigError(f"{where}{e}") from e
            try:
                outputs = OutputPaths.for_run(opts.output, opts.engine)
            except ConfigError as e:
                raise ConfigError(f"{where}{e}") from e
            files = [*outputs.files, *prepared.extra_outputs]
        try:  # writing into this stage's input, or an earlier stage's, would corrupt it
            check_outputs([o.input for _, o in plan[: i + 1]], files)
            for _, earlier in plan[: i + 1]:
                if isinstance(earlier, StageOptions):
                    check_read_files(earlier, files)
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


def _same(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve()


MODEL_FIELDS = ("model", "critic", "judge", "user_model", "reward", "reward_judge")
"""Options that name models: a local folder among them must exist or be trained earlier."""


def _check_models(where: str, opts: Options, trained: dict[Path, int]) -> None:
    """Every model folder a stage names (``hf/DIR``, ``rm/DIR``, a train stage's ``model``)
    exists, or is the output of an earlier train stage."""
    for name in MODEL_FIELDS:
        value = getattr(opts, name, None)
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
