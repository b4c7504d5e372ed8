"""Where ``charter serve`` takes a reward model's mean and std from: ``charter score --judge
rm/DIR`` run on sample answers of the policy (``--normalize-from``), one file per reward
model, whose records name the model that scored them."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from pathlib import Path

from charter.errors import ConfigError, InputError
from charter.io import iter_rows
from charter.rewards import Normalisation


def _folder(spec: str) -> Path:
    return Path(spec.removeprefix("rm/")).expanduser().resolve()


def normalisation_from(path: Path, spec: str) -> Normalisation:
    """The mean and std of the rewards in a ``charter score`` output of ``spec``."""
    values: list[float] = []
    for where, row in iter_rows(path):
        judge, reward = row.get("judge"), row.get("reward")
        if not isinstance(judge, str) or "reward" not in row:
            raise InputError(
                f"{where}: not a charter score record of a reward model (--judge rm/DIR)"
            )
        if not judge.startswith("rm/") or _folder(judge) != _folder(spec):
            raise InputError(f"{where}: scored by {judge}, not by {spec}")
        if reward is None:
            continue  # a failed answer
        if not isinstance(reward, int | float) or not math.isfinite(reward):
            raise InputError(f"{where}: 'reward' is {reward!r}, not a number")
        values.append(float(reward))
    if len(values) < 2:
        raise ConfigError(f"--normalize-from {path}: {len(values)} reward(s); need 2 or more")
    std = statistics.pstdev(values)
    if std <= 0:
        raise ConfigError(f"--normalize-from {path}: every reward is {values[0]}: no spread")
    return Normalisation(statistics.fmean(values), std, f"{path} ({len(values)} answers)")


def normalisations(specs: Sequence[str], files: Sequence[Path]) -> list[Normalisation]:
    """One per reward model: from its file where given (in order), else none."""
    out = [normalisation_from(path, spec) for spec, path in zip(specs, files, strict=False)]
    return out + [Normalisation()] * (len(specs) - len(out))
