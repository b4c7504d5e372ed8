"""What defines an output's records, kept beside it so a re-run cannot mix in other records.

A stage writes ``OUT.settings.json`` when it starts: the stage and every setting that changes
what a record says (model or judge, constitution and rubric *content* hashes, sampling, seeds,
orders, CoT...), never the ones that only change how the run goes (server URL, concurrency,
timeouts, retries, cache, limit, prices). Resuming onto an output made with other settings is
refused with one line naming what differs; ``--force`` adds to it knowingly.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from charter.errors import ConfigError

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
        "force",
    }
)
"""Options that change how a run goes, not what its records say."""


def _show(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``key: old -> new`` for every setting that differs."""
    keys = list(new) + [k for k in old if k not in new]
    return [
        f"{k}: {_show(old.get(k))} -> {_show(new.get(k))}" for k in keys if old.get(k) != new.get(k)
    ]


def check_and_record(
    path: Path, settings: dict[str, Any], *, has_records: bool, force: bool, output: Path
) -> None:
    """Refuse to resume ``output`` under other settings; then (re)write the settings file.

    Call with the output already locked, before anything is written to it."""
    old: dict[str, Any] | None = None
    if path.exists():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            old = data["settings"] if isinstance(data, dict) else None
        except (ValueError, KeyError, OSError):
            old = None
        if old is None and has_records:
            raise ConfigError(
                f"{path} is unreadable, so charter cannot tell how the records in {output} were "
                "made; delete it to resume anyway, or write to a new output"
            )
    if has_records and old is not None:
        diff = differences(old, settings)
        if diff and not force:
            raise ConfigError(
                f"{output} holds records made with other settings ({'; '.join(diff)}); "
                "write to a new output, or pass --force to add records made with these settings"
            )
        if diff:
            log.warning(
                "--force: adding records made with other settings to %s (%s)",
                output,
                "; ".join(diff),
            )
    elif has_records:
        log.warning(
            "%s has no %s (written by an older charter): resuming without checking that its "
            "records were made with the same settings",
            output,
            path.name,
        )
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"settings": settings}, indent=2, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
