"""charter's own judge as a GRPO reward: direct RLAIF (Lee et al. 2023).

Each completion is graded under a rubric with ``charter score``'s machinery; the reward is
the expected score sum(s·P(s)) where the judge gives log-probabilities, else its parsed score.
A completion the judge cannot grade gets no reward (None: TRL leaves it out of the mean), and
is counted: a generation batch the judge, as the only reward, grades none of stops the run,
and the share left ungraded is the run's to report and bound (``--max-ungraded``). Each
process of a multi-process run grades its own completions; the trainer counts the batch once
it has gathered every process's (``JudgedGRPOTrainer``), so every process counts the same.
TRL awaits this callable on its own long-lived event loop, so one ``Model`` (its request
limit, retries and cache) serves the whole run.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from charter.errors import (
    BackendFatalError,
    BackendUnavailable,
    CharterError,
    ConfigError,
    UngradedError,
)
from charter.io import content_id
from charter.judges.api import grade
from charter.judges.grading import ScoreConfig
from charter.model import Model
from charter.records import AnswerRecord
from charter.rubric import Rubric
from charter.types import Message

log = logging.getLogger("charter")

FATAL = (BackendUnavailable, BackendFatalError, ConfigError)
"""Errors that would fail every completion: they stop the run instead of leaving each one
ungraded."""


def _messages(value: Any) -> list[Message]:
    if isinstance(value, str):
        return [Message(role="user", content=value)]
    return [Message(role=m["role"], content=m["content"]) for m in value]


def _text(completion: Any) -> str:
    if isinstance(completion, str):
        return completion
    return "".join(m["content"] for m in completion if m.get("role") == "assistant")


@dataclass
class JudgeTally:
    """How many completions the judge graded over a run."""

    graded: int = 0
    ungraded: int = 0

    @property
    def share(self) -> float:
        """The share of completions left ungraded (0 before any)."""
        total = self.graded + self.ungraded
        return self.ungraded / total if total else 0.0

    def __str__(self) -> str:
        return f"{self.ungraded} of {self.graded + self.ungraded} ({self.share:.1%})"

    def as_record(self) -> dict[str, float]:
        return {"graded": self.graded, "ungraded": self.ungraded, "share_ungraded": self.share}


class JudgeReward:
    """An async GRPO reward function: the judge's expected rubric score per completion."""

    def __init__(
        self,
        spec: str,
        rubric: Rubric,
        *,
        backend_options: dict[str, Any] | None = None,
        concurrency: int = 8,
        timeout: float = 120.0,
        cot: bool = False,
        seed: int = 0,
        sole: bool = False,
    ) -> None:
        """``sole``: the judge is the run's only reward, so a batch it grades none of has
        no reward at all: an UngradedError, not a silent step."""
        self.spec = spec
        self.rubric = rubric
        self.backend_options = backend_options or {}
        self.concurrency = concurrency
        self.timeout = timeout
        self.config = ScoreConfig(cot=cot, seed=seed, max_tokens=256)
        self.__name__ = f"judge:{spec}:{rubric.name}"
        self.sole = sole
        self._model: Model | None = None
        self.tally = JudgeTally()
        self.last_failure: str | None = None
        """Why the last completion the judge could not grade got no score."""

    def _judge(self) -> Model:
        if self._model is None:
            self._model = Model.from_spec(
                self.spec,
                backend_options=self.backend_options,
                concurrency=self.concurrency,
                timeout=self.timeout,
            )
        return self._model

    async def __call__(
        self, prompts: list[Any], completions: list[Any], **_: Any
    ) -> list[float | None]:
        """The rewards of this process's completions; :meth:`count` counts a generation
        batch once the trainer has every process's."""
        judge = self._judge()
        self.last_failure = None
        return list(
            await asyncio.gather(
                *(self._one(judge, p, c) for p, c in zip(prompts, completions, strict=True))
            )
        )

    def count(self, rewards: Sequence[float | None]) -> None:
        """Count one generation batch's rewards (None: ungraded), every process's: the tally,
        and the stop when the judge, as the only reward, graded none of them, come out the
        same on each process."""
        ungraded = sum(r is None for r in rewards)
        self.tally.graded += len(rewards) - ungraded
        self.tally.ungraded += ungraded
        why = self.last_failure or "on another process"
        if self.sole and rewards and ungraded == len(rewards):
            raise UngradedError(
                f"the judge {self.spec} graded none of the {len(rewards)} completion(s) of a "
                f"generation batch, which would train on no reward: {why}. {self.advice()}"
            )
        if ungraded:
            log.warning(
                "the judge could not grade %d of %d completion(s), left without its reward: %s",
                ungraded,
                len(rewards),
                why,
            )

    def advice(self) -> str:
        """Where to look when the judge grades little."""
        scale = f"{min(self.rubric.scores)}-{max(self.rubric.scores)}"
        return (
            f"Check that {self.spec} answers with a score on the {scale} scale of --rubric "
            f"{self.rubric.name} (charter score --judge {self.spec} --rubric "
            f"{self.rubric.name} on a few completions shows its replies), or choose another "
            "--reward-judge or --rubric"
        )

    async def _one(self, judge: Model, prompt: Any, completion: Any) -> float | None:
        messages, text = _messages(prompt), _text(completion)
        item = AnswerRecord(id=content_id(messages, text), messages=messages, response=text)
        try:
            rec = await grade(item, judge=judge, rubric=self.rubric, config=self.config)
        except FATAL:
            raise  # the judge cannot be asked at all: stop the run with why, as any stage does
        except CharterError as e:
            self.last_failure = " ".join(str(e).split())[:400]
            return None
        if rec.expected_score is not None:
            return rec.expected_score
        if rec.score is None:
            self.last_failure = f"no score in the judge's answer after {rec.attempts} tries"
            return None
        return float(rec.score)

    async def aclose(self) -> None:
        if self._model is not None:
            await self._model.aclose()
