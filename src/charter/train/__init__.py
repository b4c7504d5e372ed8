"""Training on TRL: SFT, a reward model on soft labels, soft DPO and GRPO (``charter train``).

Needs the ``train`` extra (``pip install 'charter[train]'``: trl, peft). ``train(options)``
runs one method (``charter train`` on the command line); importing this package loads
neither torch nor TRL, which are imported when training starts.
"""

from __future__ import annotations

from charter.train.options import (
    DPOOptions,
    RewardOptions,
    RLOptions,
    SFTOptions,
    TrainOptions,
)
from charter.train.run import TrainResult, train

__all__ = [
    "DPOOptions",
    "RLOptions",
    "RewardOptions",
    "SFTOptions",
    "TrainOptions",
    "TrainResult",
    "train",
]
