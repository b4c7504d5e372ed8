"""Running as one of several processes: ``accelerate launch``, torchrun, deepspeed, mpirun.

Every process runs the same ``charter train``; these say which one this is before any process
group starts (so every process checks its inputs alike), keep the others quiet, refuse a launch
whose processes would each train alone, and bind a process to torchrun's launcher.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from collections.abc import Iterator
from typing import Any

from charter.errors import ConfigError

log = logging.getLogger("charter")

LAUNCHERS = (
    ("RANK", "WORLD_SIZE"),  # torchrun, accelerate launch, deepspeed
    ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"),  # Open MPI's mpirun
    ("PMI_RANK", "PMI_SIZE"),  # Intel MPI, MPICH, Slurm
    ("MV2_COMM_WORLD_RANK", "MV2_COMM_WORLD_SIZE"),  # MVAPICH
)
"""The environment variables a launcher sets: (this process's rank, how many processes)."""


def launched() -> tuple[int, int]:
    """(this process's rank, how many processes) as the launcher that started it says; (0, 1)
    for a plain run. Read from the environment, before any process group starts."""
    for rank, size in LAUNCHERS:
        if os.environ.get(size, "").isdigit():
            return int(os.environ.get(rank, "0") or 0), int(os.environ[size])
    return 0, 1


def check_processes(trainers: int, processes: int) -> None:
    """A launcher started several processes but the trainer runs as fewer (each alone): each
    would train the whole run into the same folder. Refused on every process alike."""
    if trainers != processes:
        raise ConfigError(
            f"started as {processes} processes, but the trainer runs as {trainers}: each "
            "would train alone into the same folder (use_cpu false on a machine without "
            "GPUs? a device torch cannot run DDP on?)"
        )


PR_SET_PDEATHSIG = 1
"""Linux prctl(2): the signal a process gets when the thread that started it ends."""


@contextlib.contextmanager
def bound_to_launcher() -> Iterator[None]:
    """While it trains, a process torchrun started (also under ``accelerate launch``) dies with
    its launcher, on Linux. torchrun starts each in a session of its own, so a launcher killed
    with SIGKILL, or by the OOM killer, left them training on: into the folder that the same
    command, run again, resumes in. (A launcher dead before this took torchrun's store with
    it: no process group starts.) MPI and Slurm stop their processes themselves."""
    libc = _libc() if "TORCHELASTIC_RUN_ID" in os.environ else None
    if libc is None:
        yield
        return
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    try:
        yield
    finally:
        libc.prctl(PR_SET_PDEATHSIG, 0, 0, 0, 0)


def _libc() -> Any:
    """Linux's C library, to call prctl; None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


@contextlib.contextmanager
def one_voice(rank: int) -> Iterator[None]:
    """Only the first process speaks: the others' log lines and progress bars would repeat
    its own (their errors are still raised)."""
    if rank == 0:
        yield
        return
    level = log.level
    log.setLevel(logging.ERROR)
    bars = _progress_bars(False)
    try:
        yield
    finally:
        log.setLevel(level)
        _progress_bars(bars)


def _progress_bars(on: bool) -> bool:
    """Turn transformers' progress bars (loading weights, saving) on or off; whether they
    were on."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        return False
    was = bool(hf_logging.is_progress_bar_enabled())
    if on:
        hf_logging.enable_progress_bar()  # type: ignore[no-untyped-call]
    else:
        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    return was
