"""Seeds derived from a run's base seed and a record's id, so that results do not depend on
concurrency or on the order in which work finishes."""

from __future__ import annotations

import hashlib
import json
import random


def sample_seed(seed: int, record_id: str, index: int) -> int:
    """The seed of one sample (a server's ``seed``): fixed by the base seed, the record id and
    the sample's index."""
    digest = hashlib.sha256(f"{seed}:{record_id}:{index}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def derive_rng(seed: int, *parts: object) -> random.Random:
    """A random stream fixed by the seed and the given keys (e.g. a record id)."""
    material = json.dumps([seed, *[str(p) for p in parts]]).encode()
    return random.Random(int.from_bytes(hashlib.sha256(material).digest()[:8], "big"))
