"""Rewards for RL: one number per completion, from charter's judges and reward models.

Three sources, each a callable ``await source(query) -> float``:

- ``ModelReward``: a trained reward model's raw reward (``rm/DIR``), optionally normalised as
  (r - mean) / std with a mean and std the caller states (``Normalisation``);
- ``RubricReward``: a judge's expected score under a rubric, sum(s·P(s)) where it gives
  log-probabilities, else its parsed score (``train rl --reward-judge``);
- ``ReferenceReward``: P(completion better than a reference answer) under a constitution,
  both orders averaged (direct RLAIF against a reference, e.g. the SFT model's answer).

``RewardMix`` weighs several and says, per completion, either its reward or why it has none
(``Ungraded``). A judge that cannot be asked at all (unreachable, refused, misconfigured)
raises instead: that fails every completion alike, and a caller stops rather than count it.
``charter serve`` and ``charter train rl`` both reward through this module.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from charter.constitution import Constitution
from charter.errors import (
    BackendFatalError,
    BackendUnavailable,
    CharterError,
    ConfigError,
    InputError,
)
from charter.io import content_id
from charter.judges.api import compare, grade
from charter.judges.grading import ScoreConfig
from charter.judges.pairwise import LabelConfig
from charter.model import Model
from charter.pairs import PairRecord
from charter.records import AnswerRecord
from charter.rubric import Rubric
from charter.types import Message

FATAL = (BackendUnavailable, BackendFatalError, ConfigError)
"""Errors that would fail every completion: they stop the caller instead of leaving each one
ungraded."""


@dataclass(frozen=True)
class Query:
    """One completion to reward: the conversation it answers, and a reference answer where
    the source compares with one."""

    messages: list[Message]
    response: str
    reference: str | None = None

    @property
    def id(self) -> str:
        """The completion's content id (seeds the judge's choices, keys the cache)."""
        if self.reference is None:
            return content_id(self.messages, self.response)
        return content_id(self.messages, self.response, self.reference)


class Ungraded(CharterError):
    """The source gave this completion no reward; the message says why."""


class Source(Protocol):
    name: str

    async def __call__(self, query: Query) -> float: ...


@dataclass(frozen=True)
class Normalisation:
    """(r - mean) / std, with where the two numbers came from."""

    mean: float = 0.0
    std: float = 1.0
    source: str = "none"
    """``none``, ``given`` (stated by the user) or the file they were measured on."""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.mean) and math.isfinite(self.std) and self.std > 0):
            raise ConfigError(
                f"reward normalisation: mean {self.mean} and std {self.std} must be finite, "
                "the std > 0"
            )

    def __call__(self, value: float) -> float:
        return (value - self.mean) / self.std


class ModelReward:
    """A reward model's reward (``rm/DIR``), normalised as stated."""

    def __init__(self, model: Model, normalisation: Normalisation | None = None) -> None:
        if not model.capabilities.reward:
            raise ConfigError(f"{model.name} is not a reward model (use rm/FOLDER)")
        if model.capabilities.principles:
            raise ConfigError(
                f"{model.name} is principle-conditioned: it scores under a principle, and a "
                "reward alone names none (use it as a judge: --judge with a rubric)"
            )
        self.model = model
        self.name = model.name
        self.normalisation = normalisation or Normalisation()

    async def raw(self, query: Query) -> float:
        """The reward model's own number, before normalisation."""
        try:
            return (await self.model.reward(query.messages, query.response)).value
        except FATAL:
            raise
        except CharterError as e:
            raise Ungraded(str(e)) from e

    async def __call__(self, query: Query) -> float:
        return self.normalisation(await self.raw(query))


class RubricReward:
    """A judge's expected score of the completion under a rubric."""

    def __init__(self, judge: Model, rubric: Rubric, config: ScoreConfig) -> None:
        self.judge = judge
        self.rubric = rubric
        self.config = config
        self.name = f"{judge.name}:{rubric.name}"

    async def __call__(self, query: Query) -> float:
        item = AnswerRecord(
            id=query.id, messages=query.messages, response=query.response, reference=query.reference
        )
        try:
            rec = await grade(item, judge=self.judge, rubric=self.rubric, config=self.config)
        except FATAL:
            raise
        except CharterError as e:
            raise Ungraded(" ".join(str(e).split())[:400]) from e
        if rec.expected_score is not None:
            return rec.expected_score
        if rec.reward is not None:  # a reward model as the judge: its raw reward
            return rec.reward
        if rec.score is None:
            raise Ungraded(f"no score in the judge's answer after {rec.attempts} tries")
        return float(rec.score)

    def advice(self, rubric: str = "rubric") -> str:
        """Where to look when the judge grades little (``rubric``: what to call the rubric,
        e.g. its flag)."""
        scale = f"{min(self.rubric.scores)}-{max(self.rubric.scores)}"
        spec, name = self.judge.name, self.rubric.name
        return (
            f"Check that {spec} answers with a score on the {scale} scale of {rubric} {name} "
            f"(charter score --judge {spec} --rubric {name} on a few completions shows its "
            "replies)"
        )


class ReferenceReward:
    """P(completion better than the reference) under a constitution, as ``charter label``
    judges a pair with the completion as A and the reference as B."""

    def __init__(self, judge: Model, constitution: Constitution, config: LabelConfig) -> None:
        self.judge = judge
        self.constitution = constitution
        self.config = config
        self.name = f"{judge.name}:{constitution.name}"

    async def __call__(self, query: Query) -> float:
        if query.reference is None:
            raise ConfigError(
                f"{self.name} compares each completion with a reference answer: give one"
            )
        pair = PairRecord(
            id=query.id,
            messages=query.messages,
            response_a=query.response,
            response_b=query.reference,
            a_source="completion",
            b_source="reference",
        )
        try:
            verdict = await compare(
                pair, judge=self.judge, constitution=self.constitution, config=self.config
            )
        except FATAL:
            raise
        except CharterError as e:
            raise Ungraded(" ".join(str(e).split())[:400]) from e
        return verdict.p_a


@dataclass(frozen=True)
class Rewarded:
    """A completion's reward, or why it has none (``reward`` None, ``why`` set)."""

    reward: float | None
    why: str | None = None
    parts: tuple[float | None, ...] = ()
    """Each source's reward, in the mix's order."""


class RewardMix:
    """The weighted sum of several sources' rewards; a completion that any source cannot
    reward gets none (a part-reward would be a different scale)."""

    def __init__(self, sources: Sequence[Source], weights: Sequence[float] | None = None) -> None:
        if not sources:
            raise ConfigError("no reward: give a reward model and/or a judge")
        if weights is None:
            weights = [1.0] * len(sources)
        if len(weights) != len(sources):
            raise ConfigError(f"{len(weights)} weight(s) for {len(sources)} reward(s)")
        if not all(math.isfinite(w) for w in weights):
            raise ConfigError("reward weights must be finite numbers")
        self.sources = list(sources)
        self.weights = [float(w) for w in weights]
        self.needs_reference = any(isinstance(s, ReferenceReward) for s in sources)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.sources]

    async def one(self, query: Query) -> Rewarded:
        """The mix's reward of one completion."""
        results: list[float | BaseException]
        if len(self.sources) == 1:  # no task to gather: a server rewards thousands a second
            try:
                results = [await self.sources[0](query)]
            except Ungraded as e:
                results = [e]
        else:
            results = await asyncio.gather(
                *(source(query) for source in self.sources), return_exceptions=True
            )
        for r in results:  # a source that cannot be asked stops the caller
            if isinstance(r, BaseException) and not isinstance(r, Ungraded):
                raise r
        parts = tuple(float(r) if isinstance(r, int | float) else None for r in results)
        several = len(self.sources) > 1  # then each reason names its source
        missing = [
            f"{s.name}: {r}" if several else str(r)
            for s, r in zip(self.sources, results, strict=True)
            if isinstance(r, Ungraded)
        ]
        if missing:
            return Rewarded(None, "; ".join(missing), parts)
        total = sum(w * (r or 0.0) for w, r in zip(self.weights, parts, strict=True))
        if not math.isfinite(total):
            return Rewarded(None, f"the reward is {total}", parts)
        return Rewarded(total, None, parts)

    async def many(self, queries: Sequence[Query]) -> list[Rewarded]:
        """Rewards of many completions, asked concurrently (a reward model batches them)."""
        return list(await asyncio.gather(*(self.one(q) for q in queries)))


def trl_messages(value: Any) -> list[Message]:
    """A TRL prompt (text, or a conversation of role/content dicts) as messages."""
    if isinstance(value, str):
        return [Message(role="user", content=value)]
    try:
        return [Message(role=m["role"], content=m["content"]) for m in value]
    except (KeyError, TypeError, ValueError) as e:
        raise InputError(
            f"a prompt is neither text nor a conversation of role/content turns: {value!r:.200}"
        ) from e


def trl_text(completion: Any) -> str:
    """A TRL completion (text, or the assistant turns of a conversation) as text."""
    if isinstance(completion, str):
        return completion
    return "".join(m["content"] for m in completion if m.get("role") == "assistant")
