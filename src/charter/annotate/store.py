"""The annotator's state: the queue, the labels that stand, and which pair is on whose
screen. The HTTP layer (``server.py``) only translates requests into these calls.

Methods are synchronous: on the server's one event loop each runs whole, so concurrent
requests never interleave inside one, and a label is on disk (flushed and fsynced) before its
method returns. The fsync holds the loop for a moment per label, which at human speed is
nothing.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from charter.annotate.records import (
    Annotation,
    AnnotationEvent,
    HumanChoice,
    QueueItem,
    Side,
    fold,
    is_annotation_log,
    read_events,
)
from charter.errors import ConfigError, InputError, Refused
from charter.io import JsonlWriter, read_record

log = logging.getLogger("charter")

LEASE_SECONDS = 30 * 60
"""A pair shown to an annotator is held for them this long: nobody else is asked it (when it
needs no more labels than its holders will give) until they label it or the hold lapses."""


def left_side(seed: int, annotator: str, pair_id: str) -> Side:
    """Which answer ``annotator`` sees on the left of ``pair_id``: fixed per (seed, annotator,
    pair), so a reload shows the same layout and position bias averages out across pairs."""
    digest = hashlib.sha256(f"{seed}\0{annotator}\0{pair_id}".encode()).digest()
    return "a" if digest[0] % 2 == 0 else "b"


def read_queue(path: Path) -> list[QueueItem]:
    """The queue's items in order; a bad line or a repeated id stops with file and line."""
    if not path.is_file():
        raise InputError(f"queue not found: {path}")
    items: list[QueueItem] = []
    seen: set[str] = set()
    with path.open("rb") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            item = read_record(line, f"{path}:{lineno}", QueueItem, "queue item")
            if item.id in seen:
                raise InputError(f"{path}:{lineno}: id {item.id!r} is in the queue twice")
            seen.add(item.id)
            items.append(item)
    if not items:
        raise InputError(f"{path}: the queue is empty")
    return items


@dataclass
class Lease:
    """A pair on an annotator's screen."""

    pair_id: str
    since: float
    """``time.time()`` when it was shown."""
    left: Side


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Store:
    """The queue and its labels. Opening it locks ``output`` (a second server on the same
    file refuses) and reads the labels already there, so a restart resumes everyone."""

    def __init__(
        self, items: list[QueueItem], output: Path, *, per_pair: int = 1, seed: int = 0
    ) -> None:
        self.items = items
        self.per_pair = per_pair
        self.seed = seed
        self._by_id = {item.id: item for item in items}
        self._standing: dict[tuple[str, str], Annotation] = {}
        self._stacks: dict[str, list[str]] = {}
        """Annotator -> ids of their standing labels, oldest first (undo takes the last)."""
        self._counts: dict[str, int] = dict.fromkeys(self._by_id, 0)
        """Pair -> judgements (not skips) that stand."""
        self.leases: dict[str, Lease] = {}
        """Annotator -> the pair on their screen."""
        if output.is_dir():
            raise ConfigError(f"--output {output} is a folder: name a file for the labels")
        if output.exists() and output.stat().st_size and not is_annotation_log(output):
            raise ConfigError(
                f"--output {output} is not an annotation log (charter annotate output): "
                "choose another file"
            )
        # The writer first: it locks the file and drops a line a killed server left half
        # written, so what is read next is exactly what later appends follow.
        self._writer = JsonlWriter(output, exclusive=True)
        try:
            self._load(output)
        except BaseException:
            self._writer.close()
            raise

    def _load(self, output: Path) -> None:
        unknown = 0
        for a in fold(read_events(output)):
            if a.id in self._by_id:
                self._stand(a)
            else:
                unknown += 1
        if unknown:
            log.warning(
                "%s: %d label(s) name pairs not in this queue; kept in the file, not counted",
                output,
                unknown,
            )

    def close(self) -> None:
        self._writer.close()

    # -- state --------------------------------------------------------------------------
    def _stand(self, a: Annotation) -> None:
        self._standing[(a.id, a.annotator)] = a
        self._stacks.setdefault(a.annotator, []).append(a.id)
        if a.choice != "skip":
            self._counts[a.id] += 1

    def _fall(self, pair_id: str, annotator: str) -> None:
        a = self._standing.pop((pair_id, annotator))
        self._stacks[annotator].remove(pair_id)
        if a.choice != "skip":
            self._counts[pair_id] -= 1

    @staticmethod
    def _live(lease: Lease, now: float) -> bool:
        return now - lease.since < LEASE_SECONDS

    def _held(self, now: float, but: str) -> Counter[str]:
        """Pair -> live holds on it by annotators other than ``but``."""
        return Counter(
            lease.pair_id
            for name, lease in self.leases.items()
            if name != but and self._live(lease, now)
        )

    def _open_for(self, pair_id: str, annotator: str, held: Counter[str]) -> bool:
        """The pair still wants a label that nobody else holds a place for, and ``annotator``
        has not labelled (or skipped) it."""
        if (pair_id, annotator) in self._standing:
            return False
        return self.per_pair - self._counts[pair_id] - held[pair_id] > 0

    def _write(self, event: AnnotationEvent) -> None:
        self._writer.write(event)
        self._writer.sync()

    # -- what the API does ----------------------------------------------------------------
    def next_for(self, annotator: str) -> dict[str, Any] | None:
        """The pair on ``annotator``'s screen, else the first pair open to them (held for
        them from now on); None when nothing is. A lapsed hold is kept only while its pair
        is still open."""
        now = time.time()
        held = self._held(now, but=annotator)
        lease = self.leases.get(annotator)
        if lease is not None and not (
            self._live(lease, now) and (lease.pair_id, annotator) not in self._standing
        ):
            if self._open_for(lease.pair_id, annotator, held):
                lease.since = now  # back from a break: the same pair, held again
            else:
                lease = None
        if lease is None:
            found = next((i for i in self.items if self._open_for(i.id, annotator, held)), None)
            if found is None:
                self.leases.pop(annotator, None)
                return None
            lease = Lease(found.id, now, left_side(self.seed, annotator, found.id))
            self.leases[annotator] = lease
        item = self._by_id[lease.pair_id]
        return {
            "id": item.id,
            "messages": [m.model_dump() for m in item.messages],
            "response_a": item.response_a,
            "response_b": item.response_b,
            "question": item.question,
            "left": lease.left,
        }

    def label(
        self,
        pair_id: str,
        annotator: str,
        choice: HumanChoice,
        left: Side | None = None,
        seconds: float | None = None,
    ) -> AnnotationEvent:
        """Write one label. A judgement is refused once the pair has its K, or when its
        places are held for others and not for ``annotator``. ``left``/``seconds``: what the
        page says it showed, kept when the server has no record of it (a page left open
        across a restart)."""
        item = self._by_id.get(pair_id)
        if item is None:
            raise Refused(404, f"no pair {pair_id!r} in the queue")
        if (pair_id, annotator) in self._standing:
            raise Refused(409, f"{annotator} has already labelled {pair_id!r}")
        now = time.time()
        lease = self.leases.get(annotator)
        shown = lease if lease is not None and lease.pair_id == pair_id else None
        if choice != "skip":
            full = self._counts[pair_id] >= self.per_pair
            taken = (shown is None or not self._live(shown, now)) and not self._open_for(
                pair_id, annotator, self._held(now, but=annotator)
            )
            if full or taken:
                if shown is not None:
                    del self.leases[annotator]
                raise Refused(
                    409,
                    f"{pair_id!r} has the {self.per_pair} label(s) it needs, or others are "
                    "labelling it: ask /api/next for another pair",
                )
        event = AnnotationEvent(
            event="label",
            id=pair_id,
            annotator=annotator,
            choice=choice,
            left=shown.left if shown else left,
            routed_by=item.routed_by,
            time=_now(),
            seconds=round(now - shown.since, 3) if shown else seconds,
        )
        self._write(event)
        self._stand(
            Annotation(
                pair_id, annotator, choice, event.left, item.routed_by, event.seconds, event.time
            )
        )
        if shown is not None:
            del self.leases[annotator]
        return event

    def undo(self, annotator: str) -> str:
        """Take back ``annotator``'s latest label. The pair comes back to them next, with the
        same layout, unless others have filled or hold its places meanwhile."""
        stack = self._stacks.get(annotator)
        if not stack:
            raise Refused(409, f"{annotator} has no label to undo")
        pair_id = stack[-1]
        self._write(AnnotationEvent(event="undo", id=pair_id, annotator=annotator, time=_now()))
        self._fall(pair_id, annotator)
        now = time.time()
        if self._open_for(pair_id, annotator, self._held(now, but=annotator)):
            self.leases[annotator] = Lease(pair_id, now, left_side(self.seed, annotator, pair_id))
        else:
            self.leases.pop(annotator, None)
        return pair_id

    def progress(self, annotator: str | None = None) -> dict[str, Any]:
        people = {}
        for name, ids in sorted(self._stacks.items()):
            skipped = sum(self._standing[(i, name)].choice == "skip" for i in ids)
            people[name] = {"labelled": len(ids) - skipped, "skipped": skipped}
        out: dict[str, Any] = {
            "pairs": len(self.items),
            "per_pair": self.per_pair,
            "labels": sum(self._counts.values()),
            "labels_wanted": len(self.items) * self.per_pair,
            "pairs_complete": sum(c >= self.per_pair for c in self._counts.values()),
            "annotators": people,
        }
        if annotator is not None:
            held = self._held(time.time(), but=annotator)
            out["you"] = {
                "done": len(self._stacks.get(annotator, [])),
                "left": sum(self._open_for(i.id, annotator, held) for i in self.items),
            }
        return out
