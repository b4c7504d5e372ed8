"""Reward functions for TRL's ``GRPOTrainer(reward_funcs=[...])``, for your own GRPO scripts.

- ``RemoteReward(url)``: the rewards of a running ``charter serve`` (its reward models, judge
  and weights), what ``charter train rl --reward URL`` uses;
- ``JudgeReward(spec, rubric)``: a judge's expected rubric score, asked from this process,
  what ``charter train rl --reward-judge`` uses.

A completion the server or judge cannot reward gets None, which TRL leaves out of the mean
(``charter train rl`` counts them, and stops a run that has none). Prompts and completions may
be text or conversations.
"""

from __future__ import annotations

from charter.train.rewards import JudgeReward, RemoteReward

__all__ = ["JudgeReward", "RemoteReward"]
