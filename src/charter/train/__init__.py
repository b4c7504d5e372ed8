"""Training on TRL: SFT, a reward model on soft labels, soft DPO and GRPO (``charter train``).

Needs the ``train`` extra (``pip install 'charter[train]'``: trl, peft). Import
:func:`charter.train.run.train` (or call ``charter train`` on the command line); importing
this package loads neither torch nor TRL.
"""

from __future__ import annotations

from charter.train.options import (
    DPOOptions,
    RewardOptions,
    RLOptions,
    SFTOptions,
    TrainOptions,
)

__all__ = ["DPOOptions", "RLOptions", "RewardOptions", "SFTOptions", "TrainOptions"]
