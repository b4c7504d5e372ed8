"""``select``: best-of-n SFT rows and preference pairs from scored answers.

Reads ``charter score --mode absolute`` output where each prompt has several answers (ids
``ROWID:k``, from ``respond --n K``), groups the answers by prompt and writes

- best-of-n SFT rows: the prompt and its best-scored answer as TRL conversational
  ``messages`` (rejection sampling; ``threshold`` drops prompts whose best is too low), and
- preference pairs, as in self-rewarding language models (Yuan et al. 2024): best vs worst
  per prompt, or every pair of answers far enough apart (``all_pairs``), in the TRL columns
  ``charter label`` writes, so ``charter train reward|dpo --labels hard`` trains on them.

The score of an answer is its ``expected_score`` where the judge gave log-probabilities (it is
finer than the integer), else its ``score``; a reward-model judge's file (no scores, a
``reward`` on every record) is ranked by reward. Equal scores name no better answer: a tie,
or a gap under ``min_gap``, never becomes a pair.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from charter.annotate.route import refuse_overwrite
from charter.config import InputPath
from charter.errors import ConfigError, InputError
from charter.io import output_lines, part_files, read_record, write_rows
from charter.judges.records import ScoreRecord
from charter.types import Message


class BestOfNRow(BaseModel):
    """A line of ``select``'s SFT output: a prompt with its best-scored answer."""

    model_config = ConfigDict(extra="forbid")

    id: str
    """The prompt's row id (the score ids without their ``:k``)."""
    answer_id: str
    """The score record of the answer kept (``ROWID:k``)."""
    messages: list[Message]
    """TRL conversational SFT row: the prompt, then the best answer as the assistant turn."""
    score: float
    """The best answer's score (expected_score, score or reward: see the module doc)."""
    answers: int
    """How many scored answers the prompt had."""


class ScoredPair(BaseModel):
    """A line of ``select --pairs``: two answers to one prompt, the better-scored chosen."""

    model_config = ConfigDict(extra="forbid")

    id: str
    """``CHOSEN_ID>REJECTED_ID``: unique in the file."""
    prompt: list[Message]
    """The conversation (TRL conversational ``prompt``)."""
    chosen: list[Message]
    """TRL column: the better-scored answer."""
    rejected: list[Message]
    """TRL column: the worse-scored answer."""
    chosen_id: str
    """The score record of ``chosen``."""
    rejected_id: str
    """The score record of ``rejected``."""
    score_chosen: float
    score_rejected: float
    margin: float
    """score_chosen - score_rejected (> 0, and >= min_gap); TRL's reward trainer uses it as
    the margin of its loss."""


class SelectOptions(BaseModel):
    """``charter select``: CLI flags, recipe keys (``stage: select``) and ``select``
    keywords."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    input: InputPath
    """charter score --mode absolute output (a file or a folder of its parts), several answers
    per prompt (ids ROWID:k, from charter respond --n K)."""
    output: Path
    """Best-of-n SFT rows to write: {id, answer_id, messages (prompt + best answer), score,
    answers}; rewritten whole each run."""
    pairs: Path | None = None
    """Also write preference pairs here: {id, prompt, chosen, rejected, chosen_id,
    rejected_id, score_chosen, score_rejected, margin}; they train with charter train
    reward|dpo --labels hard. Prompts with one answer give no pair (counted)."""
    threshold: float | None = None
    """SFT rows only for prompts whose best answer scores at least this."""
    min_gap: float = Field(default=0.0, ge=0.0)
    """Smallest score gap that makes a pair; equal scores never do, whatever the gap."""
    all_pairs: bool = False
    """Every pair of a prompt's answers whose gap is at least --min-gap (default: only its
    best vs its worst answer)."""

    @field_validator("input", mode="before")
    @classmethod
    def _path_as_text(cls, value: object) -> object:
        return str(value) if isinstance(value, Path) else value

    @field_validator("threshold", "min_gap")
    @classmethod
    def _finite(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError(f"must be a finite number (got {value})")
        return value

    @model_validator(mode="after")
    def _pairs_options_need_pairs(self) -> SelectOptions:
        given = [
            f for f, on in (("--min-gap", self.min_gap != 0), ("--all-pairs", self.all_pairs)) if on
        ]
        if given and self.pairs is None:
            raise ValueError(f"{' and '.join(given)} shape the pairs: give --pairs too")
        return self


SELECT_HELP = (
    "Best-of-n SFT rows and self-rewarding preference pairs from scored answers. Answers are "
    "ranked by expected_score where the judge gave log-probabilities, else by score; a "
    "reward-model judge's file by reward. The first answer wins among equals."
)


@dataclass(frozen=True)
class SelectSummary:
    """What a selection did."""

    output: Path
    pairs_output: Path | None
    prompts: int
    answers: int
    sft_rows: int
    below_threshold: int
    """Prompts whose best answer scored under the threshold (no SFT row)."""
    pairs: int
    ties: int
    """Candidate pairs left out: equal scores, or a gap under min_gap."""
    single: int
    """Prompts with fewer than two answers (no pair possible)."""
    scored_by: str
    """The field ranked by: ``expected_score``/``score``, or ``reward``."""

    def __str__(self) -> str:
        text = (
            f"selected from {self.prompts} prompts, {self.answers} answers (by {self.scored_by}): "
            f"{self.sft_rows} SFT rows -> {self.output}"
        )
        if self.below_threshold:
            text += f" ({self.below_threshold} below the threshold)"
        if self.pairs_output is not None:
            text += (
                f"; {self.pairs} pairs -> {self.pairs_output}, "
                f"{self.ties} ties or gaps under --min-gap skipped"
            )
            if self.single:
                text += f", {self.single} prompts with one answer"
        return text


@dataclass
class _Prompt:
    id: str
    messages: list[Message]
    answers: list[tuple[str, str, float]] = field(default_factory=list)
    """(score record id, answer, score) in file order."""


_ANSWER_KEY = re.compile(r"^(.*):(\d+)$")


def prompt_id(answer_id: str) -> str:
    """The row id of a score record: ``ROWID:k`` (one of several answers) less its ``:k``."""
    m = _ANSWER_KEY.match(answer_id)
    return m.group(1) if m else answer_id


def _read(path: Path) -> tuple[list[_Prompt], int, str]:
    """The scored answers grouped by prompt (in file order), the answer count, and the field
    ranked by."""
    if not path.is_file() and not (path.is_dir() and part_files(path)):
        raise InputError(f"scores not found: {path}")
    records: list[tuple[str, ScoreRecord]] = []
    try:
        lines = list(output_lines(path))
    except UnicodeDecodeError:
        raise InputError(
            f"{path}: not UTF-8 JSONL (select reads `charter score` output, uncompressed)"
        ) from None
    for where, line in lines:
        try:
            raw = json.loads(line)
        except ValueError:
            raw = None
        if isinstance(raw, dict) and "response_a" in raw and "response" not in raw:
            raise InputError(
                f"{where}: a pair label, not a score record: select reads "
                "`charter score --mode absolute` output"
            )
        records.append((where, read_record(line, where, ScoreRecord, "score record")))
    if not records:
        raise InputError(f"{path}: no score records (charter score --mode absolute output)")
    rubric = [(w, r) for w, r in records if r.score is not None or r.expected_score is not None]
    by_reward = not rubric
    if by_reward:
        missing = next((w for w, r in records if r.reward is None), None)
        if missing is not None:
            raise InputError(f"{missing}: no score, expected_score or reward to rank by")
    elif len(rubric) < len(records):
        where = next(w for w, r in records if r.score is None and r.expected_score is None)
        raise InputError(
            f"{where}: no score or expected_score (other records have one: a reward cannot be "
            "ranked with rubric scores)"
        )
    prompts: dict[str, _Prompt] = {}
    seen: set[str] = set()
    for where, r in records:
        if r.id in seen:
            raise InputError(f"{where}: score id {r.id!r} appears more than once")
        seen.add(r.id)
        value = _value(r, by_reward)
        if not math.isfinite(value):
            raise InputError(f"{where}: the score of {r.id!r} is not a finite number ({value})")
        group = prompts.setdefault(prompt_id(r.id), _Prompt(prompt_id(r.id), r.prompt))
        if group.messages != r.prompt:
            raise InputError(
                f"{where}: answer {r.id!r} has another prompt than the earlier answers of "
                f"row {group.id!r}"
            )
        group.answers.append((r.id, r.response, value))
    if by_reward:
        scored_by = "reward"
    elif all(r.expected_score is not None for _, r in records):
        scored_by = "expected_score"
    elif any(r.expected_score is not None for _, r in records):
        scored_by = "expected_score, else score"
    else:
        scored_by = "score"
    return list(prompts.values()), len(records), scored_by


def _value(r: ScoreRecord, by_reward: bool) -> float:
    if by_reward:
        assert r.reward is not None
        return r.reward
    if r.expected_score is not None:
        return r.expected_score
    assert r.score is not None
    return float(r.score)


def _assistant(text: str) -> list[Message]:
    return [Message(role="assistant", content=text)]


def _pair(p: _Prompt, better: tuple[str, str, float], worse: tuple[str, str, float]) -> ScoredPair:
    return ScoredPair(
        id=f"{better[0]}>{worse[0]}",
        prompt=p.messages,
        chosen=_assistant(better[1]),
        rejected=_assistant(worse[1]),
        chosen_id=better[0],
        rejected_id=worse[0],
        score_chosen=better[2],
        score_rejected=worse[2],
        margin=better[2] - worse[2],
    )


def _pairs(p: _Prompt, all_pairs: bool, min_gap: float) -> tuple[list[ScoredPair], int]:
    """(pairs, candidate pairs left out as ties) of one prompt."""
    if all_pairs:
        candidates = list(combinations(p.answers, 2))
    else:
        # the first answer among equals, so a re-run picks the same pair
        best = max(p.answers, key=lambda a: a[2])
        worst = min(p.answers, key=lambda a: a[2])
        candidates = [(best, worst)]
    out: list[ScoredPair] = []
    ties = 0
    for x, y in candidates:
        better, worse = (x, y) if x[2] >= y[2] else (y, x)
        gap = better[2] - worse[2]
        if gap <= 0 or gap < min_gap:
            ties += 1
        else:
            out.append(_pair(p, better, worse))
    return out, ties


def select(
    scores: str | Path,
    output: str | Path,
    pairs: str | Path | None = None,
    *,
    threshold: float | None = None,
    min_gap: float = 0.0,
    all_pairs: bool = False,
) -> SelectSummary:
    """Write best-of-n SFT rows to ``output`` and, with ``pairs``, preference pairs (see the
    module doc and ``BestOfNRow``/``ScoredPair``). Raises InputError naming the file and line
    for input that is not scores, and when pairs are asked but no prompt has two answers."""
    scores, output = Path(scores), Path(output)
    pairs_path = None if pairs is None else Path(pairs)
    if not min_gap >= 0 or math.isinf(min_gap):  # NaN fails the comparison too
        raise ConfigError(f"--min-gap must be a number >= 0 (got {min_gap})")
    if threshold is not None and not math.isfinite(threshold):
        raise ConfigError(f"--threshold must be a finite number (got {threshold})")
    refuse_overwrite(output, [scores])
    if pairs_path is not None:
        refuse_overwrite(pairs_path, [scores])
        if pairs_path.resolve() == output.resolve():
            raise ConfigError(f"{pairs_path}: the pairs file and the SFT output must differ")
    prompts, answers, scored_by = _read(scores)
    rows: list[BestOfNRow] = []
    below = 0
    for p in prompts:
        best = max(p.answers, key=lambda a: a[2])  # the first among equals
        if threshold is not None and best[2] < threshold:
            below += 1
            continue
        rows.append(
            BestOfNRow(
                id=p.id,
                answer_id=best[0],
                messages=[*p.messages, *_assistant(best[1])],
                score=best[2],
                answers=len(p.answers),
            )
        )
    pair_rows: list[ScoredPair] = []
    ties = 0
    single = sum(len(p.answers) < 2 for p in prompts)
    if pairs_path is not None:
        if single == len(prompts):
            raise InputError(
                f"{scores}: no prompt has two or more scored answers ({single} prompts with "
                "one): pairs need several answers per prompt (charter respond --n K)"
            )
        for p in prompts:
            if len(p.answers) >= 2:
                found, tied = _pairs(p, all_pairs, min_gap)
                pair_rows.extend(found)
                ties += tied
    write_rows(output, [r.model_dump_json() for r in rows])
    if pairs_path is not None:
        write_rows(pairs_path, [r.model_dump_json() for r in pair_rows])
    return SelectSummary(
        output=output,
        pairs_output=pairs_path,
        prompts=len(prompts),
        answers=answers,
        sft_rows=len(rows),
        below_threshold=below,
        pairs=len(pair_rows),
        ties=ties,
        single=single,
        scored_by=scored_by,
    )


def run_select(opts: SelectOptions) -> SelectSummary:
    """``select`` with the options of a command or recipe stage."""
    return select(
        opts.input,
        opts.output,
        opts.pairs,
        threshold=opts.threshold,
        min_gap=opts.min_gap,
        all_pairs=opts.all_pairs,
    )
