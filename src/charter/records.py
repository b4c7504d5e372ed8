"""Typed records that flow between stages and into output files."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from charter.types import Message, Usage


class PromptRecord(BaseModel):
    """One input conversation to answer."""

    model_config = ConfigDict(extra="forbid")

    id: str
    """Stable id: the input's own ``id`` field, else a hash of its conversation."""
    messages: list[Message]
    """The conversation so far, ending with a user turn."""
    response: str | None = None
    """An answer given with the input; ``revise`` uses it as the first answer y0."""


class AnswerRecord(BaseModel):
    """One answer to grade."""

    model_config = ConfigDict(extra="forbid")

    id: str
    """The row's id, or ``ID:k`` for the k-th of several answers in one row."""
    messages: list[Message]
    """The conversation the answer replies to."""
    response: str
    """The answer to grade."""
    reference: str | None = None
    """A reference answer, when the input names one with --reference."""


class ResponseRecord(BaseModel):
    """Output of ``charter respond``: K sampled answers to one prompt."""

    model_config = ConfigDict(extra="forbid")

    id: str
    """The prompt's id."""
    messages: list[Message]
    """The prompt conversation."""
    responses: list[str]
    """The K answers, in sample order."""
    finish_reasons: list[str]
    """Why each answer ended (``length`` means it was cut off at max_tokens)."""
    model: str
    """Model spec that wrote the answers (several: a comma list)."""
    models: list[str] | None = None
    """With several models: the model behind each answer."""
    seeds: list[int]
    """Per-sample seeds, so any single answer can be reproduced."""
    usage: Usage = Field(default_factory=Usage)
    """Tokens spent on this record (cache hits cost none)."""


class FailedRecord(BaseModel):
    """A record whose requests kept failing; written to ``OUT.failed.jsonl``, never dropped."""

    model_config = ConfigDict(extra="forbid")

    id: str
    """The input record's id."""
    stage: str
    """Stage that failed (respond, revise, label...)."""
    error: str
    """One-line reason."""
    error_type: str
    """Exception class, for grouping."""
    input: dict[str, object]
    """The input record, so the failure can be inspected and retried."""
