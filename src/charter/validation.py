"""One-line descriptions of pydantic validation errors, naming the failing field."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from charter.errors import CharterError

M = TypeVar("M", bound=BaseModel)


def describe_validation(e: ValidationError) -> str:
    """``field[0].sub: message; ...``"""
    parts = []
    for err in e.errors():
        loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"]).lstrip(".")
        msg = str(err["msg"]).removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


def validated(model: type[M], data: Any, where: str, error: type[CharterError], expected: str) -> M:
    """``data`` (parsed from a file) as ``model``; anything wrong is one ``error`` naming
    ``where`` and the failing field."""
    if not isinstance(data, dict):
        raise error(f"{where}: expected {expected}")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise error(f"{where}: {describe_validation(e)}") from e
