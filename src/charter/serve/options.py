"""Options of ``charter serve``, apart from the server so that the command line can declare
its flags without loading aiohttp.web, torch or the judges on every start."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator, model_validator

from charter.config import JudgingChoices, ModelAccess, ModelSpec

SERVE_HELP = (
    "Serve rewards to RL engines over HTTP: OpenRLHF's remote reward model (POST "
    "/get_reward), charter's own JSON (POST /v1/rewards), verl and TRL through "
    "charter.integrations; /health and /metrics. Rewards from reward models (--reward "
    "rm/DIR), a judge's expected rubric score (--judge with --rubric) or P(completion better "
    "than a reference answer) (--judge with --constitution), weighted. See docs/serving.md."
)

JUDGING_UNUSED = ("min_confidence", "keep_inconsistent")
"""Judging choices that only decide which pairs a label file keeps: no reward reads them."""


class ServeOptions(ModelAccess, JudgingChoices):
    """``charter serve``: flags and ``charter.serve.build`` keywords."""

    reward: list[ModelSpec] = Field(default_factory=list)
    """Reward model(s) as rm/DIR (charter train reward output); comma list."""
    judge: ModelSpec | None = None
    """A judge: with --rubric, the reward is its expected score; with --constitution,
    P(completion better than the request's reference answer), both orders."""
    rubric: str | None = None
    """Rubric of --judge (built-in name or file): reward = expected score sum(s·P(s))."""
    constitution: str | None = None
    """Constitution of --judge (built-in name or file): reward = P(completion better than the
    reference answer each query brings), as charter label judges a pair."""
    reward_weights: list[float] | None = None
    """Weight of each reward (the reward models first, then the judge); comma list."""
    normalize_from: list[Path] = Field(default_factory=list)
    """charter score output of each --reward on sample answers (--judge rm/DIR): its rewards'
    mean and std normalise that model's reward to (r - mean) / std; comma list."""
    template: ModelSpec | None = None
    """The policy's chat template (smollm2, hf/DIR, a folder): OpenRLHF queries without
    'prompts' are split at its assistant marker, and rendered prompts read back into turns
    (default: the first --reward's)."""
    ungraded_reward: float | None = Field(default=None, allow_inf_nan=False)
    """Reward of a completion the judge cannot grade (counted in /metrics); without it such a
    request is answered with an error (502) naming the completion."""
    seed: int = 0
    """Seed of the judge's choices (principles, orders); each completion's derives from it."""
    host: str = "127.0.0.1"
    """Address to listen on. Anything but loopback needs a token (one is made if not given)."""
    port: int = Field(default=8766, ge=0, le=65535)
    """Port (0: any free port; the address is printed)."""
    token: str | None = None
    """Bearer token every reward request must carry (Authorization: Bearer TOKEN, or
    ?token=TOKEN in the URL for clients that cannot set a header, such as OpenRLHF)."""
    cache: Path | None = None
    """Request cache file for the judge's requests (default: none; completions rarely
    repeat)."""
    max_batch: int = Field(default=4096, ge=1)
    """Most completions one request may carry."""

    @field_validator("reward", "reward_weights", "normalize_from", mode="before")
    @classmethod
    def _comma_list(cls, value: object) -> object:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    @model_validator(mode="after")
    def _one_way_to_judge(self) -> ServeOptions:
        if self.judge is not None:
            if (self.rubric is None) == (self.constitution is None):
                raise ValueError(
                    "--judge needs --rubric (an expected score) or --constitution (better than "
                    "a reference answer), one of the two"
                )
            if self.judge.startswith("rm/"):
                raise ValueError(f"--judge {self.judge} is a reward model: pass it as --reward")
        elif self.rubric is not None or self.constitution is not None:
            raise ValueError("--rubric and --constitution are the --judge's: add --judge SPEC")
        if not self.reward and self.judge is None:
            raise ValueError("nothing to serve: give --reward rm/DIR and/or --judge SPEC")
        bad = [spec for spec in self.reward if not spec.startswith("rm/")]
        if bad:
            raise ValueError(f"--reward {bad[0]}: write a reward model as rm/DIR")
        n = len(self.reward) + (self.judge is not None)
        if self.reward_weights is not None and len(self.reward_weights) != n:
            raise ValueError(
                f"--reward-weights has {len(self.reward_weights)} value(s) for {n} reward(s)"
            )
        if len(self.normalize_from) > len(self.reward):
            raise ValueError(
                f"--normalize-from has {len(self.normalize_from)} file(s) for "
                f"{len(self.reward)} --reward model(s)"
            )
        return self
