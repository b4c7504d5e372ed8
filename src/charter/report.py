"""The evaluation report: ``report.html`` (self-contained, plots embedded as PNG),
``metrics.json``, and a summary table on the terminal."""

from __future__ import annotations

import base64
import io
import math
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2

from charter.evaluate import Accuracy, JudgeMetrics, Metrics
from charter.stats import Estimate


def fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def interval(estimate: Estimate) -> str:
    """An estimate's 95 % interval as ``[lo, hi]`` (``–`` when it has none)."""
    lo, hi = estimate.ci95
    if math.isnan(lo) or math.isnan(hi):
        return "–"
    return f"[{fmt(lo)}, {fmt(hi)}]"


def signed(value: float) -> str:
    """A difference with its sign (``+0.120``)."""
    return "–" if math.isnan(value) else f"{value:+.3f}"


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def plots_for(judge: JudgeMetrics) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = []
    if judge.calibration is not None:
        bins = judge.calibration.reliability
        fig, ax = plt.subplots(figsize=(4.6, 4.2))
        ax.plot([0, 1], [0, 1], linestyle="--", color="#999", label="perfect calibration")
        ax.plot(
            [b.mean_p for b in bins],
            [b.frac_a for b in bins],
            marker="o",
            color="#1f77b4",
            label="judge",
        )
        for b in bins:
            ax.annotate(
                str(b.n),
                (b.mean_p, b.frac_a),
                fontsize=7,
                xytext=(3, 3),
                textcoords="offset points",
            )
        ax.set(
            xlim=(0, 1),
            ylim=(0, 1),
            xlabel="predicted P(A better)",
            ylabel="fraction where humans chose A",
            title="Reliability diagram",
        )
        ax.legend(loc="upper left", fontsize=8)
        out.append(("Reliability diagram (points labelled with pair counts)", _png(fig)))
        plt.close(fig)
        buckets = [b for b in judge.agreement_by_confidence if b.n]
        if buckets:
            fig, ax = plt.subplots(figsize=(5.2, 3.4))
            labels = [f"{b.confidence[0]}–{b.confidence[1]}" for b in buckets]
            accs = [b.accuracy for b in buckets]
            errs = [
                [a - b.ci95[0] for a, b in zip(accs, buckets, strict=True)],
                [b.ci95[1] - a for a, b in zip(accs, buckets, strict=True)],
            ]
            ax.bar(labels, accs, yerr=errs, capsize=4, color="#4c9f70")
            ax.axhline(0.5, color="#999", linestyle="--")
            ax.set(
                ylim=(0, 1),
                xlabel="confidence |p − 0.5|",
                ylabel="agreement with humans",
                title="Is the judge right more often when it is surer?",
            )
            out.append(("Agreement by confidence (95 % bootstrap intervals)", _png(fig)))
            plt.close(fig)
    pos = judge.position
    if math.isnan(pos.first_shown_wins_before_averaging):
        return out  # no answer was ever shown first (a reward model): nothing to plot
    names = ["A first", "B first", "before avg.", "A after avg."]
    values = [
        pos.first_shown_wins_when_a_first,
        pos.first_shown_wins_when_b_first,
        pos.first_shown_wins_before_averaging,
        pos.a_wins_after_averaging,
    ]
    fig, ax = plt.subplots(figsize=(5.2, 3.2))
    ax.bar(names, [0 if math.isnan(v) else v for v in values], color="#c2703d")
    ax.axhline(0.5, color="#999", linestyle="--")
    ax.set(ylim=(0, 1), ylabel="rate", title="How often the first-shown answer wins")
    out.append(("Position bias (0.5 = none)", _png(fig)))
    plt.close(fig)
    return out


def write_report(metrics: Metrics, out_dir: Path) -> Path:
    """Write ``metrics.json`` (NaN as null) and ``report.html`` into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(metrics.model_dump_json(indent=2), encoding="utf-8")
    text = (resources.files("charter") / "templates" / "report.html.j2").read_text("utf-8")
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    template = env.from_string(text)
    html = template.render(
        judges=metrics.judges,
        between=metrics.between_judges,
        notes=metrics.notes,
        human_source=metrics.human_source,
        seed=metrics.seed,
        inter=metrics.inter_annotator,
        fmt=fmt,
        interval=interval,
        signed=signed,
        plots=[plots_for(j) for j in metrics.judges],
    )
    path = out_dir / "report.html"
    path.write_text(html, encoding="utf-8")
    return path


def print_table(metrics: Metrics) -> None:
    from rich.table import Table

    from charter.progress import console

    table = Table(title="charter evaluate", header_style="bold", title_justify="left")
    columns = ("judge", "pairs", "human", "agree", "95% CI", "ECE", "consistent", "longer")
    for col in (*columns, "$/1k labels"):
        table.add_column(col, justify="left" if col == "judge" else "right")
    for j in metrics.judges:
        agree = j.agreement
        table.add_row(
            j.name,
            str(j.pairs),
            str(j.pairs_with_human_label),
            fmt(agree.accuracy) if agree else "–",
            f"[{fmt(agree.ci95[0])}, {fmt(agree.ci95[1])}]" if agree else "–",
            fmt(j.calibration.ece) if j.calibration else "–",
            fmt(j.position.order_consistency),
            fmt(j.length.judge_prefers_longer),
            "–" if j.cost is None else f"{j.cost.per_1000_labels:,.4f}",
        )
    console.print(table)
    _print_bias(metrics)
    _print_humans(metrics)
    for note in metrics.notes:
        console.print(f"note: {note}", highlight=False, markup=False, soft_wrap=True)


def _ci(block: Accuracy) -> str:
    if not block.n:
        return "–"
    return f"{fmt(block.accuracy)} [{fmt(block.ci95[0])}, {fmt(block.ci95[1])}] n={block.n}"


def _print_humans(metrics: Metrics) -> None:
    """The annotation log's measures: agreement between annotators, and per judge the
    agreement on routed pairs, control pairs and carried labels, and what the human labels
    change."""
    from rich.markup import escape
    from rich.table import Table

    from charter.progress import console

    inter = metrics.inter_annotator
    if inter is None:
        return
    console.print(
        f"annotators: {inter.annotators} on {inter.items} pairs "
        f"({inter.items_multiply_labelled} labelled by 2+); pairwise agreement "
        f"{fmt(inter.pairwise_agreement)}, Cohen's κ {fmt(inter.cohen_kappa)}, "
        f"Krippendorff's α {fmt(inter.krippendorff_alpha)}, Fleiss' κ {fmt(inter.fleiss_kappa)}",
        highlight=False,
        markup=False,
        soft_wrap=True,
    )
    table = Table(title="humans in the loop", header_style="bold", title_justify="left")
    cols = ("judge", "routed: agree", "control: agree", "carried: agree", "human", "flipped")
    for col in (*cols, "ties", "|Δp|"):
        table.add_column(col, justify="left" if col == "judge" else "right")
    for j in metrics.judges:
        routed, effect = j.routed_agreement, j.routing_effect
        if routed is None or effect is None:
            continue
        table.add_row(
            escape(j.name),
            _ci(routed.routed),
            _ci(routed.control),
            _ci(routed.carried),
            f"{effect.human_labelled}/{effect.pairs}",
            str(effect.flipped),
            str(effect.human_ties),
            fmt(effect.mean_abs_change),
        )
    console.print(table)


def _with_ci(estimate: Estimate) -> str:
    return f"{fmt(estimate.value)} {interval(estimate)}"


def bias_lines(judge: JudgeMetrics) -> list[str]:
    """One line per bias block present: the head-to-head win rate raw and length-controlled,
    each self-preference shown by its interval, and the AI-only / human-only / PPI rates."""
    bias = judge.bias
    if bias is None:
        return []
    lines = []
    h2h = bias.head_to_head
    if h2h is not None:
        line = (
            f"{h2h.model} over {h2h.opponent} ({h2h.pairs} pairs): raw "
            f"{_with_ci(h2h.judge.raw)}, length-controlled {_with_ci(h2h.judge.controlled)}, "
            f"length effect {h2h.judge.length_effect:+.2f}"
        )
        if h2h.human is not None:
            line += f"; people: length-controlled {_with_ci(h2h.human.controlled)}"
        lines.append(line)
    for s in bias.self_preference:
        shown = "self-preference" if s.difference.ci95[0] > 0 else "no self-preference shown"
        lines.append(
            f"{shown}: {s.judge} against {s.reference}, n={s.n}: "
            f"{signed(s.difference.value)} {interval(s.difference)}"
        )
    est = bias.estimates
    if est is not None:
        rates = est.rates
        lines.append(
            f"{est.rate_of}: AI only {_with_ci(rates.ai_only)} N={est.pairs}, human only "
            f"{_with_ci(rates.human_only)} n={est.drawn}, PPI {_with_ci(rates.ppi)}"
        )
    return lines


def _print_bias(metrics: Metrics) -> None:
    from charter.progress import console

    for j in metrics.judges:
        for line in bias_lines(j):
            console.print(f"{j.name}: {line}", highlight=False, markup=False, soft_wrap=True)
