"""``charter constitution compare``: the same pairs labelled under two constitutions, set side
by side (``charter.compare.run``). This module holds only its options, light to import."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

from charter.config import InputPath, Positional

COMPARE_HELP = (
    "Compare labels of the same pairs under two constitutions: agreement, flips with a 95 % "
    "interval, the principles behind the flips, and agreement with people where they labelled."
)


class CompareOptions(BaseModel):
    """``charter constitution compare``: CLI arguments and flags, recipe keys (``stage:
    compare``) and ``charter.run`` keywords."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    input: InputPath
    """Label file under the first constitution (charter label output)."""
    other: Annotated[str, Positional()]
    """Label file of the same pairs under the second constitution."""
    output: Path
    """Folder for compare.json and report.html."""
    human: Path | None = None
    """Human labels (id/human_choice rows, or a label file); default: the records' own
    human_choice."""
    examples: int = Field(default=20, ge=0)
    """Flipped pairs shown in the report."""
    seed: int = 0
    """Seed of the bootstrap intervals."""

    @field_validator("input", mode="before")
    @classmethod
    def _path_as_text(cls, value: object) -> object:
        return str(value) if isinstance(value, Path) else value
