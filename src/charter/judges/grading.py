"""Grading one answer under a rubric in charter's format (LLM-as-judge).

The judge writes short feedback, then a score; the score is read from the judge's own answer
(after removing any echo of the prompt, so a template that itself contains "Score: 5" can
never be read as a score), and, where log-probabilities are available, the expected score
sum(s * P(s)) over the score tokens is recorded next to it. Unreadable answers are asked
again (``charter.judges.retry``), then the grade fails with the raw text; there is no default
score. Prometheus's format is ``charter.judges.prometheus``, a reward model's grade
``charter.judges.reward``; ``charter.judges.grade`` picks among them.
"""

from __future__ import annotations

from pydantic import ConfigDict, Field

from charter.config import Sampling
from charter.errors import LogprobsUnavailable, OptionsNotFound
from charter.judges import verdicts
from charter.judges.records import LOW_MASS, Grade, JudgeFormat, ProbsSource
from charter.judges.retry import retry_temperature, unread
from charter.judges.verdicts import read_score, strip_echo
from charter.model import Model, with_usage
from charter.prompts import delimiter_tag, render, render_conversation
from charter.records import AnswerRecord
from charter.rubric import Rubric
from charter.seeds import sample_seed
from charter.types import GenerateConfig, Generation, Message


class ScoreConfig(Sampling):
    """Settings of a rubric grader."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cot: bool = True
    """Feedback before the score (the Prometheus / MT-bench style)."""
    attempts: int = Field(default=3, ge=1)
    """Tries before an unparseable answer becomes a failed record."""
    temperature: float = Field(default=0.0, ge=0.0)
    """Temperature of the first try; re-tries sample at max(this, 0.7), so they can differ."""
    format: JudgeFormat = "charter"
    """The prompt and answer format (see ``JudgeFormat``)."""


def parse_score(answer: str, prompt: str, scores: list[int]) -> int | None:
    """The judge's final stated score in the answer proper (echo of the prompt and reasoning
    blocks removed), if it is on the scale; the rules live in :mod:`charter.judges.verdicts`."""
    return verdicts.parse_score(strip_echo(answer, prompt), scores)


def score_messages(item: AnswerRecord, rubric: Rubric, cot: bool) -> list[Message]:
    conversation = render_conversation(item.messages)
    texts = [conversation, item.response, item.reference or ""]
    text = render(
        "score",
        low=rubric.scores[0],
        high=rubric.scores[-1],
        criterion=rubric.criterion,
        levels=sorted(rubric.levels.items()),
        conversation=conversation,
        reply=item.response,
        reference=item.reference,
        tag=delimiter_tag(*texts),
        cot=cot,
    )
    return [Message(role="user", content=text)]


@with_usage
async def grade_by_rubric(
    item: AnswerRecord, *, judge: Model, rubric: Rubric, config: ScoreConfig
) -> Grade:
    """An LLM judge's grade of ``item`` under ``rubric`` in charter's format (feedback, then
    ``Score: N``), with the expected score where it gives log-probabilities."""
    msgs = score_messages(item, rubric, config.cot)
    options = [str(s) for s in rubric.scores]
    attempt = 0
    last: Generation | None = None

    async def read_text(long: bool) -> int:
        """The score read from generated replies (``long``: room to reason first), asked
        again up to --attempts times; never a guess."""
        nonlocal attempt, last
        found: int | None = None
        while found is None and attempt < config.attempts:
            last = await judge.generate(
                msgs,
                GenerateConfig(
                    max_tokens=config.max_tokens if long else 8,
                    temperature=retry_temperature(config.temperature, attempt),
                    top_p=config.top_p,
                    seed=sample_seed(config.seed, item.id, attempt + 1),
                ),
            )
            attempt += 1
            # A reply cut off at max_tokens is no score, except a short answer (8 tokens)
            # that is just the number: some servers report `length` for it when the cap is
            # tiny.
            found = read_score(last, msgs[0].content, rubric.scores, short=not long)
        if found is None:
            assert last is not None
            scale = f"no score on the {rubric.scores[0]}-{rubric.scores[-1]} scale"
            raise unread(scale, attempt, last, unit="answers")
        return found

    parsed: int | None = None
    feedback: str | None = None
    if config.cot or not judge.capabilities.option_logprobs:
        parsed = await read_text(long=config.cot)
    if config.cot:
        assert last is not None
        feedback = strip_echo(last.text, msgs[0].content).strip()
    probs: dict[str, float] | None = None
    expected: float | None = None
    mass: float | None = None
    low_mass = False
    source: ProbsSource | None = None
    if judge.capabilities.option_logprobs:
        scoring = msgs
        if config.cot:
            assert last is not None
            follow = render("score_answer", low=rubric.scores[0], high=rubric.scores[-1])
            scoring = [
                *msgs,
                Message(role="assistant", content=last.text),
                Message(role="user", content=follow),
            ]
        try:
            s = await judge.option_logprobs(scoring, options, GenerateConfig(seed=config.seed))
        except LogprobsUnavailable:
            if parsed is None:  # no-CoT path had planned on logprobs: parse a generation
                return await grade_by_rubric(item, judge=judge, rubric=rubric, config=config)
        except OptionsNotFound:
            # A reasoning judge does not answer with the number at once: the score it wrote
            # stands (CoT), or is read from a whole reply (no CoT); no expected score.
            if parsed is None:
                parsed = await read_text(long=True)
        else:
            probs = s.probs
            mass = s.mass
            low_mass = bool(s.missing) or mass < LOW_MASS
            source = s.method
            expected = sum(int(k) * p for k, p in probs.items())
            if parsed is None:
                parsed = int(max(probs, key=probs.__getitem__))
                attempt = max(attempt, 1)
    assert parsed is not None
    return Grade(
        score=parsed,
        expected_score=expected,
        score_probs=probs,
        feedback=feedback,
        attempts=attempt,
        judge=judge.name,
        option_mass=mass,
        low_option_mass=low_mass,
        probs_source=source,
        topk_truncated=source == "topk_bound",
    )
