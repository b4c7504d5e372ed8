"""Constitutions: principles with critique, revision and comparison prompts.

A constitution is a YAML, JSON or TOML file. Built-ins live in ``charter/constitutions``
and are addressed by name (``harmless``, ``hhh``, ``rules``, ``spec``).
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
from collections.abc import Sequence
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from charter.errors import ConstitutionError
from charter.validation import describe_validation, validated

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SUFFIXES = (".yaml", ".yml", ".json", ".toml")


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank (only whitespace)")
    return value


class GroupVotes(BaseModel):
    """How one opinion group voted on a statement."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    agrees: int = Field(ge=0)
    disagrees: int = Field(ge=0)
    passes: int = Field(ge=0)


class Provenance(BaseModel):
    """Where a principle drawn from public input came from: the statement people voted on
    and how they voted (``charter constitution from-polis``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: str = ""
    """The conversation (its URL, or the export read)."""
    comment_ids: tuple[str, ...] = Field(min_length=1)
    """The statement's id in the conversation, then those of near-duplicates merged into it."""
    text: str = Field(min_length=1)
    """The statement as participants saw it."""
    agrees: int = Field(ge=0)
    """Agree votes on the statement (the first comment id), all participants counted."""
    disagrees: int = Field(ge=0)
    passes: int = Field(ge=0)
    consensus: float = Field(ge=0, le=1)
    """Group-informed consensus: the product over opinion groups of
    (1 + agrees) / (2 + votes), passes counted as votes."""
    groups: dict[str, GroupVotes] = {}
    """Votes by opinion group."""


class Principle(BaseModel):
    """One principle, with the three ways charter asks a model to apply it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.:-]+$")
    """Short stable identifier, recorded in every output that used the principle."""
    critique_request: str = Field(min_length=1)
    """Asks the model to point out where its last answer falls short of the principle."""
    revision_request: str = Field(min_length=1)
    """Asks the model to rewrite its answer so that it meets the principle."""
    comparison_question: str = Field(min_length=1)
    """Asks a feedback model which of two answers better meets the principle."""
    statement: str | None = None
    """The principle as a rule the assistant follows, in one or two sentences: how a spec
    states it to the model itself (``charter deliberate`` shows it in the system prompt; a
    principle without one is shown by its critique request)."""
    tags: tuple[str, ...] = ()
    """Free labels for filtering and reporting (e.g. ``harm``, ``honesty``)."""
    weight: float = Field(default=1.0, gt=0)
    """Relative sampling weight."""
    priority: int | None = Field(default=None, ge=1)
    """Rank when principles conflict (1 is highest); used by specification-style constitutions:
    the judge is told the order when principles are shown together (``label
    --principles-in-prompt``), and with ``label --weights priority`` the highest priority whose
    verdict is clear decides (``inverse-priority``: verdicts weighted by 1/priority)."""
    provenance: Provenance | None = None
    """Where the principle came from, when it was drawn from public input (a Polis
    conversation): the statement and its votes."""

    @field_validator("critique_request", "revision_request", "comparison_question")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        return _not_blank(value)

    @field_validator("statement")
    @classmethod
    def _statement_not_blank(cls, value: str | None) -> str | None:
        return None if value is None else _not_blank(value)

    @property
    def rule(self) -> str:
        """The principle as stated to the assistant: its ``statement``, else its critique
        request."""
        return " ".join((self.statement or self.critique_request).split())


class FewShotExample(BaseModel):
    """A worked critique/revision exchange shown before the real one."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    prompt: str = Field(min_length=1)
    """The user's request."""
    answer: str = Field(min_length=1)
    """The first answer, which the critique finds fault with."""
    principle_id: str | None = None
    """The principle applied; its requests are used for the critique and revision turns."""
    critique: str = Field(min_length=1)
    """The worked critique."""
    revision: str = Field(min_length=1)
    """The worked revision."""

    @field_validator("prompt", "answer", "critique", "revision")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        return _not_blank(value)


class LabelExample(BaseModel):
    """A worked comparison shown to a feedback model before the real one (few-shot
    labelling, as the CAI paper prompted its pretrained feedback model)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    prompt: str = Field(min_length=1)
    """The user's request."""
    response_a: str = Field(min_length=1)
    """The candidate shown as (A)."""
    response_b: str = Field(min_length=1)
    """The candidate shown as (B)."""
    answer: Literal["A", "B"]
    """The better candidate."""
    principle_id: str | None = None
    """The principle whose question the example answers (default: the question being asked)."""
    reasoning: str | None = None
    """Worked reasoning before the answer, shown when the judge is asked to reason (--cot)."""

    @field_validator("prompt", "response_a", "response_b")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        return _not_blank(value)


class Constitution(BaseModel):
    """A named set of principles, optionally with a preamble and few-shot examples."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    """Name shown in outputs and reports."""
    description: str = ""
    """What the constitution is for."""
    preamble: str = ""
    """Standing text (defaults, priorities) that prompts may put before a principle."""
    principles: tuple[Principle, ...] = Field(min_length=1)
    """The principles; at least one."""
    few_shot: tuple[FewShotExample, ...] = ()
    """Worked critique/revision exchanges."""
    label_examples: tuple[LabelExample, ...] = ()
    """Worked comparisons for few-shot labelling (``label --few-shot auto``)."""

    @model_validator(mode="after")
    def _check_ids(self) -> Constitution:
        seen: set[str] = set()
        for p in self.principles:
            if p.id in seen:
                raise ValueError(f"duplicate principle id {p.id!r}")
            seen.add(p.id)
        named: list[tuple[str, str | None]] = [
            *((f"few_shot[{i}]", ex.principle_id) for i, ex in enumerate(self.few_shot)),
            *(
                (f"label_examples[{i}]", ex.principle_id)
                for i, ex in enumerate(self.label_examples)
            ),
        ]
        for where, principle_id in named:
            if principle_id is not None and principle_id not in seen:
                raise ValueError(f"{where}.principle_id {principle_id!r} is not a principle")
        return self

    @cached_property
    def hash(self) -> str:
        """Content hash: the same principles give the same hash whatever the file format."""
        # Without label examples the field is left out, so constitutions written before it
        # existed keep their hash (and outputs made with them keep resuming).
        # Likewise principle statements (added later still): left out when none is given.
        exclude: dict[str, Any] = {} if self.label_examples else {"label_examples": True}
        # And provenance (later again): left out when no principle has one.
        left_out = {
            name
            for name in ("statement", "provenance")
            if all(getattr(p, name) is None for p in self.principles)
        }
        if left_out:
            exclude["principles"] = {"__all__": left_out}
        dumped = self.model_dump(mode="json", exclude=exclude)
        canonical = json.dumps(dumped, sort_keys=True, ensure_ascii=False)
        return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def principle(self, principle_id: str) -> Principle:
        for p in self.principles:
            if p.id == principle_id:
                return p
        raise ConstitutionError(f"constitution {self.name!r} has no principle {principle_id!r}")

    @property
    def has_priorities(self) -> bool:
        """Whether any principle states a ``priority`` (specification-style constitutions)."""
        return any(p.priority is not None for p in self.principles)

    def rank(self, principle: Principle) -> int | None:
        """The principle's priority (1 is highest); a principle without one ranks with the
        lowest stated priority. None when the constitution states no priorities at all."""
        stated = [p.priority for p in self.principles if p.priority is not None]
        if not stated:
            return None
        return principle.priority if principle.priority is not None else max(stated)

    def by_priority(self, principles: Sequence[Principle]) -> list[Principle]:
        """``principles`` from highest priority to lowest (stable: equal ranks keep their
        order); unchanged when the constitution states no priorities."""
        if not self.has_priorities:
            return list(principles)
        return sorted(principles, key=lambda p: self.rank(p) or 0)

    def sample(self, k: int, rng: random.Random, *, replace: bool = False) -> list[Principle]:
        """Draw ``k`` principles by weight. Without replacement, ``k`` may not exceed the count."""
        if k < 0:
            raise ConstitutionError("cannot sample a negative number of principles")
        weights = [p.weight for p in self.principles]
        if replace:
            return rng.choices(self.principles, weights=weights, k=k)
        if k > len(self.principles):
            raise ConstitutionError(
                f"cannot sample {k} distinct principles from {self.name!r}, "
                f"which has {len(self.principles)}"
            )
        # Efraimidis–Spirakis: the k largest u**(1/w) are a weighted sample without replacement.
        keys = [(rng.random() ** (1.0 / w), i) for i, w in enumerate(weights)]
        keys.sort(reverse=True)
        return [self.principles[i] for _, i in keys[:k]]


def builtin_names() -> list[str]:
    folder = resources.files("charter") / "constitutions"
    return sorted(p.name.rsplit(".", 1)[0] for p in folder.iterdir() if p.name.endswith(".yaml"))


def parse_data_file(text: str, suffix: str, where: str) -> Any:
    """A YAML, JSON or TOML file's data, by its suffix; a parse error is one line naming
    ``where``."""
    try:
        if suffix in (".yaml", ".yml"):
            return yaml.safe_load(text)
        if suffix == ".json":
            return json.loads(text)
        if suffix == ".toml":
            return tomllib.loads(text)
    except (yaml.YAMLError, json.JSONDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConstitutionError(f"{where}: not valid {suffix[1:].upper()}: {_first_line(e)}") from e
    raise ConstitutionError(
        f"{where}: unsupported file type {suffix!r} (use {', '.join(SUFFIXES)})"
    )


def _first_line(e: Exception) -> str:
    return " ".join(str(e).split())


def from_data(data: Any, where: str) -> Constitution:
    """Validate already-parsed data; errors name ``where`` and the failing field. A ``hash``
    key (as ``charter constitution show --json`` writes) is informational: it is recomputed."""
    if isinstance(data, dict):
        data = {k: v for k, v in data.items() if k != "hash"}
    return validated(
        Constitution, data, where, ConstitutionError, "a mapping with 'name' and 'principles'"
    )


def load_few_shot(path: str | Path) -> tuple[FewShotExample, ...]:
    """Few-shot examples from a YAML/JSON/TOML file: a list, or a mapping with ``few_shot``."""
    return _load_examples(path, "few_shot", FewShotExample)


def load_label_examples(path: str | Path) -> tuple[LabelExample, ...]:
    """Few-shot labelling examples from a YAML/JSON/TOML file: a list, or a mapping with
    ``label_examples``."""
    return _load_examples(path, "label_examples", LabelExample)


E = TypeVar("E", FewShotExample, LabelExample)


def _load_examples(path: str | Path, key: str, model: type[E]) -> tuple[E, ...]:
    path = Path(path)
    if not path.is_file():
        raise ConstitutionError(f"few-shot file not found: {path}")
    data = parse_data_file(path.read_text(encoding="utf-8"), path.suffix.lower(), str(path))
    if isinstance(data, dict):
        data = data.get(key)
    if not isinstance(data, list) or not data:
        raise ConstitutionError(f"{path}: expected a list of examples or a {key!r} list")
    examples = []
    for i, item in enumerate(data):
        try:
            examples.append(model.model_validate(item))
        except ValidationError as e:
            raise ConstitutionError(f"{path}: {key}[{i}].{describe_validation(e)}") from e
    return tuple(examples)


def load_constitution(name_or_path: str | Path) -> Constitution:
    """Load a built-in by name or a file by path."""
    text_name = str(name_or_path)
    if text_name in builtin_names():
        res = resources.files("charter") / "constitutions" / f"{text_name}.yaml"
        return from_data(yaml.safe_load(res.read_text(encoding="utf-8")), f"built-in {text_name!r}")
    path = Path(name_or_path)
    if not path.exists():
        hint = "" if path.suffix else f" (built-ins: {', '.join(builtin_names())})"
        raise ConstitutionError(f"constitution not found: {text_name}{hint}")
    if path.is_dir():
        raise ConstitutionError(f"{path}: is a directory, expected a constitution file")
    text = path.read_text(encoding="utf-8")
    return from_data(parse_data_file(text, path.suffix.lower(), str(path)), str(path))
