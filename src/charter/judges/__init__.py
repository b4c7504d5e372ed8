"""charter's judge as a library: what every command that needs a judgement calls.

- ``compare(pair, judge=, constitution=, config=)`` -> ``PairVerdict``: which of two answers
  is better, as P(A better) from the options' log-probabilities in both presentation orders
  (parsed or voted verdicts where a judge gives none; a reasoning judge scored where its
  answer states the verdict; Prometheus's format with ``config.format`` and ``rubric=``; a
  reward model by sigmoid(r_a - r_b)).
- ``grade(item, judge=, rubric=, config=)`` -> ``Grade``: an answer's score under a rubric,
  with the expected score where log-probabilities allow (Prometheus's format with
  ``config.format``; a reward model's raw reward).

Each call returns the verdict with what it cost (``usage``, gathered by the model layer);
``LabelRecord.from_verdict`` and ``ScoreRecord.from_grade`` make records of them. Verdicts
read from text follow one retry policy (``charter.judges.retry``) and one set of reading
rules (``charter.judges.verdicts``): never a guess.

Names load on first use (PEP 562): readers of label files import ``charter.judges.records``
without loading the judging machinery.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from charter.config import JudgingChoices
    from charter.judges.api import compare, grade
    from charter.judges.grading import ScoreConfig
    from charter.judges.pairwise import LabelConfig
    from charter.judges.records import Grade, LabelRecord, PairVerdict, ScoreRecord

_EXPORTS: dict[str, str] = {
    "compare": "charter.judges.api",
    "grade": "charter.judges.api",
    "Grade": "charter.judges.records",
    "JudgingChoices": "charter.config",
    "LabelConfig": "charter.judges.pairwise",
    "LabelRecord": "charter.judges.records",
    "PairVerdict": "charter.judges.records",
    "ScoreConfig": "charter.judges.grading",
    "ScoreRecord": "charter.judges.records",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'charter.judges' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


__all__ = [
    "Grade",
    "JudgingChoices",
    "LabelConfig",
    "LabelRecord",
    "PairVerdict",
    "ScoreConfig",
    "ScoreRecord",
    "compare",
    "grade",
]
