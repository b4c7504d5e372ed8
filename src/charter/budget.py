"""``--max-cost``: a run stops before its spend would pass a cap.

Before a request is sent, its worst case is reserved: its prompt tokens estimated from its
characters (``estimate_prompt_tokens``) plus ``max_tokens`` of output, at its model's prices
(batch prices for a model whose requests go through a batch API). When it answers, the
reservation is released and what it cost counted instead. A request whose reservation would
take spent + reserved past the cap waits for the requests in flight to answer; one that would
pass it with none in flight is not sent: ``BudgetExceeded`` stops the run once the
records in flight have finished (their requests were reserved within the cap, so what they
cost is counted and their records are kept); a re-run resumes.

The batch runner reserves a whole batch at submission (``reserve``), and settles it when the
results come (``settle``)."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from charter.errors import CharterError
from charter.types import Message

CHARS_PER_TOKEN = 3
"""Prompt tokens are estimated as one per 3 characters, plus MESSAGE_TOKENS per message.
English runs about 4 characters a token in OpenAI's and Anthropic's tokenizers, so the
estimate is high on purpose: a reservation is a worst case."""
MESSAGE_TOKENS = 4
"""Tokens a chat template adds around each message (role markers), at most."""


def estimate_prompt_tokens(messages: Sequence[Message]) -> int:
    """A generous estimate of a prompt's tokens (see CHARS_PER_TOKEN)."""
    chars = sum(len(m.content) for m in messages)
    return math.ceil(chars / CHARS_PER_TOKEN) + MESSAGE_TOKENS * len(messages)


class BudgetExceeded(CharterError):
    """A request would have passed --max-cost: the run stops (resumable, like Ctrl-C)."""


@dataclass
class Budget:
    """Dollars a run may spend (``cap``), what it has spent and what requests in flight
    hold. One per run, shared by its models; asyncio code on one thread, so no lock."""

    cap: float
    spent: float = 0.0
    """Dollars spent: before this run (``earlier``) and by the requests answered in it."""
    reserved: float = 0.0
    """Dollars held by requests in flight (their worst case)."""
    earlier: float = 0.0
    """Of ``spent``, what earlier runs onto the same output spent (from its ledger)."""
    output: Path | None = None
    """The output the budget is for (named when the run stops)."""
    by_model: dict[str, float] = field(default_factory=dict)
    """Dollars spent in this run, by model."""
    holding: int = 0
    """Reservations held (requests, or batches, in flight)."""
    _released: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    def __post_init__(self) -> None:
        self.spent = max(self.spent, self.earlier)

    def reserve(self, cost: float) -> bool:
        """Hold ``cost`` dollars for requests about to be sent: True if the cap allows it
        (then ``settle`` or ``release`` it later), False (nothing held) if it would pass."""
        if self.spent + self.reserved + cost > self.cap + 1e-12:
            return False
        self.reserved += cost
        self.holding += 1
        return True

    async def acquire(self, cost: float) -> bool:
        """``reserve``, waiting while requests in flight hold what would let ``cost`` fit
        (their worst cases are released as they answer, usually for less); False only when
        it would pass the cap with nothing in flight."""
        while not self.reserve(cost):
            if self.holding == 0:
                return False
            self._released.clear()
            await self._released.wait()
        return True

    def release(self, cost: float) -> None:
        """Give back a reservation (requests answered, failed or cancelled)."""
        self.holding = max(self.holding - 1, 0)
        # with none held, none is: no rounding left over from adding and taking away
        self.reserved = max(self.reserved - cost, 0.0) if self.holding else 0.0
        self._released.set()

    def settle(self, reserved: float, cost: float, model: str = "") -> None:
        """Requests that held ``reserved`` answered and cost ``cost``."""
        self.release(reserved)
        self.spend(cost, model)

    def spend(self, cost: float, model: str = "") -> None:
        """Count dollars spent without a reservation."""
        self.spent += cost
        if model:
            self.by_model[model] = self.by_model.get(model, 0.0) + cost

    def refuse(self, model: str, cost: float) -> BudgetExceeded:
        """The error that stops the run: what was spent, the cap, how to go on."""
        where = f" on {self.output}" if self.output is not None else ""
        earlier = f" (${self.earlier:,.4f} of it by earlier runs)" if self.earlier else ""
        return BudgetExceeded(
            f"--max-cost ${self.cap:,.4f} reached: ${self.spent:,.4f} spent{where}{earlier}, "
            f"and the next {model} request could cost up to ${cost:,.4f}; records written so "
            "far are kept: re-run with a higher --max-cost to go on"
        )
