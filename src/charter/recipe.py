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

Relative paths are relative to the directory charter runs in, as on the command line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from charter.config import STAGES, StageOptions
from charter.errors import ConfigError
from charter.validation import describe_validation


class Recipe(BaseModel):
    """A recipe file."""

    model_config = ConfigDict(extra="forbid")

    name: str = ""
    """Shown in logs."""
    defaults: dict[str, Any] = Field(default_factory=dict)
    """Options applied to every stage that takes them."""
    stages: list[dict[str, Any]] = Field(min_length=1)
    """Stages in order; each has ``stage`` (respond, revise) and that stage's options."""


def load_recipe(path: str | Path) -> list[tuple[str, StageOptions]]:
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
    known = set().union(*(cls.model_fields for cls in STAGES.values()))
    unknown = sorted(set(recipe.defaults) - known)
    if unknown:
        raise ConfigError(f"{path}: defaults: unknown option(s) {', '.join(unknown)}")
    outputs: dict[str, str] = {}
    plan: list[tuple[str, StageOptions]] = []
    for i, raw in enumerate(recipe.stages):
        entry = dict(raw)
        kind = entry.pop("stage", None)
        label = entry.pop("name", kind)
        where = f"{path}: stages[{i}]"
        if kind not in STAGES:
            raise ConfigError(f"{where}: 'stage' must be one of {', '.join(STAGES)} (got {kind!r})")
        cls = STAGES[kind]
        values = {k: v for k, v in recipe.defaults.items() if k in cls.model_fields}
        values.update(entry)
        ref = values.get("input")
        if isinstance(ref, str) and ref.startswith("@"):
            if ref[1:] not in outputs:
                raise ConfigError(f"{where} ({label}): input {ref!r} names no earlier stage")
            values["input"] = outputs[ref[1:]]
        try:
            options = cls.model_validate(values)
        except ValidationError as e:
            raise ConfigError(f"{where} ({label}): {describe_validation(e)}") from e
        outputs[str(label)] = str(options.output)
        plan.append((kind, options))
    return plan
