"""The options of ``charter annotate``, apart from the server so that the command line can
declare its flags without loading the web server (aiohttp.web) on every start."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


class AnnotateOptions(BaseModel):
    """Options of ``charter annotate``."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    input: str
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
