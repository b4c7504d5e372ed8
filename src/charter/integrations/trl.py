"""Reward functions for TRL's ``GRPOTrainer(reward_funcs=[...])``, for your own GRPO scripts.

- ``RemoteReward(url)``: the rewards of a running ``charter serve`` (its reward models, judge
  and weights), what ``charter train rl --reward URL`` uses;
- ``JudgeReward(spec, rubric)``: a judge's expected rubric score, asked from this process,
  what ``charter train rl --reward-judge`` uses.

A completion the server or judge cannot reward gets None, which TRL leaves out of the mean;
each function counts them (``tally``). Prompts and completions may be text or conversations.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import aiohttp

from charter.errors import BackendError, UngradedError
from charter.integrations.client import answer, body, headers, server_url
from charter.rewards import trl_messages, trl_text
from charter.train.rewards import JudgeReward, JudgeTally

__all__ = ["JudgeReward", "RemoteReward"]


class RemoteReward:
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
        prompt's reference answer, for a server judging against one; ``sole``: this is the
        run's only reward, so a batch it rewards none of stops the run."""
        self.url = server_url(url)
        self.token = token
        self.timeout = timeout
        self.references = references
        self.sole = sole
        self.tally = JudgeTally()
        self.__name__ = f"charter-serve:{self.url}"

    async def __call__(
        self, prompts: Sequence[Any], completions: Sequence[Any], **columns: Any
    ) -> list[float | None]:
        refs = columns.get(self.references) if self.references else None
        groups: dict[tuple[str, ...], list[int]] = {}
        convs = [trl_messages(p) for p in prompts]
        for i, conv in enumerate(convs):
            ref = str(refs[i]) if refs is not None else ""
            key = (ref, *(f"{m.role}\0{m.content}" for m in conv))
            groups.setdefault(key, []).append(i)
        rewards: list[float | None] = [None] * len(completions)
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        async with aiohttp.ClientSession(timeout=timeout) as session:

            async def ask(indices: list[int]) -> None:
                first = indices[0]
                payload = body(
                    [m.model_dump() for m in convs[first]],
                    [trl_text(completions[i]) for i in indices],
                    str(refs[first]) if refs is not None else None,
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

            await asyncio.gather(*(ask(ix) for ix in groups.values()))
        ungraded = rewards.count(None)
        self.tally.graded += len(rewards) - ungraded
        self.tally.ungraded += ungraded
        if self.sole and rewards and ungraded == len(rewards):
            raise UngradedError(
                f"charter serve at {self.url} rewarded none of the {len(rewards)} "
                "completion(s) of a generation batch, which would train on no reward; its "
                "/metrics and log say why"
            )
        return rewards
