"""TRL trainers that learn from soft preference labels.

charter's label is a probability, ``p_chosen``, not a hard choice. TRL's ``RewardTrainer``
keeps only ``chosen``/``rejected``/``margin`` (other columns are dropped by
``remove_unused_columns`` and by its collator), and since TRL 1.x its ``sigmoid`` DPO loss
ignores ``label_smoothing``. These subclasses carry ``p_chosen`` from the dataset to the loss:

- reward: Bradley–Terry on soft targets,
  ``-[p·logσ(r_c − r_r) + (1 − p)·logσ(r_r − r_c)]``; with p = 1 it is TRL's own loss.
- DPO: conservative DPO (cDPO) with a per-example ε = 1 − p,
  ``-[p·logσ(βΔ) + (1 − p)·logσ(−βΔ)]``, computed by TRL's ``robust`` loss fed the transformed
  smoothing ``ε' = −ε / (1 − 2ε)`` (see :func:`robust_smoothing`), so every other part of
  TRL's DPO (reference model, f-divergences, metrics) is TRL's.

``JudgedGRPOTrainer`` is TRL's GRPO with charter's judge counted over every process.

torch and TRL are imported with this module: import it only when training.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from trl import DPOTrainer, GRPOTrainer, RewardTrainer
from trl.trainer.dpo_trainer import DataCollatorForPreference as DPOCollator
from trl.trainer.reward_trainer import DataCollatorForPreference as RewardCollator

from charter.errors import ConfigError, InputError
from charter.train.rewards import CountedReward

P_COLUMN = "p_chosen"
"""Dataset column holding the probability that ``chosen`` is the better answer."""

NEAR_HALF = 1e-6
"""ε is kept this far below 0.5: the robust form divides by 1 − 2ε (a pair labelled exactly
0.5 then costs the same as cDPO's to within float precision)."""


def soft_bt_loss(margin: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Per-pair soft Bradley–Terry loss; ``margin`` = r_chosen − r_rejected."""
    return -(p * F.logsigmoid(margin) + (1 - p) * F.logsigmoid(-margin))


def cdpo_loss(delta: torch.Tensor, p: torch.Tensor, beta: float) -> torch.Tensor:
    """Per-pair conservative DPO loss; ``delta`` = chosen minus rejected log-ratio."""
    return -(p * F.logsigmoid(beta * delta) + (1 - p) * F.logsigmoid(-beta * delta))


def robust_smoothing(p: torch.Tensor) -> torch.Tensor:
    """The ``label_smoothing`` that turns TRL's robust DPO loss into cDPO with ε = 1 − p.

    TRL's robust loss is ``[−(1 − s)·logσ(βΔ) + s·logσ(−βΔ)] / (1 − 2s)``. With
    ``s = −ε / (1 − 2ε)``: 1 − 2s = 1 / (1 − 2ε) and 1 − s = (1 − ε) / (1 − 2ε), so the loss
    is ``−(1 − ε)·logσ(βΔ) − ε·logσ(−βΔ)``: cDPO. p below 0.5 is read as its mirror (the
    pair's chosen/rejected are then the wrong way round, which the data step prevents)."""
    eps = (1 - p).clamp(0.0, 0.5 - NEAR_HALF)
    return -eps / (1 - 2 * eps)


def _missing(trainer: str) -> InputError:
    return InputError(
        f"{trainer}: the batch has no {P_COLUMN!r}: soft labels need charter label output "
        "(or a merged file); pass --labels hard to train on chosen/rejected alone"
    )


def _pad_id(tokenizer: Any) -> int:
    pad: int = tokenizer.pad_token_id
    return pad if pad is not None else int(tokenizer.eos_token_id)


class _KeepP:
    """Collator mixin: the parent's batch plus ``p_chosen`` as a float tensor."""

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch: dict[str, Any] = super().torch_call(examples)  # type: ignore[misc]
        if all(P_COLUMN in e for e in examples):
            batch[P_COLUMN] = torch.tensor([float(e[P_COLUMN]) for e in examples])
        return batch


class SoftRewardCollator(_KeepP, RewardCollator):  # type: ignore[misc]
    """TRL's reward collator, keeping ``p_chosen``."""


class SoftDPOCollator(_KeepP, DPOCollator):  # type: ignore[misc]
    """TRL's DPO collator, keeping ``p_chosen``."""


class SoftRewardTrainer(RewardTrainer):  # type: ignore[misc]
    """``RewardTrainer`` whose loss is Bradley–Terry on ``p_chosen`` (``soft=True``) or TRL's
    own (``soft=False``, p_chosen ignored)."""

    _signature_columns: list[str] | None

    def __init__(self, *args: Any, soft: bool = True, **kwargs: Any) -> None:
        self.soft = soft
        if soft and kwargs.get("data_collator") is None:
            kwargs["data_collator"] = SoftRewardCollator(
                pad_token_id=_pad_id(kwargs["processing_class"]),
                pad_to_multiple_of=kwargs["args"].pad_to_multiple_of,
            )
        super().__init__(*args, **kwargs)

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        columns = self._signature_columns or []
        if self.soft and P_COLUMN not in columns:
            self._signature_columns = [*columns, P_COLUMN]

    def compute_loss(
        self,
        model: Any,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        p = inputs.pop(P_COLUMN, None)
        if not self.soft:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if p is None:
            raise _missing("reward training")
        # TRL's forward pass and metrics; its hard loss is replaced by the soft one.
        _, outputs = super().compute_loss(model, inputs, True, num_items_in_batch)
        chosen, rejected = torch.chunk(outputs.logits.squeeze(-1), chunks=2)
        loss = soft_bt_loss(chosen - rejected, p.to(chosen.dtype)).mean()
        if self.args.center_rewards_coefficient is not None:
            loss = loss + self.args.center_rewards_coefficient * torch.mean(
                (chosen + rejected) ** 2
            )
        return (loss, outputs) if return_outputs else loss


class SoftDPOTrainer(DPOTrainer):  # type: ignore[misc]
    """``DPOTrainer`` with per-example soft targets (cDPO, ε = 1 − p_chosen) through TRL's
    ``robust`` loss; ``soft=False`` is TRL's DPO as configured."""

    _signature_columns: list[str] | None
    label_smoothing: Any

    def __init__(self, *args: Any, soft: bool = True, **kwargs: Any) -> None:
        self.soft = soft
        config = kwargs["args"]
        if soft:
            if list(config.loss_type) != ["robust"]:
                raise ConfigError(
                    f"soft labels train DPO through TRL's robust loss; for loss_type "
                    f"{','.join(config.loss_type)} pass --labels hard"
                )
            if config.label_smoothing:
                raise ConfigError(
                    "soft labels set the smoothing of each pair (1 - p_chosen): drop "
                    "label_smoothing, or pass --labels hard to smooth every pair alike"
                )
            if kwargs.get("data_collator") is None:
                kwargs["data_collator"] = SoftDPOCollator(
                    pad_token_id=_pad_id(kwargs["processing_class"]),
                    max_length=config.max_length,
                    truncation_mode=config.truncation_mode,
                    pad_to_multiple_of=config.pad_to_multiple_of,
                )
        super().__init__(*args, **kwargs)

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        columns = self._signature_columns or []
        if self.soft and P_COLUMN not in columns:
            self._signature_columns = [*columns, P_COLUMN]

    def _compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool) -> Any:
        p = inputs.pop(P_COLUMN, None)
        if not self.soft:
            return super()._compute_loss(model, inputs, return_outputs)
        if p is None:
            raise _missing("DPO training")
        scalar = self.label_smoothing
        self.label_smoothing = robust_smoothing(p.float()).to(self.accelerator.device)
        try:
            return super()._compute_loss(model, inputs, return_outputs)
        finally:
            self.label_smoothing = scalar


class JudgedGRPOTrainer(GRPOTrainer):  # type: ignore[misc]
    """``GRPOTrainer`` that counts what charter's judge graded in each generation batch once
    TRL has gathered every process's rewards: each process grades only its own completions,
    and counted there the tally (written by the first process) would hold its share alone,
    and a process whose completions all went ungraded would stop the run alone."""

    def __init__(self, *args: Any, judge: CountedReward | None = None, **kwargs: Any) -> None:
        self.judge = judge
        super().__init__(*args, **kwargs)

    def _calculate_rewards(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        rewards: torch.Tensor = super()._calculate_rewards(*args, **kwargs)  # every process's
        if self.judge is not None:
            column = self.reward_funcs.index(self.judge)
            values = rewards[:, column].tolist()
            self.judge.count([None if math.isnan(v) else v for v in values])
        return rewards
