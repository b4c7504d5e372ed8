"""charter: Constitutional AI and RLAIF — a written constitution plus any LLM into training data.

The public API is re-exported here; heavy optional dependencies (openai, torch) load only
when a backend that needs them is created.
"""

from charter.backends import create_backend
from charter.backends.mock import MockBackend, register_mock
from charter.cache import RequestCache
from charter.constitution import Constitution, FewShotExample, Principle, load_constitution
from charter.errors import (
    BackendError,
    CharterError,
    ConfigError,
    ConstitutionError,
    InputError,
    ParseError,
)
from charter.model import Model, Prices, RetryPolicy
from charter.records import PromptRecord, ResponseRecord
from charter.stages.respond import RespondConfig, respond
from charter.types import GenerateConfig, Generation, Message, OptionScores, Usage

__version__ = "0.1.0"

__all__ = [
    "BackendError",
    "CharterError",
    "ConfigError",
    "Constitution",
    "ConstitutionError",
    "FewShotExample",
    "GenerateConfig",
    "Generation",
    "InputError",
    "Message",
    "MockBackend",
    "Model",
    "OptionScores",
    "ParseError",
    "Prices",
    "Principle",
    "PromptRecord",
    "RequestCache",
    "RespondConfig",
    "ResponseRecord",
    "RetryPolicy",
    "Usage",
    "create_backend",
    "load_constitution",
    "register_mock",
    "respond",
]
