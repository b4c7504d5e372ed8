"""charter: Constitutional AI and RLAIF — a written constitution plus any LLM into training data.

The public API is re-exported here: ``charter.run`` runs any stage over a file with the CLI's
options; the stage functions, their records and the readers work on records in memory; heavy
optional dependencies (torch) load only when a backend that needs them is created.
"""

import logging

from charter.annotate.merge import MergedRecord, merge
from charter.annotate.records import AnnotationEvent, QueueItem, read_annotations
from charter.annotate.route import route
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
from charter.model import Model, Prices, RetryPolicy
from charter.pairs import PairRecord, read_pairs
from charter.probe import ProbeRecord, probe_injection
from charter.records import AnswerRecord, Dialogue, PromptRecord, ResponseRecord
from charter.rubric import Rubric, load_rubric
from charter.select import SelectOptions, SelectSummary, select
from charter.stages.deliberate import DeliberateConfig, DeliberationRecord, deliberate
from charter.stages.label import LabelConfig, label
from charter.stages.label_records import LabelRecord
from charter.stages.respond import RespondConfig, converse, respond
from charter.stages.revise import ReviseConfig, RevisionRecord, revise
from charter.stages.score import ScoreConfig, ScoreRecord, score
from charter.types import GenerateConfig, Generation, Message, OptionScores, Reward, Usage

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
