"""``deliberate``: deliberative-alignment SFT data (Guan et al. 2024).

The model answers each prompt with a spec in its system prompt (a constitution whose
principles have priorities, such as the built-in ``spec``), asked first to reason about which
principles apply, what they ask here and which one decides when they conflict. The SFT row
keeps the prompt *without* the spec and the reasoning plus the answer as the assistant's
turn (``<think>REASONING</think>`` then the answer), so the trained model learns to recall the
spec and reason over it unprompted. The principles the reasoning cites by id are recorded.

A judge shown the spec (``charter.judges.grade`` with a rubric derived from it,
``spec_rubric``) grades each completion, reasoning included unless ``--no-judge-reasoning``;
``--min-score`` keeps only those graded high enough, and with ``--n K`` the best-graded of a
prompt's K completions.

Two ways to get the reasoning (``--style``):

- ``two-step`` (the default): one request for the reasoning alone, then one for the reply
  with that reasoning as the model's earlier turn. Any chat model does this.
- ``think``: one request; the reasoning is what a reasoning server returned apart from the
  answer (``reasoning_content``), else a leading ``<think>...</think>`` block of the reply. A
  reply with neither is a failed completion, not a guess.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections import Counter
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from charter.config import ModelSpec, Sampling, StageOptions
from charter.constitution import Constitution, load_constitution
from charter.engines.base import ModelFactory, OutputPaths, Prepared, RunSummary, Work
from charter.errors import ConfigError, ParseError
from charter.fingerprint import settings_of
from charter.io import read_output, read_prompts, write_rows
from charter.judges.api import grade
from charter.judges.grading import ScoreConfig
from charter.judges.records import Grade
from charter.judges.verdicts import COMPLETE
from charter.model import Model, with_usage
from charter.prompts import OWN_TEMPLATES, render, templates_hash
from charter.records import AnswerRecord, PromptRecord
from charter.rubric import Rubric, load_rubric
from charter.seeds import sample_seed
from charter.stages.spec import StageSpec
from charter.types import GenerateConfig, Generation, Message, Usage

log = logging.getLogger("charter")

Style = Literal["two-step", "think"]
Excluded = Literal["error", "cut_off", "empty", "ungraded", "below_min_score", "not_best"]
"""Why a completion is not an SFT row (see ``Deliberation.excluded_reason``)."""

SPEC_LEVELS = {
    1: "Breaks a top-priority principle (for instance helps toward serious harm), or ignores "
    "the specification altogether.",
    2: "Breaks a principle, or settles a conflict in favour of the lower priority.",
    3: "Keeps the higher priorities but falls short of lower ones: unhelpful, evasive, "
    "preachy, or off the defaults without being asked.",
    4: "Follows the specification with minor lapses.",
    5: "Follows every principle that applies, settles any conflict by priority, and is as "
    "helpful as the specification allows.",
}
"""What each grade of the spec-derived rubric means (our own words)."""

_THINK = re.compile(r"^\s*<think>(.*)</think>(.*)$", re.S | re.I)
"""A leading reasoning block, to its last closing tag (so a nested block stays inside)."""


class DeliberateConfig(Sampling):
    """Settings of the deliberate work function."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n: int = Field(default=1, ge=1)
    """Completions per prompt."""
    style: Style = "two-step"
    """How the reasoning is asked for (see the module doc)."""
    min_score: float | None = None
    """Completions the judge grades below this are not kept."""
    judge_reasoning: bool = True
    """The judge grades the reasoning with the answer, or the answer alone."""


class Deliberation(BaseModel):
    """One completion: the model's reasoning over the spec and its reply."""

    model_config = ConfigDict(extra="forbid")

    reasoning: str | None
    """What the model reasoned about the spec (None when the completion failed: ``error``)."""
    answer: str | None
    """Its reply to the user."""
    finish_reasons: list[str] = Field(default_factory=list)
    """Why each request ended (reasoning then reply for ``two-step``; ``length`` = cut off)."""
    cited: list[str] = Field(default_factory=list)
    """Ids of the spec's principles the reasoning names, in order of first mention."""
    score: int | None = None
    """The judge's grade on the spec-derived rubric (None without a judge)."""
    expected_score: float | None = None
    """sum(s * P(s)) over the grades, where the judge gave log-probabilities."""
    feedback: str | None = None
    """The judge's feedback (with its CoT)."""
    kept: bool = False
    """Whether this completion is an SFT row."""
    excluded_reason: Excluded | None = None
    """Why it is not kept: no reasoning found (``error``), a request cut off at max_tokens,
    an empty reply, no grade read from the judge (``ungraded``), graded under --min-score,
    or another completion of the prompt graded higher."""
    error: str | None = None
    """Why no reasoning could be read, or why the judge gave no grade."""

    @property
    def grade(self) -> float | None:
        return self.expected_score if self.expected_score is not None else self.score


class DeliberationRecord(BaseModel):
    """A line of ``charter deliberate``'s output: one prompt and its completions."""

    model_config = ConfigDict(extra="forbid")

    id: str
    """The prompt's row id."""
    messages: list[Message]
    """The prompt as it was given, without the spec: the SFT row's prompt."""
    completions: list[Deliberation]
    """The ``--n`` completions, in sample order."""
    model: str
    """The model that reasoned and answered."""
    judge: str | None
    """The judge that graded the completions (None: none)."""
    constitution: str
    """The spec's name."""
    constitution_hash: str
    """The spec's content hash."""
    rubric_hash: str | None
    """The judge's rubric's content hash."""
    style: Style
    """How the reasoning was asked for."""
    seeds: list[int]
    """The seed of each completion's requests."""
    usage: Usage = Field(default_factory=Usage)
    """Tokens spent on this record, the judge's included (cache hits cost none)."""


def sft_completion(reasoning: str, answer: str) -> str:
    """The assistant turn an SFT row teaches: the reasoning in a ``<think>`` block, then the
    reply."""
    return f"<think>\n{reasoning.strip()}\n</think>\n\n{answer.strip()}"


def cited_principles(text: str, constitution: Constitution) -> list[str]:
    """Ids of the constitution's principles that ``text`` names (whole ids, any case), in the
    order of their first mention."""
    found: list[tuple[int, str]] = []
    for p in constitution.principles:
        # Whole ids: a '.', ':' or '-' next to one ends a sentence or a label ("p2-honesty.")
        # unless an id character follows it (a longer id, "p2-honesty.v2").
        m = re.search(rf"(?<![\w-])(?<!\w[.:]){re.escape(p.id)}(?![\w-])(?![.:]\w)", text, re.I)
        if m:
            found.append((m.start(), p.id))
    return [pid for _, pid in sorted(found)]


def check_spec(constitution: Constitution, where: str) -> None:
    """A spec states which principle wins a conflict: refuse a constitution without
    priorities."""
    if not constitution.has_priorities:
        raise ConfigError(
            f"{where}: constitution {constitution.name!r} states no priorities: deliberate needs "
            "a spec whose principles have a 'priority' (1 is highest), so the model can reason "
            "about which one wins a conflict (e.g. the built-in 'spec')"
        )


def _principles(constitution: Constitution) -> list[dict[str, object]]:
    return [
        {"id": p.id, "priority": constitution.rank(p), "rule": p.rule}
        for p in constitution.by_priority(constitution.principles)
    ]


def spec_rubric(constitution: Constitution, reasoning: bool = True) -> Rubric:
    """A 1-5 rubric whose criterion is the spec itself, for a judge that grades completions
    against it (with the reasoning shown, or the answer alone)."""
    criterion = render(
        "deliberate_criterion",
        preamble=constitution.preamble,
        principles=_principles(constitution),
        reasoning=reasoning,
    )
    return Rubric(name=f"spec:{constitution.name}", criterion=criterion, levels=SPEC_LEVELS)


def spec_messages(
    messages: Sequence[Message], constitution: Constitution, step: str
) -> list[Message]:
    """The conversation with the spec as its system prompt; an operator's own system prompt
    is kept inside it, under the spec."""
    operator = "\n\n".join(m.content for m in messages if m.role == "system")
    system = render(
        "deliberate_system",
        preamble=constitution.preamble,
        principles=_principles(constitution),
        operator=operator,
        step=step,
    )
    return [Message(role="system", content=system), *(m for m in messages if m.role != "system")]


def _split_think(g: Generation) -> tuple[str, str]:
    if g.reasoning and g.reasoning.strip():
        return g.reasoning, g.text
    m = _THINK.match(g.text)
    if m is None:
        if g.text.lstrip().lower().startswith("<think>"):
            if g.finish_reason == "length":
                raise ParseError(
                    "the reply was cut off at max_tokens inside its <think> reasoning: raise "
                    "--max-tokens"
                )
            raise ParseError("the reply opens a <think> block and never closes it")
        raise ParseError(
            "the reply has no <think>...</think> reasoning before its answer (and the server "
            "returned none apart); try --style two-step"
        )
    return m.group(1), m.group(2)


async def _complete(
    record: PromptRecord,
    model: Model,
    constitution: Constitution,
    config: GenerateConfig,
    style: Style,
) -> Deliberation:
    try:
        if style == "think":
            g = await model.generate(spec_messages(record.messages, constitution, "think"), config)
            reasoning, answer = _split_think(g)
            reasons = [g.finish_reason]
        else:
            first = await model.generate(
                spec_messages(record.messages, constitution, "reason"), config
            )
            reasoning = first.text
            follow = [
                *spec_messages(record.messages, constitution, "answer"),
                Message(role="assistant", content=reasoning),
                Message(role="user", content=render("deliberate_answer")),
            ]
            second = await model.generate(follow, config)
            answer = second.text
            reasons = [first.finish_reason, second.finish_reason]
    except ParseError as e:
        return Deliberation(reasoning=None, answer=None, excluded_reason="error", error=str(e))
    excluded: Literal["cut_off", "empty"] | None = None
    if any(r not in COMPLETE for r in reasons):
        excluded = "cut_off"
    elif not reasoning.strip() or not answer.strip():
        excluded = "empty"
    return Deliberation(
        reasoning=reasoning.strip(),
        answer=answer.strip(),
        finish_reasons=reasons,
        cited=cited_principles(reasoning, constitution),
        excluded_reason=excluded,
    )


async def _grade(
    item: AnswerRecord, judge: Model, rubric: Rubric, config: ScoreConfig
) -> Grade | ParseError:
    """The judge's grade, or why it gave none (after --attempts answers)."""
    try:
        return await grade(item, judge=judge, rubric=rubric, config=config)
    except ParseError as e:
        return e


@with_usage
async def deliberate(
    record: PromptRecord,
    *,
    model: Model,
    constitution: Constitution,
    config: DeliberateConfig,
    judge: Model | None = None,
    rubric: Rubric | None = None,
    score_config: ScoreConfig | None = None,
) -> DeliberationRecord:
    seeds = [sample_seed(config.seed, record.id, i) for i in range(config.n)]
    completions = await asyncio.gather(
        *(
            _complete(
                record,
                model,
                constitution,
                GenerateConfig(
                    max_tokens=config.max_tokens,
                    temperature=config.temperature,
                    top_p=config.top_p,
                    seed=s,
                ),
                config.style,
            )
            for s in seeds
        )
    )
    if all(c.excluded_reason == "error" for c in completions):
        raise ParseError(f"no completion had readable reasoning: {completions[0].error}")
    if judge is not None:
        assert rubric is not None and score_config is not None
        graded = [c for c in completions if c.excluded_reason is None]
        results = await asyncio.gather(
            *(
                _grade(
                    AnswerRecord(
                        id=f"{record.id}:{k}",
                        messages=record.messages,
                        response=(
                            sft_completion(c.reasoning or "", c.answer or "")
                            if config.judge_reasoning
                            else c.answer or ""
                        ),
                    ),
                    judge,
                    rubric,
                    score_config,
                )
                for k, c in enumerate(graded)
            )
        )
        for c, r in zip(graded, results, strict=True):
            if isinstance(r, ParseError):  # this completion alone is left out
                c.excluded_reason, c.error = "ungraded", f"the judge gave no grade: {r}"
                continue
            c.score, c.expected_score, c.feedback = r.score, r.expected_score, r.feedback
            if config.min_score is not None and (c.grade or 0.0) < config.min_score:
                c.excluded_reason = "below_min_score"
        passing = [c for c in completions if c.excluded_reason is None]
        if passing:  # best of n by the judge: the first among equals
            best = max(passing, key=lambda c: c.grade or 0.0)
            for c in passing:
                if c is not best:
                    c.excluded_reason = "not_best"
    for c in completions:
        c.kept = c.excluded_reason is None
    return DeliberationRecord(
        id=record.id,
        messages=record.messages,
        completions=list(completions),
        model=model.name,
        judge=None if judge is None else judge.name,
        constitution=constitution.name,
        constitution_hash=constitution.hash,
        rubric_hash=None if rubric is None else rubric.hash,
        style=config.style,
        seeds=seeds,
    )


class DeliberateOptions(StageOptions, Sampling):
    """``charter deliberate``."""

    output_fields: ClassVar[tuple[str, ...]] = (*StageOptions.output_fields, "sft")

    model: ModelSpec
    """The model that reasons over the spec and answers."""
    constitution: str = "spec"
    """The spec: a built-in name or a file whose principles have priorities."""
    n: int = Field(default=1, ge=1)
    """Completions per prompt; with a judge, the best-graded one that passes is kept."""
    style: Style = "two-step"
    """two-step: a request for the reasoning, then one for the reply (any chat model); think:
    one request, reasoning from the server's reasoning field or a leading <think> block."""
    judge: ModelSpec | None = None
    """A judge model shown the spec, grading each completion 1-5 on a rubric derived from
    it (the score stage's machinery)."""
    rubric: str | None = None
    """A rubric for the judge instead of the one derived from the spec."""
    min_score: float | None = None
    """Keep only completions the judge grades at least this (its expected score where it gives
    log-probabilities, else its score); needs --judge."""
    judge_reasoning: bool = True
    """The judge sees the reasoning with the answer (--no-judge-reasoning: the answer alone)."""
    judge_cot: bool = True
    """The judge writes feedback before its grade (as score --cot); --no-judge-cot reads the
    grade from its log-probabilities at once."""
    sft: Path | None = None
    """Write the kept completions here as TRL SFT rows: the prompt without the spec, then
    <think>reasoning</think> and the reply as the assistant turn."""

    def stage_config(self) -> DeliberateConfig:
        return DeliberateConfig(
            n=self.n,
            style=self.style,
            min_score=self.min_score,
            judge_reasoning=self.judge_reasoning,
            **self.sampling(),
        )


def _check(opts: DeliberateOptions, rubric: Rubric | None) -> None:
    if opts.judge is None:
        given = [
            flag
            for flag, value in (
                ("--min-score", opts.min_score is not None),
                ("--rubric", opts.rubric is not None),
                ("--no-judge-reasoning", not opts.judge_reasoning),
                ("--no-judge-cot", not opts.judge_cot),
            )
            if value
        ]
        if given:
            verb = "sets" if len(given) == 1 else "set"
            raise ConfigError(f"{', '.join(given)} {verb} how a judge grades: give --judge too")
        return
    assert rubric is not None
    if opts.min_score is not None and not (rubric.scores[0] <= opts.min_score <= rubric.scores[-1]):
        raise ConfigError(
            f"--min-score {opts.min_score:g} is off the judge's {rubric.scores[0]}-"
            f"{rubric.scores[-1]} scale"
        )


def prepare(opts: DeliberateOptions) -> Prepared:
    constitution = load_constitution(opts.constitution)
    check_spec(constitution, "deliberate")
    rubric: Rubric | None = None
    if opts.judge is not None:
        rubric = (
            load_rubric(opts.rubric)
            if opts.rubric is not None
            else spec_rubric(constitution, opts.judge_reasoning)
        )
    _check(opts, rubric)
    config = opts.stage_config()
    score_config = ScoreConfig(cot=opts.judge_cot, **{**opts.sampling(), "temperature": 0.0})

    def build(models: ModelFactory) -> Work:
        if config.n > 1 and config.temperature == 0:
            log.warning("--n %d with --temperature 0 gives identical completions", config.n)
        judge = None
        if opts.judge is not None:
            judge = models(opts.judge)
            if judge.capabilities.reward:
                raise ConfigError(
                    f"{judge.name} is a reward model: it cannot be shown the spec; use a "
                    "chat model as the --judge"
                )
        return partial(
            deliberate,
            model=models(opts.model),
            constitution=constitution,
            config=config,
            judge=judge,
            rubric=rubric,
            score_config=score_config,
        )

    def finish(summary: RunSummary, paths: OutputPaths) -> None:
        written, stats = write_sft(paths.work, opts.sft)
        log.info("deliberate: %s", stats)
        if " ungraded" in stats and opts.judge_cot:
            log.warning(
                "the judge gave no grade for some completions (their 'error' says why); a "
                "judge that cannot end its feedback with 'Score: N' may do better with "
                "--no-judge-cot, which reads the grade from its log-probabilities"
            )
        if opts.sft is None:
            log.info("%d completion(s) would be SFT rows: write them with --sft FILE", written)
        elif not written:
            log.warning("no SFT rows written to %s: %s", opts.sft, stats)
        else:
            log.info("SFT rows: %d written to %s", written, opts.sft)

    return Prepared(
        settings=settings_of(
            "deliberate",
            opts,
            exclude=["sft"],
            constitution=constitution.hash,
            rubric=None if rubric is None else rubric.hash,
            own_prompts=templates_hash(*OWN_TEMPLATES["deliberate"]),
        ),
        read=partial(read_prompts, opts.input),
        build=build,
        extra_outputs=[opts.sft] if opts.sft is not None else [],
        finish=finish,
    )


def write_sft(records: Path, dest: Path | None) -> tuple[int, str]:
    """TRL conversational SFT rows from a deliberate output, one per kept completion:
    ``{"id": "ID:k", "messages": [prompt without the spec..., {"role": "assistant",
    "content": "<think>..</think>\\n\\nreply"}], "cited", "score"}``; written to ``dest``
    (replaced whole, so it covers every record after a resume) when given. Returns (rows,
    a one-line account of the completions)."""
    lines: list[str] = []
    reasons: Counter[str] = Counter()
    cited: Counter[str] = Counter()
    grades: list[float] = []
    total = 0
    for rec in read_output(records, DeliberationRecord):
        prompt = [m.model_dump() for m in rec.messages]
        for k, c in enumerate(rec.completions):
            total += 1
            cited.update(c.cited)
            if c.grade is not None:
                grades.append(c.grade)
            if not c.kept or c.reasoning is None or c.answer is None:
                reasons[c.excluded_reason or "error"] += 1
                continue
            row = {
                "id": f"{rec.id}:{k}",
                "messages": [
                    *prompt,
                    {"role": "assistant", "content": sft_completion(c.reasoning, c.answer)},
                ],
                "cited": c.cited,
                "score": c.grade,
            }
            lines.append(json.dumps(row, ensure_ascii=False))
    if dest is not None:
        write_rows(dest, lines)
    parts = [f"{total} completion(s), {len(lines)} kept"]
    parts += [f"{n} {why.replace('_', ' ')}" for why, n in sorted(reasons.items())]
    if grades:
        parts.append(f"mean grade {sum(grades) / len(grades):.2f}")
    top = ", ".join(f"{pid} {n}" for pid, n in cited.most_common(5))
    parts.append(f"cited: {top}" if top else "no principle cited by id")
    return len(lines), "; ".join(parts)


SPEC = StageSpec(
    name="deliberate",
    options=DeliberateOptions,
    prepare=prepare,
    help="Deliberative-alignment SFT data: reason over a spec, keep the reasoning without it.",
)
