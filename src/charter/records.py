"""Typed records that flow between stages and into output files."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer

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


class DialoguePrompt(PromptRecord):
    """An input conversation to carry on for several turns (``charter respond --turns N``).
    A subclass rather than more fields on :class:`PromptRecord`: the engine hashes input
    records to tell edited rows, and new fields there would make every earlier output stale."""

    persona: str
    """Who the user model plays: the row's own ``persona``, else one from --personas, else
    a neutral default."""
    goal: str | None = None
    """What that user wants from the conversation, if known."""


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


class Dialogue(BaseModel):
    """How a multi-turn conversation was made (``charter respond --turns N``)."""

    model_config = ConfigDict(extra="forbid")

    turns: int
    """Assistant turns written (the final one, ``responses``, included); turns the input row
    already had are not counted."""
    user_model: str
    """Model spec that wrote the user's turns between the assistant's."""
    persona: str
    """Who the user model played."""
    goal: str | None = None
    """What that user wanted from the conversation, if given."""
    finish_reasons: list[str]
    """Why each earlier assistant turn ended, in order (``length``: cut off at max_tokens)."""
    user_finish_reasons: list[str]
    """Why each user turn the user model wrote ended, in order."""


class ResponseRecord(BaseModel):
    """Output of ``charter respond``: K sampled answers to one prompt."""

    model_config = ConfigDict(extra="forbid")

    id: str
    """The prompt's id."""
    messages: list[Message]
    """The prompt conversation (with --turns N, the whole conversation up to the final user
    turn)."""
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
    dialogue: Dialogue | None = None
    """With --turns N > 1: how the conversation in ``messages`` was made (left out of
    single-turn records, which stay as they were)."""

    @model_serializer(mode="wrap")
    def _without_empty_dialogue(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        if self.dialogue is None:
            data.pop("dialogue", None)
        return data


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
