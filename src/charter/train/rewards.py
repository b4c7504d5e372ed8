"""Rewards of ``charter train rl`` that can leave a completion without one, counted.

- ``JudgeReward``: charter's own judge, direct RLAIF (Lee et al. 2023): each completion graded
  under a rubric with ``charter score``'s machinery (``charter.rewards.RubricReward``), the
  reward the expected score sum(s·P(s)) where the judge gives log-probabilities, else its
  parsed score (``--reward-judge``);
- ``RemoteReward``: the rewards of a running ``charter serve`` (``--reward URL``), whatever it
  mixes (reward models, a judge).

A completion with no reward gets None (TRL leaves it out of the mean), and is counted: a
generation batch the reward, as the run's only one, gives none of stops the run, and the share
left ungraded is the run's to report and bound (``--max-ungraded``). Each process of a
multi-process run rewards its own completions; the trainer counts the batch once it has
gathered every process's (``JudgedGRPOTrainer``), so every process counts the same. TRL awaits
these callables on its own long-lived event loop, so one ``Model`` (its request limit, retries
and cache) serves the whole run.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from charter.errors import BackendError, UngradedError
from charter.integrations.client import (
    answer,
    body,
    by_conversation,
    headers,
    reference_of,
    server_url,
)
from charter.judges.grading import ScoreConfig
from charter.model import Model
from charter.rewards import Query, RubricReward, Ungraded, trl_messages, trl_text
from charter.rubric import Rubric

log = logging.getLogger("charter")


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


class CountedReward:
    """A GRPO reward function that gives None where it has no reward, and counts them."""

    what = "the reward"
    """Who rewards, in messages (``the judge SPEC``)."""

    def __init__(self, *, sole: bool = False) -> None:
        """``sole``: this is the run's only reward, so a batch it rewards none of has no
        reward at all: an UngradedError, not a silent step."""
        self.sole = sole
        self.tally = JudgeTally()
        self.last_failure: str | None = None
        """Why the last completion left without a reward got none."""

    def count(self, rewards: Sequence[float | None]) -> None:
        """Count one generation batch's rewards (None: ungraded), every process's: the tally,
        and the stop when this, as the only reward, rewarded none of them, come out the same
        on each process."""
        ungraded = sum(r is None for r in rewards)
        self.tally.graded += len(rewards) - ungraded
        self.tally.ungraded += ungraded
        why = self.last_failure or "on another process"
        if self.sole and rewards and ungraded == len(rewards):
            raise UngradedError(
                f"{self.what} graded none of the {len(rewards)} completion(s) of a "
                f"generation batch, which would train on no reward: {why}. {self.advice()}"
            )
        if ungraded:
            log.warning(
                "%s could not grade %d of %d completion(s), left without its reward: %s",
                self.what,
                ungraded,
                len(rewards),
                why,
            )

    def advice(self) -> str:
        """Where to look when it rewards little."""
        return ""

    async def aclose(self) -> None:
        """Close what it opened (called on the trainer's event loop)."""


class JudgeReward(CountedReward):
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
        super().__init__(sole=sole)
        self.spec = spec
        self.rubric = rubric
        self.backend_options = backend_options or {}
        self.concurrency = concurrency
        self.timeout = timeout
        self.config = ScoreConfig(cot=cot, seed=seed, max_tokens=256)
        self.__name__ = f"judge:{spec}:{rubric.name}"
        self.what = f"the judge {spec}"
        self._source: RubricReward | None = None

    def _judge(self) -> RubricReward:
        if self._source is None:
            model = Model.from_spec(
                self.spec,
                backend_options=self.backend_options,
                concurrency=self.concurrency,
                timeout=self.timeout,
            )
            self._source = RubricReward(model, self.rubric, self.config)
        return self._source

    async def __call__(
        self, prompts: list[Any], completions: list[Any], **_: Any
    ) -> list[float | None]:
        """The rewards of this process's completions; :meth:`count` counts a generation
        batch once the trainer has every process's."""
        source = self._judge()
        self.last_failure = None
        return list(
            await asyncio.gather(
                *(self._one(source, p, c) for p, c in zip(prompts, completions, strict=True))
            )
        )

    def advice(self) -> str:
        return self._judge().advice("--rubric") + ", or choose another --reward-judge or --rubric"

    async def _one(self, source: RubricReward, prompt: Any, completion: Any) -> float | None:
        try:
            # a judge that cannot be asked at all raises: the run stops with why
            return await source(Query(trl_messages(prompt), trl_text(completion)))
        except Ungraded as e:
            self.last_failure = str(e)
            return None

    async def aclose(self) -> None:
        if self._source is not None:
            await self._source.judge.aclose()


class RemoteReward(CountedReward):
    """An async GRPO reward function: ``charter serve``'s reward of each completion. The
    completions of one prompt go in one request; the prompts' requests go together."""

    def __init__(
        self,
        url: str | None = None,
        *,
        token: str | None = None,
        timeout: float = 600.0,
        references: str | None = None,
        sole: bool = False,
    ) -> None:
        """``url``: the server (default $CHARTER_REWARD_URL); ``token``: its bearer token
        (default $CHARTER_REWARD_TOKEN); ``references``: the dataset column holding each
        prompt's reference answer, for a server judging against one."""
        super().__init__(sole=sole)
        self.url = server_url(url)
        self.token = token
        self.timeout = timeout
        self.references = references
        self.__name__ = f"charter-serve:{self.url}"
        self.what = f"charter serve at {self.url}"

    async def __call__(
        self, prompts: Sequence[Any], completions: Sequence[Any], **columns: Any
    ) -> list[float | None]:
        column = columns.get(self.references) if self.references else None
        refs = [reference_of(v) for v in column] if column is not None else [None] * len(prompts)
        convs = [trl_messages(p) for p in prompts]
        rewards: list[float | None] = [None] * len(completions)
        self.last_failure = None
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        async with aiohttp.ClientSession(timeout=timeout) as session:

            async def ask(indices: list[int]) -> None:
                first = indices[0]
                payload = body(
                    [m.model_dump() for m in convs[first]],
                    [trl_text(completions[i]) for i in indices],
                    refs[first],
                )
                try:
                    async with session.post(
                        f"{self.url}/v1/rewards", json=payload, headers=headers(self.token)
                    ) as r:
                        got = answer(r.status, await r.text(), self.url)
                except (aiohttp.ClientError, TimeoutError) as e:
                    raise BackendError(f"cannot reach charter serve at {self.url}: {e}") from e
                for i, value in zip(indices, got, strict=True):
                    rewards[i] = value

            await asyncio.gather(*(ask(ix) for ix in by_conversation(convs, refs)))
        if None in rewards:
            self.last_failure = "the server's /metrics and log say why"
        return rewards

    def advice(self) -> str:
        return f"See {self.url}/metrics and the server's log"
