"""The options of ``charter annotate`` and ``charter merge``, apart from the server and the
merge so that the command line can declare its flags without loading aiohttp.web or the
evaluation modules on every start."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

from charter.config import InputPath, Positional


class AnnotateOptions(BaseModel):
    """Options of ``charter annotate``."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    input: InputPath
    """The queue (``charter route`` output)."""
    output: Path
    """Human labels, appended one line each (a restart resumes from it)."""
    host: str = "127.0.0.1"
    """Address to listen on. Anything but loopback needs a token (one is made if not given)."""
    port: int = Field(default=8765, ge=0, le=65535)
    """Port (0: any free port; the address is printed)."""
    token: str | None = None
    """Bearer token every API request must carry (the printed link hands it to the page)."""
    per_pair: int = Field(default=1, ge=1)
    """Annotators asked per pair (K); a skip does not count."""
    seed: int = 0
    """Seed of which answer each annotator sees on the left of each pair."""


MERGE_HELP = (
    "One row per pair: the human label where people judged it (several annotators: their mean "
    "P(A better), with their agreement), else the AI's soft label; label_source human|ai, and "
    "TRL columns as charter label writes them (a human tie gets none)."
)


class MergeOptions(BaseModel):
    """``charter merge``: CLI arguments and flags, recipe keys (``stage: merge``) and
    ``charter.run`` keywords."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    input: InputPath
    """Label file (charter label output, or a folder of its parts)."""
    human: Annotated[list[Path], Positional()]
    """One or more annotation logs (charter annotate output)."""
    output: Path
    """Merged JSONL file to write."""

    @field_validator("input", mode="before")
    @classmethod
    def _path_as_text(cls, value: object) -> object:
        return str(value) if isinstance(value, Path) else value
