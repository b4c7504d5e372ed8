"""Backends by name: ``provider/model`` specs resolved to a backend instance.

Built-in providers import their heavy dependencies only when used. Third-party packages add
providers through the ``charter.backends`` entry-point group: the entry point's name is the
provider prefix and its value a factory ``create(model: str, **options) -> Backend``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

from charter.backends.base import Backend, BackendOptions, Capabilities
from charter.errors import ConfigError

ENTRY_POINT_GROUP = "charter.backends"

_BUILTIN: dict[str, str] = {
    "openai": "charter.backends.openai",
    "anthropic": "charter.backends.anthropic",
    "openai-completions": "charter.backends.completions",
    "hf": "charter.backends.hf",
    "smollm2": "charter.backends.smollm2",
    "rm": "charter.backends.rm",
    "mock": "charter.backends.mock",
}

Factory = Callable[..., Backend]


def _plugins() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def providers() -> list[str]:
    return sorted(set(_BUILTIN) | set(_plugins()))


def parse_spec(spec: str) -> tuple[str, str]:
    """``openai/llama-3`` -> (``openai``, ``llama-3``); ``smollm2`` -> (``smollm2``, ``""``)."""
    spec = spec.strip()
    if not spec:
        raise ConfigError("empty model spec; use provider/model, e.g. openai/gpt-4o-mini")
    provider, _, model = spec.partition("/")
    return provider, model


def create_backend(spec: str, **options: Any) -> Backend:
    """Instantiate the backend for ``spec``.

    A built-in provider checks ``options`` against its options model (``OpenAIOptions``,
    ``HFOptions``, ``MockOptions``, all sharing :class:`BackendOptions`) and raises a one-line
    ConfigError for an unknown or ill-typed key. A third-party factory receives them as
    keyword arguments and checks them as it sees fit."""
    provider, model = parse_spec(spec)
    if provider in _BUILTIN:
        factory: Factory = importlib.import_module(_BUILTIN[provider]).create
    else:
        plugin = _plugins().get(provider)
        if plugin is None:
            raise ConfigError(
                f"unknown model provider {provider!r} in {spec!r} "
                f"(known: {', '.join(providers())}; write provider/model)"
            )
        factory = plugin.load()
    return factory(model, **options)


__all__ = [
    "ENTRY_POINT_GROUP",
    "Backend",
    "BackendOptions",
    "Capabilities",
    "create_backend",
    "parse_spec",
    "providers",
]
