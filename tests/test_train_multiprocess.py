"""charter train on several processes: ``accelerate launch --multi_gpu --num_processes 2 -m
charter train ...`` (DDP over gloo on the CPU) trains what one process trains at the same global
batch, only the first process writes the output folder, a run killed with its launcher resumes,
a bad input stops every process, and rl's judge tally counts every process's completions.
A launch starts two Python processes that import torch and TRL (about 12 s on two cores), so
the tests launch four times in all, one of them a quick failure."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

pytest.importorskip("trl", reason="charter[train] is not installed (trl, peft)")

import torch
import torch.distributed
from transformers import TrainerCallback

from charter.testing.server import FakeOpenAIServer
from charter.testing.tiny import tiny_causal_lm
from charter.train.options import RewardOptions
from charter.train.run import train

from .conftest import ROOT
from .test_train import _pairs, _write

ACCELERATE = Path(sys.executable).with_name("accelerate")

pytestmark = [
    pytest.mark.skipif(
        not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
        reason="this torch build has no gloo process groups: no DDP on the CPU",
    ),
    pytest.mark.skipif(
        not ACCELERATE.is_file(), reason=f"no accelerate launcher beside {sys.executable}"
    ),
]

# The documented command, on two processes. Without GPUs --multi_gpu is accelerate's way to
# start several local processes (torchrun underneath); --cpu would start only one.
# --main_process_port 0: a free port, so parallel runs do not collide.
LAUNCH = [
    str(ACCELERATE),
    "launch",
    "--multi_gpu",
    "--num_processes",
    "2",
    "--num_machines",
    "1",
    "--mixed_precision",
    "no",
    "--dynamo_backend",
    "no",
    "--main_process_port",
    "0",
]

# What every process writes or removes under the output folder, from Python's audit events
# (safetensors and torch.save write from native code, unseen): a process that is not the first
# must touch nothing there but the checkpoint folders transformers makes for its RNG state.
AUDITED = """
import os, sys

OUT = os.path.realpath(os.environ["AUDIT_DIR"])
LOG = open(os.environ["AUDIT_LOG"] + "." + os.environ.get("RANK", "0"), "a", buffering=1)
EVENTS = {"os.remove", "os.rmdir", "os.rename", "os.mkdir", "shutil.rmtree", "os.truncate"}
WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def hook(event, args):
    if event == "open":
        path, mode, flags = args
        if not (any(c in (mode or "") for c in "wax+") or (flags or 0) & WRITE):
            return
    elif event not in EVENTS:
        return
    path = args[0]
    if isinstance(path, (str, bytes, os.PathLike)):
        path = os.path.realpath(os.fsdecode(path))
        if path == OUT or path.startswith(OUT + os.sep):
            LOG.write(f"{event} {os.path.relpath(path, OUT)}\\n")


sys.addaudithook(hook)
from charter.cli import main

main()
"""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_causal_lm(tmp_path_factory.mktemp("tiny") / "lm")


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "NO_COLOR": "1", "COLUMNS": "200", "OMP_NUM_THREADS": "1", **extra}


def _logged_losses(stdout: str) -> list[float]:
    """The loss of each step from TRL's metric lines (``{'loss': '0.6926', ...}``)."""
    lines = [ast.literal_eval(line) for line in stdout.splitlines() if line.startswith("{'loss'")]
    return [float(line["loss"]) for line in lines]


class _Losses(TrainerCallback):  # type: ignore[misc]
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **_: Any) -> None:
        if logs and "loss" in logs:
            self.losses.append(float(logs["loss"]))


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


def _largest_difference(a: Path, b: Path) -> float:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    return max(float((wa[k] - wb[k]).abs().max()) for k in wa)


def _launch_reward(data: Path, out: Path, tiny: Path, script: list[str], *flags: str) -> list[str]:
    return [*LAUNCH, *script, "train", "reward", str(data), "-o", str(out), "-m", str(tiny), *flags]


def test_two_processes_train_what_one_does_and_a_killed_run_resumes(
    tiny: Path, tmp_path: Path
) -> None:
    """One process with 4 pairs a step against two with 2 each, the same seed: the same loss at
    every step and the same weights, though the two-process run is killed (its launcher, with
    kill -9) after a checkpoint and the same command resumes it; only the first process writes
    the folder. (One test, to launch twice rather than three times: a launch costs ~12 s.)"""
    data = _write(tmp_path / "labels.jsonl", _pairs(16, seed=1))
    steps, seed, rate = 12, 3, 1e-3
    one = _Losses()
    train(
        RewardOptions(
            input=str(data),
            output=tmp_path / "one",
            model=str(tiny),
            max_steps=steps,
            seed=seed,
            learning_rate=rate,
            batch_size=4,
            trl=["--logging_steps", "1"],
        ),
        callbacks=[one],
        quiet=True,
    )
    assert len(one.losses) == steps
    # into a folder a start with other settings left, unfinished and without a checkpoint:
    # the first process empties it (as --force would, but the same command must resume)
    out = tmp_path / "two"
    out.mkdir()
    (out / "charter-train.json").write_text(json.dumps({"settings": {}, "finished": False}))
    (out / "old-weights.bin").write_text("an earlier model")
    (tmp_path / "audited.py").write_text(AUDITED)
    audit = tmp_path / "audit"
    command = _launch_reward(
        data,
        out,
        tiny,
        [str(tmp_path / "audited.py")],
        *("--max-steps", str(steps), "--seed", str(seed), "--learning-rate", str(rate)),
        *("--batch-size", "2", "--save-steps", "2", "-v", "--logging_steps", "1"),
    )
    env = _env(AUDIT_DIR=str(out), AUDIT_LOG=str(audit), PYTHONUNBUFFERED="1")
    first = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and first.poll() is None:
        if list(out.glob("checkpoint-*/trainer_state.json")):
            break
        time.sleep(0.05)
    assert first.poll() is None, first.communicate()[1][-3000:]
    # kill -9 the launcher alone, as a user, a scheduler or the OOM killer would: torchrun
    # starts the trainers in sessions of their own, out of reach of its group's signals
    trainers = psutil.Process(first.pid).children(recursive=True)
    assert len(trainers) >= 2
    first.kill()
    before, _ = first.communicate()
    _, alive = psutil.wait_procs(trainers, timeout=10)
    for proc in alive:
        proc.kill()
    assert not alive, f"trainers left running after their launcher was killed: {alive}"
    marker = json.loads((out / "charter-train.json").read_text())
    assert not marker["finished"], "the trainers trained on after their launcher was killed"
    # the same command again resumes from the last checkpoint and finishes
    again = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count("resuming from") == 1, again.stderr  # once, not once a process
    resumed = int(again.stderr.split("resuming from ", 1)[1].split("checkpoint-")[1].split()[0])
    assert 0 < resumed < steps
    # The same pairs make each global step: accelerate's sampler draws one seeded order and
    # deals its batches of 2 to the processes in turn (batches 2k and 2k + 1 make step k, the
    # 4 pairs one process takes at once), and DDP averages the two halves' gradients; on
    # resuming it skips the batches already trained. What differs is float rounding (padding
    # to another length, the order of the sums: about 1e-6) and TRL's printing, to 4
    # significant digits (5e-5 at 0.69): 2e-4 holds both, while a step on other pairs is off by
    # 1e-3 or more (the first step's loss on 2 pairs instead of 4 differs by 3e-3).
    killed, finished = _logged_losses(before), _logged_losses(again.stdout)
    assert killed and len(finished) == steps - resumed  # one line a step, not one a process
    assert killed == pytest.approx(one.losses[: len(killed)], abs=2e-4)
    assert finished == pytest.approx(one.losses[resumed:], abs=2e-4)
    # Adam turns those float differences into weights about 1e-5 apart (1.6e-5 after 30 steps),
    # where training moved them by 1.4e-2 and one process on batches of 2 pairs lands 1.4e-2
    # away.
    assert _largest_difference(tmp_path / "one", out) < 2e-4
    marker = json.loads((out / "charter-train.json").read_text())
    assert marker["finished"] is True and marker["settings"]["processes"] == 2
    assert not (out / "old-weights.bin").exists() and not list(out.glob("checkpoint-*"))
    # the first process emptied the folder and wrote it; the other wrote nothing there
    first_writes = Path(f"{audit}.0").read_text().splitlines()
    assert "os.remove old-weights.bin" in first_writes
    assert "os.rename .charter-train.json.tmp" in first_writes
    assert any(line.startswith("shutil.rmtree checkpoint-") for line in first_writes)
    other = Path(f"{audit}.1").read_text().splitlines()
    assert [line for line in other if not line.startswith("os.mkdir checkpoint-")] == []


def test_a_bad_input_stops_every_process(tiny: Path, tmp_path: Path) -> None:
    """Each process checks the inputs before the process group starts: none waits for another
    that has already stopped."""
    data = _write(tmp_path / "bad.jsonl", [{"prompt": "no pair here"}])
    out = tmp_path / "rm"
    launched = subprocess.run(
        _launch_reward(data, out, tiny, ["-m", "charter"]),
        capture_output=True,
        text=True,
        env=_env(),
        cwd=ROOT,
        timeout=120,
    )
    assert launched.returncode != 0
    assert "no 'chosen'/'rejected' columns" in launched.stderr
    assert not out.exists()


def test_rl_counts_what_the_judge_graded_on_every_process(tiny: Path, tmp_path: Path) -> None:
    # The judge grades prompt a's completions and not b's; each generation batch holds both
    # prompts' completions, split between the processes. Counted per process, one process saw
    # only ungraded completions (and stopped the run), the other's tally was the one written.
    prompts = _write(tmp_path / "p.jsonl", [{"prompt": f"Say {w}."} for w in "ab"])
    out = tmp_path / "rl"

    def grades_a_only(messages: list[dict[str, Any]], body: dict[str, Any]) -> str:
        return "4" if "Say a." in messages[-1]["content"] else "no idea"

    with FakeOpenAIServer(logprobs=False, responder=grades_a_only) as srv:
        launched = subprocess.run(
            [
                *LAUNCH,
                "-m",
                "charter",
                "train",
                "rl",
                str(prompts),
                "-o",
                str(out),
                "-m",
                str(tiny),
                "--reward-judge",
                "openai/judge",
                "--base-url",
                srv.base_url,
                "--max-steps",
                "2",
                "--batch-size",
                "2",
                "--num-generations",
                "2",
                "--max-completion-length",
                "4",
                "--max-ungraded",
                "0.5",
            ],
            capture_output=True,
            text=True,
            env=_env(),
            cwd=ROOT,
            timeout=300,
        )
    assert launched.returncode == 0, launched.stderr[-3000:]
    marker = json.loads((out / "charter-train.json").read_text())
    # 2 steps x 2 prompts x 2 completions, half of them graded: every process's count
    assert marker["finished"] is True
    assert marker["judged"] == {"graded": 4, "ungraded": 4, "share_ungraded": 0.5}
    assert "the judge left 4 of 8 (50.0%) completions ungraded" in launched.stderr
