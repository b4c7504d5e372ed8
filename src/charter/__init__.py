"""charter: Constitutional AI and RLAIF — a written constitution plus any LLM into training data.

The public API is re-exported here: ``charter.run`` runs any stage over a file with the CLI's
options; the stage functions, their records and the readers work on records in memory; heavy
optional dependencies (torch) load only when a backend that needs them is created.
"""

import importlib
import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from charter.annotate.merge import MergedRecord, merge
    from charter.annotate.records import AnnotationEvent, QueueItem, read_annotations
    from charter.annotate.route import RouteSummary, route
    from charter.api import arun, run
    from charter.backends import create_backend
    from charter.backends.mock import MockBackend, register_mock
    from charter.cache import RequestCache
    from charter.constitution import Constitution, FewShotExample, Principle, load_constitution
    from charter.engines.base import ModelUsage, RunSummary
    from charter.errors import (
        BackendError,
        CharterError,
        ConfigError,
        ConstitutionError,
        InputError,
        ParseError,
    )
    from charter.io import read_answers, read_prompts
    from charter.judges.grading import ScoreConfig
    from charter.judges.pairwise import LabelConfig
    from charter.judges.records import LabelRecord, ScoreRecord
    from charter.model import Model, RetryPolicy
    from charter.pairs import PairRecord, read_pairs
    from charter.prices import Prices
    from charter.probe import ProbeRecord, probe_injection
    from charter.records import AnswerRecord, Dialogue, PromptRecord, ResponseRecord
    from charter.rubric import Rubric, load_rubric
    from charter.stages.deliberate import DeliberateConfig, DeliberationRecord, deliberate
    from charter.stages.label import label
    from charter.stages.respond import RespondConfig, converse, respond
    from charter.stages.revise import ReviseConfig, RevisionRecord, revise
    from charter.stages.score import score
    from charter.stages.select import SelectOptions, SelectSummary, select
    from charter.types import GenerateConfig, Generation, Message, OptionScores, Reward, Usage

_EXPORTS: dict[str, str] = {
    "AnnotationEvent": "charter.annotate.records",
    "AnswerRecord": "charter.records",
    "arun": "charter.api",
    "BackendError": "charter.errors",
    "CharterError": "charter.errors",
    "ConfigError": "charter.errors",
    "Constitution": "charter.constitution",
    "ConstitutionError": "charter.errors",
    "converse": "charter.stages.respond",
    "create_backend": "charter.backends",
    "deliberate": "charter.stages.deliberate",
    "DeliberateConfig": "charter.stages.deliberate",
    "DeliberationRecord": "charter.stages.deliberate",
    "Dialogue": "charter.records",
    "FewShotExample": "charter.constitution",
    "GenerateConfig": "charter.types",
    "Generation": "charter.types",
    "InputError": "charter.errors",
    "label": "charter.stages.label",
    "LabelConfig": "charter.judges.pairwise",
    "LabelRecord": "charter.judges.records",
    "load_constitution": "charter.constitution",
    "load_rubric": "charter.rubric",
    "merge": "charter.annotate.merge",
    "MergedRecord": "charter.annotate.merge",
    "Message": "charter.types",
    "MockBackend": "charter.backends.mock",
    "Model": "charter.model",
    "ModelUsage": "charter.engines.base",
    "OptionScores": "charter.types",
    "PairRecord": "charter.pairs",
    "ParseError": "charter.errors",
    "Prices": "charter.prices",
    "Principle": "charter.constitution",
    "probe_injection": "charter.probe",
    "ProbeRecord": "charter.probe",
    "PromptRecord": "charter.records",
    "QueueItem": "charter.annotate.records",
    "read_annotations": "charter.annotate.records",
    "read_answers": "charter.io",
    "read_pairs": "charter.pairs",
    "read_prompts": "charter.io",
    "register_mock": "charter.backends.mock",
    "RequestCache": "charter.cache",
    "respond": "charter.stages.respond",
    "RespondConfig": "charter.stages.respond",
    "ResponseRecord": "charter.records",
    "RetryPolicy": "charter.model",
    "revise": "charter.stages.revise",
    "ReviseConfig": "charter.stages.revise",
    "RevisionRecord": "charter.stages.revise",
    "Reward": "charter.types",
    "route": "charter.annotate.route",
    "RouteSummary": "charter.annotate.route",
    "Rubric": "charter.rubric",
    "run": "charter.api",
    "RunSummary": "charter.engines.base",
    "score": "charter.stages.score",
    "ScoreConfig": "charter.judges.grading",
    "ScoreRecord": "charter.judges.records",
    "select": "charter.stages.select",
    "SelectOptions": "charter.stages.select",
    "SelectSummary": "charter.stages.select",
    "Usage": "charter.types",
}
"""Public name -> the module that defines it, imported on first use (PEP 562), so that
``import charter`` (and so every ``charter`` command) does not load aiohttp, the evaluation
and annotation modules or the stages it does not run."""


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'charter' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


# A library prints nothing unless its user configures logging (the CLI does).
logging.getLogger("charter").addHandler(logging.NullHandler())

__version__ = "0.1.0"

__all__ = [
    "AnnotationEvent",
    "AnswerRecord",
    "BackendError",
    "CharterError",
    "ConfigError",
    "Constitution",
    "ConstitutionError",
    "DeliberateConfig",
    "DeliberationRecord",
    "Dialogue",
    "FewShotExample",
    "GenerateConfig",
    "Generation",
    "InputError",
    "LabelConfig",
    "LabelRecord",
    "MergedRecord",
    "Message",
    "MockBackend",
    "Model",
    "ModelUsage",
    "OptionScores",
    "PairRecord",
    "ParseError",
    "Prices",
    "Principle",
    "ProbeRecord",
    "PromptRecord",
    "QueueItem",
    "RequestCache",
    "RespondConfig",
    "ResponseRecord",
    "RetryPolicy",
    "ReviseConfig",
    "RevisionRecord",
    "Reward",
    "RouteSummary",
    "Rubric",
    "RunSummary",
    "ScoreConfig",
    "ScoreRecord",
    "SelectOptions",
    "SelectSummary",
    "Usage",
    "arun",
    "converse",
    "create_backend",
    "deliberate",
    "label",
    "load_constitution",
    "load_rubric",
    "merge",
    "probe_injection",
    "read_annotations",
    "read_answers",
    "read_pairs",
    "read_prompts",
    "register_mock",
    "respond",
    "revise",
    "route",
    "run",
    "score",
    "select",
]
