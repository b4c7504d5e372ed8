"""What defines an output's records, kept beside it so a re-run cannot mix in other records.

A stage writes ``OUT.settings.json`` when it starts: the stage and every setting that changes
what a record says (model or judge, constitution and rubric *content* hashes, sampling, seeds,
orders, CoT...), never the ones that only change how the run goes (server URL, concurrency,
timeouts, retries, cache, limit, prices). Resuming onto an output made with other settings is
refused with one line naming what differs; ``--force`` adds to it knowingly.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from charter.errors import ConfigError
from charter.prompts import templates_hash

if TYPE_CHECKING:
    from charter.config import StageOptions

log = logging.getLogger("charter")

RUN_ONLY = frozenset(
    {
        "input",
        "output",
        "base_url",
        "concurrency",
        "timeout",
        "retries",
        "retry_wait",
        "skip_invalid",
        "cache",
        "no_cache",
        "limit",
        "price_input",
        "price_output",
        "batch",
        "batch_poll",
        "prices",
        "max_cost",
        "force",
    }
)
"""Options that change how a run goes, not what its records say (the engine's options are
not a stage's: ``charter.config.EngineOptions``)."""


def settings_of(
    stage: str, opts: StageOptions, *, exclude: Sequence[str] = (), **resolved: object
) -> dict[str, Any]:
    """The settings that define a stage's records: the options less those that only change
    how the run goes (and ``exclude``), with files named by their content (``resolved``
    replaces an option such as ``constitution`` by the loaded constitution's hash), and the
    prompt templates' hash."""
    values = opts.model_dump(mode="json", exclude={*RUN_ONLY, *exclude, *resolved})
    return {"stage": stage, "prompts": templates_hash(), **values, **resolved}


def defaults_of(opts: StageOptions) -> dict[str, Any]:
    """Each option's default, as stored in the settings file: an option that an older charter
    did not have reads as its default there, so adding one does not refuse every resume."""
    from pydantic_core import to_jsonable_python

    return {
        name: to_jsonable_python(field.default)
        for name, field in type(opts).model_fields.items()
        if not field.is_required()
    }


def content_hash(value: object) -> str:
    """A short hash of JSON-able content (few-shot examples, say)."""
    blob = json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)
    return "sha256:" + hashlib.sha256(blob.encode()).hexdigest()[:16]


def _show(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."


def differences(
    old: dict[str, Any], new: dict[str, Any], defaults: dict[str, Any] | None = None
) -> list[str]:
    """``key: old -> new`` for every setting that differs. A key the old settings lack (an
    option added since) counts as its default there."""
    defaults = defaults or {}
    keys = list(new) + [k for k in old if k not in new]
    found = []
    for k in keys:
        before = old[k] if k in old else defaults.get(k)
        if before != new.get(k):
            found.append(f"{k}: {_show(before)} -> {_show(new.get(k))}")
    return found


def _read(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
    """(settings, earlier settings kept with --force), or None when unreadable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("settings"), dict):
        return None
    mixed = data.get("mixed", [])
    if not isinstance(mixed, list) or not all(isinstance(m, dict) for m in mixed):
        return None
    return data["settings"], mixed


def check_and_record(
    path: Path,
    settings: dict[str, Any],
    *,
    has_records: bool,
    force: bool,
    output: Path,
    defaults: dict[str, Any] | None = None,
) -> None:
    """Refuse to resume ``output`` under other settings; then (re)write the settings file.
    ``--force`` adds the new settings to the file's list, so the output says it is mixed and
    a later run under any of its settings resumes.

    Call with the output already locked, before anything is written to it."""
    if not has_records:
        _write(path, settings, [])
        return
    if not path.exists():
        log.warning(
            "%s has no %s (written by an older charter): resuming without checking that its "
            "records were made with the same settings",
            output,
            path.name,
        )
        _write(path, settings, [])
        return
    found = _read(path)
    if found is None:
        raise ConfigError(
            f"{path} is unreadable, so charter cannot tell how the records in {output} were "
            "made; delete it to resume anyway, or write to a new output"
        )
    current, mixed = found
    if any(not differences(made, settings, defaults) for made in (current, *mixed)):
        return
    diff = differences(current, settings, defaults)
    if not force:
        raise ConfigError(
            f"{output} holds records made with other settings ({'; '.join(diff)}); "
            "write to a new output, or pass --force to add records made with these settings"
        )
    log.warning(
        "--force: %s now mixes records made with other settings (%s); %s lists them all",
        output,
        "; ".join(diff),
        path.name,
    )
    _write(path, settings, [*mixed, current])


def _write(path: Path, settings: dict[str, Any], mixed: list[dict[str, Any]]) -> None:
    data: dict[str, Any] = {"settings": settings}
    if mixed:
        data["mixed"] = mixed
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
