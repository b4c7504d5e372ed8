"""Options of ``charter train sft|reward|dpo|rl``: CLI flags and recipe keys, declared once.

These are charter's own few (data, model, labels, the usual knobs); every other TRL option
comes from ``--config FILE.yaml`` (parsed by TRL's ``TrlParser`` into TRL's config classes)
or from extra ``--name value`` arguments (``trl:`` in a recipe), which override the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from charter.config import InputPath, ModelSpec

Method = Literal["sft", "reward", "dpo", "rl"]


class TrainOptions(BaseModel):
    """What every ``charter train`` command takes."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    method: Method
    """The trainer (each command's options fix it)."""
    input: InputPath
    """Training data: a JSONL/Parquet file, a dataset folder or charter output."""
    output: Path
    """Folder for the trained model (an HF folder with its tokenizer) and its checkpoints."""
    model: ModelSpec
    """Starting model: smollm2, hf/PATH or a local model folder."""
    config: Path | None = None
    """TRL config YAML (keys of TRL's config for this trainer and of ModelConfig)."""
    lora: bool = False
    """Train a LoRA adapter (peft) and merge it into the saved model."""
    max_steps: int | None = Field(default=None, ge=1)
    """Optimizer steps (overrides --epochs)."""
    epochs: float | None = Field(default=None, gt=0)
    """Passes over the data (TRL's default: 3; on a CPU 1 for rl)."""
    learning_rate: float | None = Field(default=None, gt=0)
    """Learning rate (TRL's default for the trainer otherwise)."""
    batch_size: int | None = Field(default=None, ge=1)
    """Examples per device per step."""
    seed: int = 42
    """Seed of the run (data order, initialisation of new heads)."""
    save_steps: int = Field(default=50, ge=1)
    """Steps between checkpoints: a killed run resumes from the last one."""
    force: bool = False
    """Train again into a folder that holds a model trained with other settings."""
    trl: list[str] = Field(default_factory=list)
    """Any other TRL option as ``--name value`` arguments (a mapping in a recipe)."""

    @field_validator("input", mode="before")
    @classmethod
    def _path_as_text(cls, value: object) -> object:
        return str(value) if isinstance(value, Path) else value

    @field_validator("trl", mode="before")
    @classmethod
    def _mapping_as_args(cls, value: object) -> object:
        if isinstance(value, dict):
            args: list[str] = []
            for key, item in value.items():
                args += [f"--{key}", _text(item)]
            return args
        return value


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | dict):
        import json

        return json.dumps(value)
    return str(value)


class SFTOptions(TrainOptions):
    """``charter train sft``: supervised fine-tuning on the answers (revise output)."""

    method: Literal["sft"] = "sft"
    """The trainer."""


class PreferenceOptions(TrainOptions):
    """Options of the trainers that learn from preference pairs."""

    labels: Literal["soft", "hard", "human"] = "soft"
    """soft: p_chosen is the target; hard: chosen/rejected only (TRL's loss); human: the
    rows' human_choice."""


class RewardOptions(PreferenceOptions):
    """``charter train reward``: a reward model (Bradley–Terry on soft labels)."""

    method: Literal["reward"] = "reward"
    """The trainer."""
    principle_conditioned: bool = False
    """Train on each principle's verdict (a label file's per_principle), with the principle's
    text in the model's input: a reward model that follows the principle it is given
    (rm/DIR then scores under label's --constitution)."""
    constitution: str | None = None
    """With --principle-conditioned: the constitution the labels were judged under, built-in
    name or file (default: the built-in the label records name)."""


class DPOOptions(PreferenceOptions):
    """``charter train dpo``: DPO (soft labels: conservative DPO, ε = 1 − p_chosen)."""

    method: Literal["dpo"] = "dpo"
    """The trainer."""
    beta: float | None = Field(default=None, gt=0)
    """Strength of the pull toward the reference model (TRL's default: 0.1)."""


MAX_UNGRADED = 0.1
"""The share of completions --reward-judge may leave ungraded, by default."""


class RLOptions(TrainOptions):
    """``charter train rl``: GRPO against a reward model and/or charter's judge."""

    method: Literal["rl"] = "rl"
    """The trainer."""
    reward: list[ModelSpec] = Field(default_factory=list)
    """Reward model(s) as rm/DIR (a folder written by charter train reward), or a charter
    serve's address, http://HOST:PORT (its rewards; token: $CHARTER_REWARD_TOKEN); comma
    list."""
    reward_judge: ModelSpec | None = None
    """A judge model spec: reward = its expected score under --rubric (direct RLAIF)."""
    rubric: str = "harmlessness"
    """Rubric of --reward-judge: built-in name or rubric file."""
    reward_weights: list[float] | None = None
    """Weight of each reward (the reward models first, then the judge); comma list."""
    base_url: str | None = None
    """Server URL of --reward-judge (else $OPENAI_BASE_URL)."""
    concurrency: int = Field(default=8, ge=1)
    """Judge requests in flight."""
    num_generations: int | None = Field(default=None, ge=2)
    """Completions per prompt, compared with each other (default: 4 on CPU, TRL's 8 on GPU)."""
    max_completion_length: int | None = Field(default=None, ge=1)
    """Tokens per completion (default: 64 on CPU, TRL's 512 on GPU)."""
    beta: float | None = Field(default=None, ge=0)
    """KL penalty toward the starting model (TRL's default: 0, none)."""
    max_ungraded: float | None = Field(default=None, ge=0, le=1, allow_inf_nan=False)
    """Largest share of completions --reward-judge (or a charter serve --reward URL) may
    leave ungraded (no reward) before the run is an error (default 0.1); a generation batch
    it grades none of, with no other reward beside it, stops the run at once."""

    @property
    def max_ungraded_share(self) -> float:
        """--max-ungraded, or its default."""
        return MAX_UNGRADED if self.max_ungraded is None else self.max_ungraded

    @field_validator("reward", mode="before")
    @classmethod
    def _comma_list(cls, value: object) -> object:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    @field_validator("reward_weights", mode="before")
    @classmethod
    def _weights(cls, value: object) -> object:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value
