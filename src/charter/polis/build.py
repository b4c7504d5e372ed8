"""``charter constitution from-polis``: read the export, rank its statements, write the
constitution (with each principle's provenance) and the HTML report."""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import ValidationError

from charter.constitution import Constitution
from charter.errors import ConfigError, InputError
from charter.polis.analysis import Analysis, analyse
from charter.polis.export import PolisExport, read_export
from charter.polis.options import FromPolisOptions
from charter.polis.principles import Rewrite, build_constitution, rewrite_all
from charter.validation import describe_validation

log = logging.getLogger("charter")
POLIS_CREDIT = "Data was gathered using the Polis software (compdemocracy.org/polis)."


@dataclass
class PolisResult:
    """What from-polis made."""

    constitution: Constitution
    analysis: Analysis
    export: PolisExport
    rewrites: dict[str, Rewrite]
    """By comment id, with --rewrite-with."""
    output: Path
    report: Path
    requests: int = 0
    """Requests --rewrite-with and --dedupe-model sent (cache hits not counted)."""
    cache_hits: int = 0
    notes: tuple[str, ...] = ()
    """--dedupe-model's replies that could not be read (those statements were kept apart)."""
    options: FromPolisOptions | None = None
    """What it was made with (for its summary)."""

    def __str__(self) -> str:
        """The summary the command prints."""
        a = self.analysis
        groups = ", ".join(f"{g}: {n}" for g, n in a.groups.items())
        lines = [
            f"{self.output}: {len(self.constitution.principles)} principles "
            f"({self.constitution.hash}) from {len(a.statements)} statements",
            f"  participants counted: {a.participants} (excluded {a.excluded}, "
            f"too few votes {a.too_few_votes}); groups "
            f"({'recomputed' if a.regrouped else 'from the export'}): {groups}",
        ]
        opts = self.options
        if opts is not None and opts.dedupe_model:
            merged = sum(s.status == "duplicate" for s in a.statements)
            unread = f"; {len(self.notes)} replies unreadable" if self.notes else ""
            lines.append(f"  near-duplicates merged: {merged} (with {opts.dedupe_model}{unread})")
        if opts is not None and opts.rewrite_with:
            failed = sum(r.error is not None for r in self.rewrites.values())
            lines.append(
                f"  rewritten by {opts.rewrite_with}"
                + (f"; {failed} unreadable, templated instead (see the report)" if failed else "")
            )
        if opts is not None and (opts.rewrite_with or opts.dedupe_model):
            lines.append(f"  requests: {self.requests} sent, {self.cache_hits} from the cache")
        lines.append(f"  report: {self.report}")
        return "\n".join(lines)


def exclusions(value: str | None) -> set[str]:
    """--exclude: a file of ids (one a line, # comments), or ids separated by commas."""
    if not value:
        return set()
    path = Path(value)
    if path.is_file():
        ids: set[str] = set()
        for line in path.read_text(encoding="utf-8").splitlines():
            ids.update(x.strip() for x in line.split("#", 1)[0].split(",") if x.strip())
        return ids
    if "/" in value or "\\" in value:
        raise InputError(f"--exclude: file not found: {value}")
    return {x.strip() for x in value.split(",") if x.strip()}


def source_of(export: PolisExport) -> str:
    return export.url or str(export.files[0].parent)


def default_name(export: PolisExport) -> str:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", export.url.rstrip("/").rsplit("/", 1)[-1])
    return f"polis-{slug.strip('-')}" if export.url and slug.strip("-") else "polis"


def describe(export: PolisExport, analysis: Analysis, attribution: str | None) -> str:
    topic = f" “{export.topic}”" if export.topic else ""
    where = f" ({export.url})" if export.url else ""
    groups = "recomputed" if analysis.regrouped else "the export's"
    considered = sum(s.status not in ("rejected", "unmoderated") for s in analysis.statements)
    text = (
        f"Principles from the Polis conversation{topic}{where}: the {len(analysis.kept)} "
        f"statements, of {considered} considered, with the broadest support across "
        f"{len(analysis.groups)} opinion groups ({groups}), ranked by group-informed "
        f"consensus; {analysis.participants} participants' votes counted. {POLIS_CREDIT}"
    )
    return f"{text} {attribution.strip()}" if attribution else text


def from_polis(opts: FromPolisOptions) -> PolisResult:
    """Build the constitution and its report, and write both."""
    from charter.polis.report import write_report

    export = read_export([Path(p) for p in opts.export])
    excluded = exclusions(opts.exclude)
    unknown = sorted(excluded - set(export.votes) - set(export.xids.values()))
    if unknown:
        shown = ", ".join(unknown[:5]) + (", ..." if len(unknown) > 5 else "")
        log.warning("--exclude: %d ids match no participant: %s", len(unknown), shown)
    analysis = analyse(
        export,
        include_unmoderated=opts.include_unmoderated,
        min_votes=opts.min_votes,
        exclude=excluded,
        regroup_votes=opts.regroup,
        seed=opts.seed,
        min_consensus=opts.min_consensus,
        top=opts.top,
    )
    if not analysis.kept:
        raise InputError(
            f"{source_of(export)}: no statement kept ({analysis.participants} participants, "
            f"{len(analysis.statements)} statements): lower --min-consensus or --min-votes"
        )
    rewrites: dict[str, Rewrite] = {}
    notes: list[str] = []
    requests = hits = 0
    if opts.rewrite_with or opts.dedupe_model:
        rewrites, notes, requests, hits = asyncio.run(_ask_models(opts, analysis))
    try:
        constitution = build_constitution(
            analysis,
            name=opts.name or default_name(export),
            description=describe(export, analysis, opts.attribution),
            source=source_of(export),
            rewrites=rewrites,
        )
    except ValidationError as e:  # a --name the constitution cannot take, say
        raise ConfigError(f"the constitution: {describe_validation(e)}") from e
    write_constitution(constitution, opts.output, export, opts.attribution)
    report = write_report(opts.report_dir, constitution, analysis, export, rewrites, notes)
    return PolisResult(
        constitution,
        analysis,
        export,
        rewrites,
        opts.output,
        report,
        requests,
        hits,
        tuple(notes),
        opts,
    )


async def _ask_models(
    opts: FromPolisOptions, analysis: Analysis
) -> tuple[dict[str, Rewrite], list[str], int, int]:
    """--dedupe-model (which changes what is kept), then --rewrite-with on what is kept, on
    one request cache. Returns (rewrites, notes, requests sent, cache hits)."""
    from charter.cache import RequestCache
    from charter.engines.base import ModelFactory
    from charter.polis.dedupe import merge_by_model

    opts.cache_path.parent.mkdir(parents=True, exist_ok=True)
    cache = RequestCache(opts.cache_path)
    factory = ModelFactory(opts, cache)
    rewrites: dict[str, Rewrite] = {}
    notes: list[str] = []
    try:
        if opts.dedupe_model:
            notes = await merge_by_model(
                factory(opts.dedupe_model),
                analysis.statements,
                min_consensus=opts.min_consensus,
                top=opts.top,
                seed=opts.seed,
            )
        if opts.rewrite_with:
            kept = analysis.kept
            done = await rewrite_all(
                factory(opts.rewrite_with), [s.comment.text for s in kept], seed=opts.seed
            )
            rewrites = {s.comment.id: r for s, r in zip(kept, done, strict=True)}
    finally:
        for model in factory.models:
            await model.aclose()
        cache.close()
    requests = sum(m.usage.requests for m in factory.models)
    return rewrites, notes, requests, sum(m.usage.cache_hits for m in factory.models)


def write_constitution(
    constitution: Constitution, path: Path, export: PolisExport, attribution: str | None
) -> None:
    """The constitution as YAML, headed by a comment saying where its statements came from."""
    data = constitution.model_dump(mode="json", exclude_defaults=True)
    data["principles"] = [
        {k: p[k] for k in ("id", "statement", *_FIELD_ORDER) if k in p} for p in data["principles"]
    ]
    header = [
        "# Made by charter constitution from-polis from the statements and votes of",
        f"# {source_of(export)}",
        f"# {POLIS_CREDIT}",
        *(f"# {line}" for line in (attribution or "").splitlines() if line.strip()),
    ]
    text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(header) + "\n" + text, encoding="utf-8")


_FIELD_ORDER = (
    "critique_request",
    "revision_request",
    "comparison_question",
    "tags",
    "weight",
    "priority",
    "provenance",
)
