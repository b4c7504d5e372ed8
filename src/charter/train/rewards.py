"""charter's own judge as a GRPO reward: direct RLAIF (Lee et al. 2023).

Each completion is graded under a rubric with ``charter score``'s machinery; the reward is
the expected score sum(s·P(s)) where the judge gives log-probabilities, else its parsed score.
A completion the judge cannot grade gets no reward (None: TRL leaves it out of the mean).
TRL awaits this callable on its own long-lived event loop, so one ``Model`` (its request
limit, retries and cache) serves the whole run.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from charter.errors import CharterError
from charter.io import content_id
from charter.model import Model
from charter.records import AnswerRecord
from charter.rubric import Rubric
from charter.stages.score import ScoreConfig, score
from charter.types import Message

log = logging.getLogger("charter")


def _messages(value: Any) -> list[Message]:
    if isinstance(value, str):
        return [Message(role="user", content=value)]
    return [Message(role=m["role"], content=m["content"]) for m in value]


def _text(completion: Any) -> str:
    if isinstance(completion, str):
        return completion
    return "".join(m["content"] for m in completion if m.get("role") == "assistant")


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
    ) -> None:
        self.spec = spec
        self.rubric = rubric
        self.backend_options = backend_options or {}
        self.concurrency = concurrency
        self.timeout = timeout
        self.config = ScoreConfig(cot=cot, seed=seed, max_tokens=256)
        self.__name__ = f"judge:{spec}:{rubric.name}"
        self._model: Model | None = None
        self.failed = 0

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
        judge = self._judge()
        return list(
            await asyncio.gather(
                *(self._one(judge, p, c) for p, c in zip(prompts, completions, strict=True))
            )
        )

    async def _one(self, judge: Model, prompt: Any, completion: Any) -> float | None:
        messages, text = _messages(prompt), _text(completion)
        item = AnswerRecord(id=content_id(messages, text), messages=messages, response=text)
        try:
            rec = await score(item, judge=judge, rubric=self.rubric, config=self.config)
        except CharterError as e:
            self.failed += 1
            log.debug("the judge gave no reward for a completion: %s", e)
            return None
        if rec.expected_score is not None:
            return rec.expected_score
        if rec.score is None:
            self.failed += 1
            return None
        return float(rec.score)

    async def aclose(self) -> None:
        if self._model is not None:
            await self._model.aclose()
