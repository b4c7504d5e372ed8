"""Constitutions from public input: a Polis conversation's statements, ranked by how
broadly opinion groups agreed with them (``charter constitution from-polis``).

Names are imported when first used, so the command line's start-up (which reads
``FromPolisOptions``) does not load the model wrapper."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from charter.polis.analysis import Analysis, Counts, Statement, analyse, consensus
    from charter.polis.build import PolisResult, from_polis
    from charter.polis.export import Comment, PolisExport, read_export
    from charter.polis.options import FromPolisOptions

_WHERE = {
    "Analysis": "charter.polis.analysis",
    "Counts": "charter.polis.analysis",
    "Statement": "charter.polis.analysis",
    "analyse": "charter.polis.analysis",
    "consensus": "charter.polis.analysis",
    "PolisResult": "charter.polis.build",
    "from_polis": "charter.polis.build",
    "Comment": "charter.polis.export",
    "PolisExport": "charter.polis.export",
    "read_export": "charter.polis.export",
    "FromPolisOptions": "charter.polis.options",
}

__all__ = [
    "Analysis",
    "Comment",
    "Counts",
    "FromPolisOptions",
    "PolisExport",
    "PolisResult",
    "Statement",
    "analyse",
    "consensus",
    "from_polis",
    "read_export",
]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'charter.polis' has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)
