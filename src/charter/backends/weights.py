"""A cheap fingerprint of a local model folder's weights, for the request cache.

A folder name says nothing about the weights in it: training again into ``runs/rm`` must not
replay answers cached for the old model. The fingerprint goes into the cache key as the
backend's ``server``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

SAMPLE = 4096
"""Bytes read at the start, middle and end of each tensor to fingerprint the weights."""
WHOLE = 16 * 2**20
"""Files up to this size (configs, tokenizer, small weights) are hashed whole."""


def weights_fingerprint(folder: Path) -> str:
    """A hash that changes when different weights (or tokenizer, or config) are saved into
    ``folder``, cheap even for large models: small files are hashed whole; a safetensors file
    by its header (names, shapes, dtypes) and a few KiB at the start, middle and end of each
    tensor (training changes every trained tensor throughout). A large file of another format
    is taken by its size, modification time and first and last bytes."""
    h = hashlib.sha256()
    for f in sorted(p for p in folder.iterdir() if p.is_file()):
        stat = f.stat()
        h.update(f"{f.name}\0{stat.st_size}\0".encode())
        with f.open("rb") as fh:
            if stat.st_size <= WHOLE:
                h.update(fh.read())
            elif not (f.suffix == ".safetensors" and _hash_tensors(fh, h)):
                h.update(str(stat.st_mtime_ns).encode())
                h.update(fh.read(2**20))
                fh.seek(max(0, stat.st_size - 2**20))
                h.update(fh.read())
    return h.hexdigest()[:16]


def _hash_tensors(fh: Any, h: Any) -> bool:
    try:
        size = int.from_bytes(fh.read(8), "little")
        header = fh.read(size)
        tensors = json.loads(header)
    except ValueError:
        return False
    h.update(header)
    base = 8 + size
    for key in sorted(tensors):
        if key == "__metadata__":
            continue
        start, end = tensors[key]["data_offsets"]
        for at in sorted(
            {start, max(start, (start + end - SAMPLE) // 2), max(start, end - SAMPLE)}
        ):
            fh.seek(base + at)
            h.update(fh.read(min(SAMPLE, end - at)))
    return True
