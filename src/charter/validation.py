"""One-line descriptions of pydantic validation errors, naming the failing field."""

from __future__ import annotations

from pydantic import ValidationError


def describe_validation(e: ValidationError) -> str:
    """``field[0].sub: message; ...``"""
    parts = []
    for err in e.errors():
        loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"]).lstrip(".")
        parts.append(f"{loc or '(top level)'}: {err['msg']}")
    return "; ".join(parts)
