"""Every command that runs work, by name: the one registry the CLI, recipes and
``charter.run`` read. A new stage is a module with a ``SPEC`` and one line here.

Three kinds of work:

- a **stage** (``StageSpec``): records through an engine, one in, one out, resumable, with its
  failed file and settings check (respond, revise, label, score, deliberate, probe);
- a **file stage** (``FileStage``): one file rewritten whole from another in one pass, no
  model (route, select, merge);
- a **trainer** (``Trainer``): ``charter train METHOD`` on TRL (``train sft``, ``train reward``,
  ``train dpo``, ``train rl``; in a recipe ``stage: train`` with ``method:``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from charter.annotate.options import MERGE_HELP, MergeOptions
from charter.annotate.route import ROUTE_HELP, RouteOptions, run_route
from charter.compare import COMPARE_HELP, CompareOptions
from charter.errors import ConfigError
from charter.polis.options import FromPolisOptions
from charter.probe import SPEC as PROBE
from charter.stages.deliberate import SPEC as DELIBERATE
from charter.stages.label import SPEC as LABEL
from charter.stages.respond import SPEC as RESPOND
from charter.stages.revise import SPEC as REVISE
from charter.stages.score import SPEC as SCORE
from charter.stages.select import SELECT_HELP, SelectOptions, run_select
from charter.stages.spec import StageSpec
from charter.train.options import DPOOptions, RewardOptions, RLOptions, SFTOptions, TrainOptions

if TYPE_CHECKING:
    from charter.train.run import TrainResult


@dataclass(frozen=True)
class FileStage:
    """Work that rewrites one file from another in one pass (no engine, no model): its
    command, its recipe stage and ``charter.run`` take the same options."""

    name: str
    options: type[BaseModel]
    run: Callable[[Any], object]
    """Options -> the summary (one line when printed)."""
    help: str
    writes: Callable[[Any], list[Path]]
    """Options -> the files it writes (a recipe checks them against every other stage's)."""
    reads: Callable[[Any], list[Path]] = lambda opts: []
    """Options -> the files it reads besides its input (a recipe checks they are there)."""
    group: str | None = None
    """The command group it is under (``charter constitution compare``); its recipe stage
    and ``charter.run`` name is ``name`` alone."""


@dataclass(frozen=True)
class Trainer:
    """``charter train METHOD``: one TRL trainer."""

    method: str
    options: type[TrainOptions]
    help: str

    @property
    def name(self) -> str:
        return f"train {self.method}"

    def run(self, opts: BaseModel, quiet: bool = False) -> TrainResult:
        from charter.train.run import train  # torch and TRL: only when training

        assert isinstance(opts, self.options)
        return train(opts, quiet=quiet)


def _from_polis(opts: FromPolisOptions) -> object:
    from charter.polis.build import from_polis  # scikit-learn, pandas: only when run

    return from_polis(opts)


def _compare(opts: CompareOptions) -> object:
    from charter.compare.run import run_compare  # the evaluation modules: only when comparing

    return run_compare(opts)


def _merge(opts: MergeOptions) -> object:
    from charter.annotate.merge import run_merge  # the evaluation modules: only when merging

    return run_merge(opts)


Job = StageSpec | FileStage | Trainer
"""Any work charter runs by name."""

JOBS: dict[str, Job] = {
    job.name: job
    for job in (
        RESPOND,
        REVISE,
        LABEL,
        SCORE,
        DELIBERATE,
        PROBE,
        FileStage("route", RouteOptions, run_route, ROUTE_HELP, writes=lambda opts: [opts.output]),
        FileStage(
            "select",
            SelectOptions,
            run_select,
            SELECT_HELP,
            writes=lambda opts: [opts.output, *([opts.pairs] if opts.pairs else [])],
        ),
        FileStage(
            "merge",
            MergeOptions,
            _merge,
            MERGE_HELP,
            writes=lambda opts: [opts.output],
            reads=lambda opts: list(opts.human),
        ),
        FileStage(
            "from-polis",
            FromPolisOptions,
            _from_polis,
            "A constitution from a Polis conversation (public input): its accepted statements "
            "ranked by group-informed consensus, each kept one a principle with its votes as "
            "provenance, and an HTML report. See docs/constitutions.md.",
            writes=lambda opts: [opts.output, opts.report_dir],
            reads=lambda opts: [Path(p) for p in opts.export[1:]],
            group="constitution",
        ),
        FileStage(
            "compare",
            CompareOptions,
            _compare,
            COMPARE_HELP,
            writes=lambda opts: [opts.output],
            reads=lambda opts: [Path(opts.other), *([opts.human] if opts.human else [])],
            group="constitution",
        ),
        Trainer(
            "sft",
            SFTOptions,
            "Supervised fine-tuning on the answers (revise output): loss on the answer only.",
        ),
        Trainer(
            "reward",
            RewardOptions,
            "A reward model on preference labels: soft Bradley-Terry on p_chosen by default.",
        ),
        Trainer(
            "dpo",
            DPOOptions,
            "DPO on preference labels: soft labels give conservative DPO (eps = 1 - p_chosen).",
        ),
        Trainer(
            "rl",
            RLOptions,
            "GRPO against reward models (rm/DIR) and/or charter's judge under a rubric.",
        ),
    )
}
"""Every job by the name the CLI, recipes and ``charter.run`` know it by."""


def find(name: str) -> Job:
    """The job ``name``; a ConfigError listing every name otherwise."""
    try:
        return JOBS[name]
    except KeyError:
        raise ConfigError(f"no stage {name!r}; stages: {', '.join(JOBS)}") from None


def stages() -> dict[str, StageSpec]:
    """The jobs an engine runs."""
    return {name: job for name, job in JOBS.items() if isinstance(job, StageSpec)}
