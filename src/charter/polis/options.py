"""The options of ``charter constitution from-polis``, declared once: the command's flags
are derived from them (``charter.cli_options``) and ``charter.polis.from_polis`` takes them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import ConfigDict, Field, field_validator

from charter.config import ModelAccess, Positional


class FromPolisOptions(ModelAccess):
    """A constitution from a Polis conversation's statements and votes."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    export: Annotated[list[str], Positional()] = Field(min_length=1)
    """The Polis export: its folder, or its files (comments.csv with participants-votes.csv
    and/or votes.csv; summary.csv for the topic and URL)."""
    output: Path
    """The constitution to write (YAML)."""
    report: Path | None = None
    """Folder for the HTML report of kept and left-out statements (default: beside the
    output, OUTPUT-without-suffix.report/)."""
    name: str | None = None
    """The constitution's name (default: polis-<conversation id>, else polis)."""
    attribution: str | None = None
    """Licence and attribution the conversation's data requires, added to the description
    (e.g. for Polis open data: CC BY 4.0 with Attribution to The Computational Democracy
    Project)."""
    include_unmoderated: bool = False
    """Consider statements not yet moderated too (rejected ones never)."""
    min_votes: int = Field(default=0, ge=0)
    """Leave out participants with fewer votes than this (passes count; Polis groups those
    with at least 7)."""
    exclude: str | None = None
    """Participants to leave out (spam accounts): a file of ids, one a line (# starts a
    comment), or ids separated by commas; participant ids or xids."""
    regroup: bool = False
    """Recompute the opinion groups from the votes (PCA, then k-means with k from 2 to 5 by
    silhouette; needs scikit-learn) instead of the export's group-id. Exports without groups
    are always regrouped."""
    seed: int = 0
    """Seed of the regrouping and of --rewrite-with's requests: the same seed gives the
    same result."""
    min_consensus: float | None = Field(default=None, ge=0, le=1)
    """Keep only statements with at least this group-informed consensus (0 to 1)."""
    top: int = Field(default=10, ge=1)
    """Keep at most this many statements, highest consensus first."""
    rewrite_with: str | None = None
    """A model spec (openai/NAME, mock/x, ...) that rewrites each kept statement into a
    critique request, revision request and comparison question; without it they follow a
    fixed template. Requests are cached: a re-run asks only what is not cached."""
    dedupe_model: str | None = None
    """A model spec that also merges near-duplicates worded differently: each candidate, in
    order of consensus, is merged into a kept statement the model says it restates (after
    the merging of statements that differ only in case, punctuation or spacing)."""
    cache: Path | None = None
    """The request cache of --rewrite-with and --dedupe-model (default: charter-cache.sqlite
    beside the output)."""

    @field_validator("export", mode="before")
    @classmethod
    def _paths_as_text(cls, value: object) -> object:
        if isinstance(value, str | Path):
            return [str(value)]
        if isinstance(value, list | tuple):
            return [str(v) for v in value]
        return value

    @property
    def input(self) -> str:
        """What it reads first (the export's folder or first file): what a recipe checks is
        there."""
        return self.export[0]

    @property
    def report_dir(self) -> Path:
        return self.report or self.output.with_name(self.output.stem + ".report")

    @property
    def cache_path(self) -> Path:
        from charter.cache import DEFAULT_NAME

        return self.cache or self.output.parent / DEFAULT_NAME
