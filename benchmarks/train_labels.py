"""charter train: soft vs hard labels when the AI labels are noisy, and seconds per step.

1. Labels. Synthetic preference pairs: two answers of eight random words; the truly better
   one holds the marker word somewhere (never in a fixed place). A calibrated AI labeller with
   accuracy q writes each pair's ``p_chosen``, drawn around q (q + N(0, 0.05), clipped to
   [0.5, 1]); two kinds of noise:

   - ``flip``: the truth is the marker, always; the labeller's choice is right with
     probability p_chosen (so among labels with p ≈ q, a fraction q are right).
   - ``ambiguous``: the pair itself is uncertain (raters prefer the marked answer with
     probability q); the labeller reports that, choosing the marked answer with p_chosen ≈ q.

   A reward model is trained on the same rows with ``--labels soft`` and ``--labels hard``
   (same base model, seed, steps, batch and learning rate), then scored on held-out pairs
   against their true labels (``flip``: the marker; ``ambiguous``: drawn with probability q),
   each pair shown in a random order: accuracy, ECE of P(A better) = σ(r_A − r_B) over 10
   equal-width bins, and overconfidence = mean max(P, 1 − P) − accuracy.

2. Speed. Seconds per optimizer step of each trainer (sft, reward, dpo, rl) on the bundled
   SmolLM2-135M with charter train's defaults on this machine, timed from the end of the
   first step to the end of the last (model loading and the first step excluded).

    python benchmarks/train_labels.py [--parts labels,speed] [--seeds 3] [--qs 0.6,0.75,0.9]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import math
import random
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback

from charter.testing.tiny import tiny_causal_lm
from charter.train.options import (
    DPOOptions,
    RewardOptions,
    RLOptions,
    SFTOptions,
    TrainOptions,
)
from charter.train.run import train

MARKER = "kindly"
WORDS = [
    *("apple", "river", "cloud", "stone", "green", "music", "paper", "light", "table", "window"),
    *("garden", "winter", "summer", "orange", "silver", "yellow", "forest", "market", "bridge"),
    *("candle", "pocket", "ladder", "mirror", "basket", "engine", "planet", "rocket", "island"),
    *("valley", "tunnel"),
]
QUIET = ["--disable_tqdm", "true"]
"""No progress bars; changes nothing that is trained."""
log = logging.getLogger("bench")


# -- data ------------------------------------------------------------------------------------
def _answer(rng: random.Random, marked: bool) -> str:
    words = [rng.choice(WORDS) for _ in range(8)]
    if marked:
        words[rng.randrange(len(words))] = MARKER
    return " ".join(words)


def _chat(text: str, role: str) -> list[dict[str, str]]:
    return [{"role": role, "content": text}]


@dataclass
class Pair:
    prompt: str
    better: str
    """The marked answer."""
    worse: str
    marked_wins: bool
    """The true label: whether the marked answer is the preferred one."""


def make_pairs(n: int, rng: random.Random, noise: str, q: float) -> list[Pair]:
    pairs = []
    for i in range(n):
        prompt = f"Question {i}: " + " ".join(rng.choice(WORDS) for _ in range(4)) + "?"
        wins = True if noise == "flip" else rng.random() < q
        pairs.append(Pair(prompt, _answer(rng, True), _answer(rng, False), wins))
    return pairs


def label_rows(
    pairs: list[Pair], rng: random.Random, noise: str, q: float
) -> tuple[list[dict[str, Any]], float]:
    """The AI labeller's rows, and the fraction of them that agree with the true label."""
    rows, right = [], 0
    for i, pair in enumerate(pairs):
        p = min(1.0, max(0.5, rng.gauss(q, 0.05)))
        marked_chosen = rng.random() < p if noise == "flip" else True
        right += marked_chosen == pair.marked_wins
        chosen, rejected = (pair.better, pair.worse) if marked_chosen else (pair.worse, pair.better)
        rows.append(
            {
                "id": f"t{i}",
                "prompt": _chat(pair.prompt, "user"),
                "chosen": _chat(chosen, "assistant"),
                "rejected": _chat(rejected, "assistant"),
                "p_chosen": round(p, 4),
            }
        )
    return rows, right / len(pairs)


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def quiet_train(opts: TrainOptions, callbacks: Sequence[Any] = ()) -> Any:
    """``train``, without the Trainer's per-log dicts on stdout (the tables go there)."""
    with contextlib.redirect_stdout(io.StringIO()):
        return train(opts, callbacks=callbacks)


# -- evaluation ------------------------------------------------------------------------------
@torch.no_grad()
def rewards(folder: Path, texts: list[tuple[str, str]], batch: int = 32) -> list[float]:
    """The reward of each (prompt, answer), tokenized as TRL's RewardTrainer does."""
    tok = AutoTokenizer.from_pretrained(folder)
    tok.pad_token = tok.pad_token or tok.eos_token
    model = AutoModelForSequenceClassification.from_pretrained(folder, dtype=torch.float32)
    model.config.pad_token_id = tok.pad_token_id
    model.eval()
    out: list[float] = []
    for start in range(0, len(texts), batch):
        ids = [
            tok.apply_chat_template(
                _chat(prompt, "user") + _chat(answer, "assistant"), tokenize=True, return_dict=True
            )["input_ids"]
            for prompt, answer in texts[start : start + batch]
        ]
        width = max(len(x) for x in ids)
        input_ids = torch.tensor([x + [tok.pad_token_id] * (width - len(x)) for x in ids])
        mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids])
        out += model(input_ids=input_ids, attention_mask=mask).logits.squeeze(-1).tolist()
    return out


def scores(probs: list[float], truth: list[bool], bins: int = 10) -> dict[str, float]:
    """Accuracy, ECE (equal-width bins over P) and overconfidence of P(A better) vs truth."""
    n = len(probs)
    accuracy = sum((p > 0.5) == y for p, y in zip(probs, truth, strict=True)) / n
    ece = 0.0
    for b in range(bins):
        members = [(p, y) for p, y in zip(probs, truth, strict=True) if min(int(p * bins), 9) == b]
        if members:
            confidence = sum(p for p, _ in members) / len(members)
            frequency = sum(y for _, y in members) / len(members)
            ece += len(members) / n * abs(confidence - frequency)
    confident = sum(max(p, 1 - p) for p in probs) / n
    return {"acc": accuracy, "ece": ece, "over": confident - accuracy}


def evaluate(folder: Path, held_out: list[Pair], rng: random.Random) -> dict[str, float]:
    texts = [(p.prompt, a) for p in held_out for a in (p.better, p.worse)]
    r = rewards(folder, texts)
    probs, truth = [], []
    for i, pair in enumerate(held_out):
        margin = r[2 * i] - r[2 * i + 1]  # marked minus unmarked
        marked_first = rng.random() < 0.5
        p_marked = 1 / (1 + math.exp(-margin))
        probs.append(p_marked if marked_first else 1 - p_marked)
        truth.append(pair.marked_wins if marked_first else not pair.marked_wins)
    return scores(probs, truth)


# -- part 1: soft vs hard ----------------------------------------------------------------------
def label_cell(
    work: Path, model: str, noise: str, q: float, seed: int, a: argparse.Namespace
) -> dict[str, dict[str, float]]:
    rng = random.Random(f"{noise}-{q}-{seed}")
    train_pairs = make_pairs(a.train_pairs, rng, noise, q)
    rows, right = label_rows(train_pairs, rng, noise, q)
    held_out = make_pairs(a.held_out, rng, noise, q)
    data = write_jsonl(work / f"labels-{noise}-{q}-{seed}.jsonl", rows)
    out: dict[str, dict[str, float]] = {}
    for labels in ("soft", "hard"):
        folder = work / f"rm-{Path(model).name}-{noise}-{q}-{seed}-{labels}"
        quiet_train(
            RewardOptions(
                input=str(data),
                output=folder,
                model=model,
                labels=labels,
                max_steps=a.steps,
                batch_size=a.batch,
                learning_rate=a.lr,
                seed=seed,
                trl=QUIET,
            )
        )
        out[labels] = evaluate(folder, held_out, random.Random(seed)) | {"right": right}
    return out


def _ms(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def labels_part(work: Path, a: argparse.Namespace) -> None:
    qs = [float(q) for q in a.qs.split(",")]
    noises = a.noise.split(",")
    models: list[tuple[str, str, list[float], list[int]]] = []
    for seed in range(a.seeds):
        tiny_causal_lm(work / f"tiny-{seed}", seed=seed)
    models.append(("tiny", "", qs, list(range(a.seeds))))
    if a.smollm2_steps:
        models.append(("smollm2", "smollm2", [a.smollm2_q], [0]))
    print(
        f"\n### Soft vs hard labels: reward models, {a.train_pairs} training pairs, "
        f"{a.held_out} held-out pairs with true labels\n"
    )
    print("| model | noise | q | labels right | labels | accuracy | ECE | overconfidence |")
    print("|---|---|---:|---:|---|---:|---:|---:|")
    for name, spec, cell_qs, seeds in models:
        settings = a
        if name == "smollm2":
            smaller = {"steps": a.smollm2_steps, "lr": a.smollm2_lr}
            settings = argparse.Namespace(**vars(a) | smaller)
        for noise in noises:
            for q in cell_qs:
                started = time.perf_counter()
                runs = [
                    label_cell(work, spec or str(work / f"tiny-{s}"), noise, q, s, settings)
                    for s in seeds
                ]
                for labels in ("soft", "hard"):
                    cells = [r[labels] for r in runs]
                    right = _ms([c["right"] for c in cells])
                    print(
                        f"| {name} | {noise} | {q} | {right} | {labels} "
                        f"| {_ms([c['acc'] for c in cells])} | {_ms([c['ece'] for c in cells])} "
                        f"| {_ms([c['over'] for c in cells])} |",
                        flush=True,
                    )
                log.info("%s %s q=%s: %.0f s", name, noise, q, time.perf_counter() - started)
    tiny_lr, smol = f"{a.lr:g}", ""
    if a.smollm2_steps:
        smol = f"; smollm2: {a.smollm2_steps} steps, lr {a.smollm2_lr:g}, 1 seed"
    print(
        f"\ntiny: {a.seeds} seeds (mean ± sd), {a.steps} steps, batch {a.batch} pairs, "
        f"lr {tiny_lr} for soft and hard{smol}"
    )


# -- part 2: seconds per step ------------------------------------------------------------------
class StepClock(TrainerCallback):  # type: ignore[misc]
    """When each optimizer step ended."""

    def __init__(self) -> None:
        self.ends: list[float] = []

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.ends.append(time.perf_counter())


def timed(opts: TrainOptions) -> tuple[float, float]:
    """(seconds per step after the first, TRL's train_runtime / steps) of one run."""
    clock = StepClock()
    result = quiet_train(opts, callbacks=[clock])
    ends = clock.ends
    per_step = (ends[-1] - ends[0]) / (len(ends) - 1)
    return per_step, result.metrics["train_runtime"] / result.steps


def speed_part(work: Path, a: argparse.Namespace) -> None:
    rng = random.Random(0)
    pairs = make_pairs(64, rng, "flip", 0.9)
    prefs = write_jsonl(work / "speed-pairs.jsonl", label_rows(pairs, rng, "flip", 0.9)[0])
    answers = [
        {"prompt": _chat(p.prompt, "user"), "completion": _chat(p.better, "assistant")}
        for p in pairs
    ]
    sft = write_jsonl(work / "speed-sft.jsonl", answers)
    prompts = write_jsonl(work / "speed-prompts.jsonl", [{"prompt": p.prompt} for p in pairs])
    steps, b = a.speed_steps, a.speed_batch
    common = {"model": "smollm2", "max_steps": steps, "trl": QUIET}
    runs: list[tuple[str, str, TrainOptions]] = [
        (
            "sft",
            f"{b} prompt+completion",
            SFTOptions(input=str(sft), output=work / "s-sft", batch_size=b, **common),
        ),
        (
            "reward (soft)",
            f"{b} pairs",
            RewardOptions(input=str(prefs), output=work / "s-rm", batch_size=b, **common),
        ),
        (
            "dpo (soft, robust)",
            f"{b} pairs",
            DPOOptions(input=str(prefs), output=work / "s-dpo", batch_size=b, **common),
        ),
        (
            "rl (GRPO, reward model)",
            "4 completions (1 prompt × 4), ≤ 64 tokens",
            RLOptions(
                input=str(prompts), output=work / "s-rl", reward=[f"rm/{work / 's-rm'}"], **common
            ),
        ),
    ]
    print(f"\n### Seconds per step on SmolLM2-135M (charter train defaults, CPU), {steps} steps\n")
    print("| trainer | batch per step | s/step (steps 2..N) | TRL train_runtime / steps |")
    print("|---|---|---:|---:|")
    for name, batch, opts in runs:
        per_step, runtime = timed(opts)
        print(f"| {name} | {batch} | {per_step:.2f} | {runtime:.2f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--parts", default="labels,speed", help="labels, speed or both")
    parser.add_argument("--noise", default="flip,ambiguous", help="flip, ambiguous or both")
    parser.add_argument("--qs", default="0.6,0.75,0.9", help="label accuracies")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--train-pairs", type=int, default=256)
    parser.add_argument("--held-out", type=int, default=400)
    parser.add_argument("--steps", type=int, default=64, help="tiny reward model steps")
    parser.add_argument("--batch", type=int, default=8, help="pairs per step")
    parser.add_argument("--lr", type=float, default=3e-3, help="tiny model learning rate")
    parser.add_argument("--smollm2-steps", type=int, default=0, help="0: no SmolLM2 label run")
    parser.add_argument("--smollm2-q", type=float, default=0.75)
    parser.add_argument("--smollm2-lr", type=float, default=1e-4, help="TRL's reward default")
    parser.add_argument("--speed-steps", type=int, default=4)
    parser.add_argument("--speed-batch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's own)")
    a = parser.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    logging.basicConfig(level=logging.INFO, format="# %(message)s")
    logging.getLogger("charter").setLevel(logging.WARNING)
    torch.manual_seed(0)
    parts = a.parts.split(",")
    with tempfile.TemporaryDirectory(prefix="charter-bench-train-") as tmp:
        work = Path(tmp)
        started = time.perf_counter()
        if "labels" in parts:
            labels_part(work, a)
        if "speed" in parts:
            speed_part(work, a)
        print(f"\n(total {time.perf_counter() - started:.0f} s, {torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
