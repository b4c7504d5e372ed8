"""The from-polis report: one self-contained HTML page (jinja2, autoescaped: statements are
public input and model text is untrusted) of the kept and left-out statements and their
support in each opinion group."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import jinja2

from charter.constitution import Constitution
from charter.polis.analysis import Analysis, Statement
from charter.polis.export import PolisExport
from charter.polis.principles import Rewrite

REASONS = {
    "kept": "kept",
    "rejected": "rejected in moderation",
    "unmoderated": "not moderated (--include-unmoderated)",
    "duplicate": "near-duplicate",
    "below-consensus": "below --min-consensus",
    "beyond-top": "beyond --top",
}


def _share(s: Statement, group: str) -> str:
    share = s.groups[group].agree_share
    return "–" if share is None else f"{share:.0%}"


def write_report(
    out_dir: Path,
    constitution: Constitution,
    analysis: Analysis,
    export: PolisExport,
    rewrites: dict[str, Rewrite],
    notes: list[str] | None = None,
) -> Path:
    """Write ``report.html`` into ``out_dir``; returns its path."""
    text = (resources.files("charter") / "templates" / "polis.html.j2").read_text("utf-8")
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    html = env.from_string(text).render(
        constitution=constitution,
        analysis=analysis,
        export=export,
        groups=list(analysis.groups),
        principles={p.id: p for p in constitution.principles},
        rewrites=rewrites,
        reasons=REASONS,
        notes=notes or [],
        share=_share,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "report.html"
    path.write_text(html, encoding="utf-8")
    return path
