"""Rubrics for LLM-as-judge scoring: a criterion and a description for each score level."""

from __future__ import annotations

import json
from functools import cached_property
from importlib import resources
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from charter.constitution import Constitution, Principle
from charter.errors import ConfigError
from charter.validation import validated


class Rubric(BaseModel):
    """What to judge and what each score means."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    criterion: str = Field(min_length=1)
    """The question the score answers."""
    levels: dict[int, str] = Field(min_length=2)
    """Score -> description; consecutive integers (1-5 by default)."""

    @model_validator(mode="after")
    def _consecutive(self) -> Rubric:
        scores = sorted(self.levels)
        if scores != list(range(scores[0], scores[0] + len(scores))):
            raise ValueError("levels must be consecutive integers, e.g. 1 to 5")
        if scores[0] < 0 or scores[-1] > 9:
            raise ValueError("levels must lie between 0 and 9 (single-token scores)")
        if not self.criterion.strip():
            raise ValueError("criterion must not be blank (only whitespace)")
        blank = [s for s in scores if not self.levels[s].strip()]
        if blank:
            raise ValueError(f"level {blank[0]} has a blank description")
        return self

    @property
    def scores(self) -> list[int]:
        return sorted(self.levels)

    @cached_property
    def hash(self) -> str:
        import hashlib

        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True, ensure_ascii=False)
        return "sha256:" + hashlib.sha256(blob.encode()).hexdigest()[:16]

    def as_constitution(self) -> Constitution:
        """A one-principle constitution, so relative grading reuses the labelling machinery."""
        levels = "\n".join(f"{s}: {d}" for s, d in sorted(self.levels.items()))
        question = (
            f"Judged by this criterion: {self.criterion}\n"
            f"(for reference, the levels from worst to best are:\n{levels})\n"
            "Which candidate is better by this criterion?"
        )
        principle = Principle(
            id=self.name,
            critique_request=f"Judge the last answer by this criterion: {self.criterion}",
            revision_request=f"Rewrite the answer to do better on: {self.criterion}",
            comparison_question=question,
        )
        return Constitution(name=f"rubric:{self.name}", principles=(principle,))


def builtin_rubrics() -> list[str]:
    folder = resources.files("charter") / "rubrics"
    return sorted(p.name.rsplit(".", 1)[0] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_rubric(name_or_path: str | Path) -> Rubric:
    text_name = str(name_or_path)
    if text_name in builtin_rubrics():
        res = resources.files("charter") / "rubrics" / f"{text_name}.yaml"
        data, where = (
            yaml.safe_load(res.read_text(encoding="utf-8")),
            f"built-in rubric {text_name!r}",
        )
    else:
        path = Path(name_or_path)
        if not path.is_file():
            raise ConfigError(
                f"rubric not found: {text_name} (built-ins: {', '.join(builtin_rubrics())})"
            )
        where = str(path)
        try:
            raw = path.read_text(encoding="utf-8")
            data = json.loads(raw) if path.suffix == ".json" else yaml.safe_load(raw)
        except (yaml.YAMLError, json.JSONDecodeError) as e:
            raise ConfigError(f"{where}: cannot parse rubric: {' '.join(str(e).split())}") from e
    return validated(Rubric, data, where, ConfigError, "a mapping with name, criterion and levels")
