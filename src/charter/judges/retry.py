"""The one retry policy of every judge whose verdict is read from text.

An answer that states no readable verdict (or is cut off at max_tokens) is asked again with a
new seed and a temperature of at least RETRY_TEMPERATURE, so the next answer can differ; after
the tries are spent the record fails with the last raw answer. Never a guess.
"""

from __future__ import annotations

from charter.errors import ParseError
from charter.types import Generation

ATTEMPTS = 3
"""Tries at a verdict read from text before the record fails with the raw answer."""
RETRY_TEMPERATURE = 0.7
"""Lowest sampling temperature of a re-try, so it can come out differently."""
RETRY_SEEDS = 1_000_000
"""Seed-index stride between tries at a pairwise verdict; the first try keeps its seeds (and
so its cache entries)."""


def retry_temperature(first: float, attempt: int) -> float:
    """The temperature of try ``attempt`` (0 for the first): the first's, then at least
    RETRY_TEMPERATURE."""
    return first if attempt == 0 else max(first, RETRY_TEMPERATURE)


def cut_note(g: Generation) -> str:
    """Said after a raw answer that max_tokens cut off."""
    return " (cut off at max_tokens)" if g.finish_reason == "length" else ""


def unread(what: str, tries: int, g: Generation, unit: str = "tries") -> ParseError:
    """The failure after ``tries`` answers with no readable ``what``, ending in the last raw
    answer (the record's error)."""
    return ParseError(f"{what} in {tries} {unit}{cut_note(g)}; last raw answer: {g.text[-300:]!r}")
