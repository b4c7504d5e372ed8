"""charter train: the soft losses against hand-computed values, each trainer end to end on a
tiny Llama (2 layers, hidden 64, SmolLM2's tokenizer), configs, LoRA, resume, bad inputs."""

from __future__ import annotations

import json
import logging
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import charter

pytest.importorskip("trl", reason="charter[train] is not installed (trl, peft)")

import torch
from datasets import Dataset
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
)
from trl import DPOConfig, RewardConfig

from charter.errors import CharterError, ConfigError, InputError
from charter.testing.server import FakeOpenAIServer
from charter.testing.tiny import tiny_causal_lm
from charter.train.data import preference_rows, prompt_rows, sft_rows
from charter.train.options import DPOOptions, RewardOptions, RLOptions, SFTOptions
from charter.train.run import train
from charter.train.trainers import (
    SoftDPOTrainer,
    SoftRewardTrainer,
    robust_smoothing,
)

from .conftest import ROOT, run_cli


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_causal_lm(tmp_path_factory.mktemp("tiny") / "lm")


def _pairs(n: int, seed: int = 0, marker: str = "MARK", p: float = 0.9) -> list[dict[str, Any]]:
    """Pairs whose better answer carries a marker word the reward model can learn."""
    rng = random.Random(seed)
    words = ["apple", "river", "cloud", "stone", "green", "music", "paper", "light"]
    rows = []
    for i in range(n):
        body = " ".join(rng.choice(words) for _ in range(6))
        other = " ".join(rng.choice(words) for _ in range(6))
        rows.append(
            {
                "id": f"r{seed}-{i}",
                "prompt": [{"role": "user", "content": f"Question {i}: {body}?"}],
                "chosen": [{"role": "assistant", "content": f"{marker} {other}"}],
                "rejected": [{"role": "assistant", "content": other}],
                "p_chosen": p,
            }
        )
    return rows


def _write(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _tokenizer(folder: Path) -> Any:
    tok = AutoTokenizer.from_pretrained(folder)
    tok.pad_token = tok.pad_token or tok.eos_token
    return tok


def _logsig(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x > 0 else x - math.log1p(math.exp(x))


# -- the losses ------------------------------------------------------------------------------
def _reward_trainer(tiny: Path, tmp_path: Path, rows: list[dict[str, Any]], soft: bool) -> Any:
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny, num_labels=1)
    tok = _tokenizer(tiny)
    model.config.pad_token_id = tok.pad_token_id
    args = RewardConfig(output_dir=str(tmp_path / "out"), bf16=False, report_to="none")
    return SoftRewardTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tok,
        soft=soft,
    )


def _reward_loss(trainer: Any, rows: list[dict[str, Any]]) -> tuple[float, list[float]]:
    """(the trainer's loss, per-pair margins r_c - r_r computed by a plain forward pass)."""
    examples = [trainer.train_dataset[i] for i in range(len(rows))]
    batch = trainer.data_collator(examples)
    model = trainer.model.eval()
    with torch.no_grad():
        loss = float(trainer.compute_loss(model, dict(batch)))
        rewards = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).logits.squeeze(-1)
    chosen, rejected = rewards.chunk(2)
    return loss, (chosen - rejected).tolist()


def test_soft_reward_loss_is_the_hand_computed_soft_bradley_terry(
    tiny: Path, tmp_path: Path
) -> None:
    rows = _pairs(4)
    for row, p in zip(rows, [0.9, 0.6, 0.75, 1.0], strict=True):
        row["p_chosen"] = p
    trainer = _reward_trainer(tiny, tmp_path, rows, soft=True)
    loss, margins = _reward_loss(trainer, rows)
    assert any(abs(m) > 1e-4 for m in margins)  # a random head: margins are not all zero
    hand = [
        -(p * _logsig(m) + (1 - p) * _logsig(-m))
        for p, m in zip([r["p_chosen"] for r in rows], margins, strict=True)
    ]
    assert loss == pytest.approx(sum(hand) / len(hand), rel=1e-5, abs=1e-6)


def test_soft_reward_loss_at_p_one_is_trls_hard_loss(tiny: Path, tmp_path: Path) -> None:
    rows = _pairs(4, p=1.0)
    soft, _ = _reward_loss(_reward_trainer(tiny, tmp_path, rows, soft=True), rows)
    hard, margins = _reward_loss(_reward_trainer(tiny, tmp_path, rows, soft=False), rows)
    assert soft == pytest.approx(hard, rel=1e-6)
    assert hard == pytest.approx(sum(-_logsig(m) for m in margins) / 4, rel=1e-5)


def test_p_zero_is_the_hard_loss_with_the_pair_swapped() -> None:
    rows = preference_rows_from(_pairs(2, p=0.0))
    assert all(r["p_chosen"] == 1.0 for r in rows)  # swapped, so the target is chosen
    assert all(r["chosen"][0]["content"].startswith("MARK") is False for r in rows)


def preference_rows_from(rows: list[dict[str, Any]], labels: str = "soft") -> list[dict[str, Any]]:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        return preference_rows(str(_write(Path(d) / "l.jsonl", rows)), labels)  # type: ignore[arg-type]


def test_robust_smoothing_turns_trls_robust_loss_into_cdpo() -> None:
    p = torch.tensor([0.5, 0.6, 0.8, 0.99, 1.0])
    s = robust_smoothing(p)
    beta_delta = torch.tensor([0.3, -1.2, 2.0, 0.7, -0.4])
    logsig = torch.nn.functional.logsigmoid
    robust = (-(1 - s) * logsig(beta_delta) + s * logsig(-beta_delta)) / (1 - 2 * s)
    cdpo = -(p * logsig(beta_delta) + (1 - p) * logsig(-beta_delta))
    assert torch.allclose(robust, cdpo, rtol=1e-4, atol=1e-6)


def test_soft_dpo_loss_is_the_hand_computed_cdpo(tiny: Path, tmp_path: Path) -> None:
    rows = _pairs(4)
    ps = [0.9, 0.6, 0.5, 1.0]
    for row, p in zip(rows, ps, strict=True):
        row["p_chosen"] = p
    torch.manual_seed(0)
    policy = AutoModelForCausalLM.from_pretrained(tiny)
    ref = AutoModelForCausalLM.from_pretrained(tiny)
    with torch.no_grad():  # move the policy off the reference, so the log-ratios are not 0
        for param in policy.parameters():
            param.add_(0.05 * torch.randn_like(param))
    tok = _tokenizer(tiny)
    beta = 0.5
    args = DPOConfig(
        output_dir=str(tmp_path / "dpo"),
        bf16=False,
        report_to="none",
        loss_type=["robust"],
        beta=beta,
    )
    trainer = SoftDPOTrainer(
        model=policy,
        ref_model=ref,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tok,
        soft=True,
    )
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    trainer.model.eval()
    with torch.no_grad():
        loss = float(trainer.compute_loss(trainer.model, dict(batch)))

        def seq_logps(model: Any) -> torch.Tensor:
            logits = model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            ).logits
            logps = torch.log_softmax(logits[:, :-1].float(), dim=-1)
            tokens = batch["input_ids"][:, 1:]
            picked = logps.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
            return (picked * batch["completion_mask"][:, 1:]).sum(-1)

        pc, pr = seq_logps(policy).chunk(2)
        rc, rr = seq_logps(ref).chunk(2)
    deltas = ((pc - rc) - (pr - rr)).tolist()
    assert any(abs(d) > 1e-3 for d in deltas)
    hand = [
        -(p * _logsig(beta * d) + (1 - p) * _logsig(-beta * d))
        for p, d in zip(ps, deltas, strict=True)
    ]
    assert loss == pytest.approx(sum(hand) / 4, rel=1e-4)


# -- data ------------------------------------------------------------------------------------
def test_preference_rows_by_label_kind(tmp_path: Path) -> None:
    rows = _pairs(3)
    rows[1]["chosen"] = rows[1]["rejected"] = rows[1]["p_chosen"] = None  # below min-confidence
    rows[2]["p_chosen"] = 0.3
    path = _write(tmp_path / "labels.jsonl", rows)
    soft = preference_rows(str(path), "soft")
    assert [r["p_chosen"] for r in soft] == [0.9, pytest.approx(0.7)]
    assert soft[1]["chosen"][0]["content"] == rows[2]["rejected"][0]["content"]
    hard = preference_rows(str(path), "hard")
    assert "p_chosen" not in hard[0] and len(hard) == 2
    # A tie or a position-inconsistent pair has no TRL columns: soft labels train on its p_a,
    # hard labels leave it out.
    for reason, p_a in (("tie", 0.5), ("inconsistent", 0.4)):
        doubtful = {**rows[1], "excluded_reason": reason, "p_a": p_a}
        doubtful |= {"response_a": "first", "response_b": "second"}
        path = _write(tmp_path / f"{reason}.jsonl", [doubtful])
        (soft_row,) = preference_rows(str(path), "soft")
        assert soft_row["p_chosen"] == pytest.approx(max(p_a, 1 - p_a))
        assert soft_row["chosen"][0]["content"] == ("first" if p_a >= 0.5 else "second")
        with pytest.raises(InputError, match="no preference pairs"):
            preference_rows(str(path), "hard")
    human = [
        {
            "prompt": "Which?",
            "response_a": "first",
            "response_b": "second",
            "human_choice": c,
        }
        for c in ("b", None, "a", "tie")  # a tie names no better answer: left out
    ]
    got = preference_rows(str(_write(tmp_path / "human.jsonl", human)), "human")
    assert [(r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in got] == [
        ("second", "first"),
        ("first", "second"),
    ]


def test_bad_training_data_is_one_clear_error(tmp_path: Path) -> None:
    no_p = _pairs(2)
    del no_p[1]["p_chosen"]
    with pytest.raises(InputError, match=r"no\.jsonl:2: no 'p_chosen'.*--labels hard"):
        preference_rows(str(_write(tmp_path / "no.jsonl", no_p)), "soft")
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(InputError, match="no preference pairs to train on"):
        preference_rows(str(tmp_path / "empty.jsonl"), "soft")
    with pytest.raises(InputError, match="no answer to learn"):
        sft_rows(str(_write(tmp_path / "p.jsonl", [{"prompt": "hi"}])))
    revise = {
        "prompt": [{"role": "user", "content": "q"}],
        "final": "revised",
        "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "x"}],
    }
    assert sft_rows(str(_write(tmp_path / "r.jsonl", [revise])))[0]["completion"] == [
        {"role": "assistant", "content": "revised"}
    ]
    assert prompt_rows(str(_write(tmp_path / "q.jsonl", [{"prompt": "hi"}])))[0]["prompt"] == [
        {"role": "user", "content": "hi"}
    ]


def test_bad_inputs_fail_in_one_line(tmp_path: Path, tiny: Path) -> None:
    no_p = _pairs(2)
    del no_p[0]["p_chosen"]
    ok = str(_write(tmp_path / "ok.jsonl", _pairs(2)))
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match="is not a model folder"):
        train(DPOOptions(input=ok, output=out, model=str(tmp_path)))
    with pytest.raises(ConfigError, match="no such folder"):
        train(DPOOptions(input=ok, output=out, model="hf/nowhere"))
    with pytest.raises(InputError, match="not found"):
        train(SFTOptions(input=str(tmp_path / "missing.jsonl"), output=out, model=str(tiny)))
    assert not out.exists()  # nothing written for a run that could not start
    # through the command line: one line on stderr, exit 2, no traceback
    result = run_cli(
        "train",
        "reward",
        str(_write(tmp_path / "no-p.jsonl", no_p)),
        "-o",
        str(out),
        "-m",
        str(tiny),
    )
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "no-p.jsonl:1: no 'p_chosen'" in lines[0], result.stderr
    # settings TRL or charter refuse, before anything is written
    bad: list[tuple[Any, str]] = [
        (
            RewardOptions(input=ok, output=out, model=str(tiny), trl=["--bogus", "1"]),
            "unknown TRL option",
        ),
        (
            DPOOptions(input=ok, output=out, model=str(tiny), trl=["--loss_type", "sigmoid"]),
            "pass --labels hard",
        ),
        (
            RewardOptions(input=ok, output=out, model=str(tiny), trl=["--model_name_or_path", "x"]),
            "comes from --model",
        ),
        (
            RewardOptions(input=ok, output=out, model=str(tiny), trl=["--max_length", "3"]),
            "longer than max_length",
        ),
        (
            RLOptions(input=ok, output=out, model=str(tiny), reward=[f"rm/{tiny}"]),
            "not a reward model",
        ),
        (
            RLOptions(input=ok, output=out, model=str(tiny), reward_judge=f"rm/{tiny}"),
            "pass it as --reward",
        ),
        (RLOptions(input=ok, output=out, model=str(tiny)), "needs a reward"),
        (
            RLOptions(input=ok, output=out, model=str(tiny), max_ungraded=0.2),
            "--max-ungraded bounds what --reward-judge or a charter serve --reward URL",
        ),
        (RewardOptions(input=ok, output=tmp_path / "no-p.jsonl", model=str(tiny)), "is a file"),
    ]
    for opts, expected in bad:
        with pytest.raises((ConfigError, InputError), match=expected):
            train(opts)
        assert not out.exists() or not any(out.iterdir()), expected
    with pytest.raises(ValueError, match="finite number"):  # not "should be <= 1"
        RLOptions(input=ok, output=out, model=str(tiny), max_ungraded=float("nan"))


def test_an_output_that_holds_what_the_run_reads_is_refused(tiny: Path, tmp_path: Path) -> None:
    # Issue 24, 2: data at OUT/data.jsonl with -o OUT --force trained, then the data was
    # gone with the folder's old contents; so was a starting model trained into OUT.
    out = tmp_path / "out"
    out.mkdir()
    (out / "charter-train.json").write_text(
        json.dumps({"method": "reward", "settings": {}, "finished": True})
    )  # a finished training from before, which --force would clear
    data = _write(out / "data.jsonl", _pairs(2))
    config = out / "reward.yaml"
    config.write_text("max_steps: 1\n")
    outside = str(_write(tmp_path / "data.jsonl", _pairs(2)))
    model = out / "start"
    model.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        (model / name).write_bytes((tiny / name).read_bytes())
    cases: list[tuple[Any, str]] = [
        (RewardOptions(input=str(data), output=out, model=str(tiny)), "holds the training data"),
        (RewardOptions(input=str(out), output=out, model=str(tiny)), "is the training data"),
        (RewardOptions(input=outside, output=out, model=f"hf/{model}"), "holds --model"),
        (RewardOptions(input=outside, output=model, model=str(model)), "is --model"),
        (RewardOptions(input=outside, output=out, model=str(tiny), config=config), "--config"),
        (
            RLOptions(input=outside, output=out, model=str(tiny), reward=[f"rm/{model}"]),
            "holds --reward",
        ),
        (
            RLOptions(input=outside, output=out, model=str(tiny), reward_judge=f"hf/{model}"),
            "holds --reward-judge",
        ),
    ]
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    for opts, expected in cases:
        for force in (True, False):
            with pytest.raises(ConfigError, match=f"{expected} .*choose another -o"):
                train(opts.model_copy(update={"force": force}))
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert data.read_text() and (model / "model.safetensors").exists()


# -- every trainer end to end ----------------------------------------------------------------
def test_reward_model_learns_a_marker_and_ranks_held_out_pairs(tiny: Path, tmp_path: Path) -> None:
    data = _write(tmp_path / "train.jsonl", _pairs(32, seed=1))
    out = tmp_path / "rm"
    result = train(
        RewardOptions(
            input=str(data),
            output=out,
            model=str(tiny),
            max_steps=40,
            batch_size=8,
            learning_rate=3e-3,
        )
    )
    assert result.steps == 40 and not result.skipped
    assert not list(out.glob("checkpoint-*"))
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForSequenceClassification"]
    assert config["pad_token_id"] is not None
    # the trained model back as a judge: held-out pairs, the marked answer as A or as B
    held_out = []
    for i, row in enumerate(_pairs(16, seed=99)):
        good, bad = row["chosen"][0]["content"], row["rejected"][0]["content"]
        a, b = (good, bad) if i % 2 else (bad, good)
        held_out.append(
            {
                "id": row["id"],
                "prompt": row["prompt"],
                "response_a": a,
                "response_b": b,
                "human_choice": "a" if i % 2 else "b",
            }
        )
    labels = tmp_path / "rm-labels.jsonl"
    charter.run(
        "label",
        input=str(_write(tmp_path / "held-out.jsonl", held_out)),
        output=labels,
        judge=f"rm/{out}",
        constitution="harmless",
    )
    records = [json.loads(line) for line in labels.read_text().splitlines()]
    assert {r["label_source"] for r in records} == {"reward_model"}
    right = sum((r["p_a"] > 0.5) == (r["human_choice"] == "a") for r in records)
    assert right >= 15, f"{right}/16 held-out pairs ranked right"
    # the same command again is a no-op; other settings are refused without --force
    assert train(
        RewardOptions(
            input=str(data),
            output=out,
            model=str(tiny),
            max_steps=40,
            batch_size=8,
            learning_rate=3e-3,
        )
    ).skipped
    with pytest.raises(ConfigError, match=r"max_steps differ.*--force"):
        train(RewardOptions(input=str(data), output=out, model=str(tiny), max_steps=2))
    # the starting model is known by its weights, not by how its path is spelled
    same = RewardOptions(
        input=str(data),
        output=out,
        model=f"{tiny}/../{tiny.name}",
        max_steps=40,
        batch_size=8,
        learning_rate=3e-3,
    )
    assert train(same).skipped
    # --force with a setting TRL refuses leaves the trained model alone
    with pytest.raises(ConfigError, match="unknown TRL option"):
        train(same.model_copy(update={"force": True, "trl": ["--bogus", "1"]}))
    assert (out / "model.safetensors").exists()


def test_sft_dpo_and_rl_write_loadable_models(tiny: Path, tmp_path: Path) -> None:
    sft_data = [
        {
            "prompt": [{"role": "user", "content": f"q{i}"}],
            "final": f"a kind answer {i}",
            "messages": [],
        }
        for i in range(8)
    ]
    sft = train(
        SFTOptions(
            input=str(_write(tmp_path / "rev.jsonl", sft_data)),
            output=tmp_path / "sft",
            model=str(tiny),
            max_steps=2,
            batch_size=4,
        )
    )
    dpo = train(
        DPOOptions(
            input=str(_write(tmp_path / "labels.jsonl", _pairs(8))),
            output=tmp_path / "dpo",
            model=str(sft.output),
            max_steps=2,
            batch_size=4,
        )
    )
    rm = train(
        RewardOptions(
            input=str(tmp_path / "labels.jsonl"),
            output=tmp_path / "rm",
            model=str(tiny),
            max_steps=1,
            lora=True,
        )
    )
    assert not list(rm.output.glob("adapter_*"))  # merged: a plain model folder
    prompts = _write(tmp_path / "prompts.jsonl", [{"prompt": f"Say {w}."} for w in "abcd"])
    rl = train(
        RLOptions(
            input=str(prompts),
            output=tmp_path / "rl",
            model=str(dpo.output),
            reward=[f"rm/{rm.output}"],
            reward_judge="mock/judge",
            reward_weights=[1.0, 0.5],
            max_steps=1,
            num_generations=2,
            batch_size=2,
            max_completion_length=8,
        )
    )
    for result in (sft, dpo, rl):
        assert result.steps >= 1
        model = AutoModelForCausalLM.from_pretrained(result.output)
        assert AutoTokenizer.from_pretrained(result.output).chat_template
        assert model.config.num_hidden_layers == 2
        marker = json.loads((result.output / "charter-train.json").read_text())
        assert marker["finished"] is True


def test_trl_config_file_and_flags(tiny: Path, tmp_path: Path) -> None:
    config = tmp_path / "reward.yaml"
    config.write_text("max_steps: 3\nlearning_rate: 0.002\nper_device_train_batch_size: 2\n")
    data = _write(tmp_path / "labels.jsonl", _pairs(8))
    from_file = train(
        RewardOptions(input=str(data), output=tmp_path / "a", model=str(tiny), config=config)
    )
    assert from_file.steps == 3
    overridden = train(
        RewardOptions(
            input=str(data),
            output=tmp_path / "b",
            model=str(tiny),
            config=config,
            max_steps=2,  # a flag beats the file
            trl={"max_steps": 1, "lr_scheduler_type": "constant"},  # extra args beat both
        )
    )
    assert overridden.steps == 1
    with pytest.raises(ConfigError, match="bf16"):
        train(
            RewardOptions(
                input=str(data), output=tmp_path / "c", model=str(tiny), trl=["--bf16", "true"]
            )
        )


def test_killed_training_resumes_from_its_checkpoint(
    tiny: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = _write(tmp_path / "labels.jsonl", _pairs(16))
    out = tmp_path / "rm"
    args = [
        sys.executable,
        "-m",
        "charter",
        "train",
        "reward",
        str(data),
        "-o",
        str(out),
        "-m",
        str(tiny),
        "--max-steps",
        "48",
        "--batch-size",
        "2",
        "--save-steps",
        "3",
    ]
    env = {**os.environ, "NO_COLOR": "1"}
    proc = subprocess.Popen(
        args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and proc.poll() is None:
        states = list(out.glob("checkpoint-*/trainer_state.json"))
        if states:
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[1]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = {int(p.name.split("-")[1]) for p in out.glob("checkpoint-*")}
    assert done and max(done) < 48
    with caplog.at_level(logging.INFO, logger="charter"):
        resumed = train(
            RewardOptions(
                input=str(data),
                output=out,
                model=str(tiny),
                max_steps=48,
                batch_size=2,
                save_steps=3,
            )
        )
    assert "resuming from" in caplog.text
    assert resumed.steps == 48 and not list(out.glob("checkpoint-*"))


# -- the loop as a recipe --------------------------------------------------------------------
def test_a_recipe_runs_the_loop_with_training_stages(tiny: Path, tmp_path: Path) -> None:
    """respond -> train sft -> respond with the SFT model -> label -> train reward -> train rl
    -> the reward model as a judge -> head to head."""
    run = tmp_path / "run"
    prompts = _write(
        tmp_path / "prompts.jsonl",
        [{"id": f"p{i}", "prompt": f"Tell me about {w}."} for i, w in enumerate("abcdefgh")],
    )
    recipe = tmp_path / "loop.yaml"
    recipe.write_text(
        f"""
defaults: {{max_tokens: 8, temperature: 0.7, seed: 0}}
stages:
  - {{stage: respond, model: mock/policy, input: {prompts}, output: {run}/answers.jsonl}}
  - stage: train
    name: sft
    method: sft
    model: {tiny}
    input: "@respond"
    output: {run}/sft
    max_steps: 1
  - {{stage: respond, name: samples, model: hf/{run}/sft, input: {prompts},
      output: {run}/samples.jsonl, n: 2}}
  - {{stage: label, judge: mock/judge, input: "@samples", output: {run}/labels.jsonl,
      constitution: harmless}}
  - {{stage: train, name: reward, method: reward, model: {tiny}, input: "@label",
      output: {run}/rm, max_steps: 2, batch_size: 4}}
  - stage: train
    name: rl
    method: rl
    model: {run}/sft
    input: {prompts}
    output: {run}/policy
    reward: rm/{run}/rm
    max_steps: 1
    num_generations: 2
    batch_size: 2
    max_completion_length: 8
    trl: {{logging_steps: 1}}
  - {{stage: respond, name: h2h, model: "mock/policy,hf/{run}/policy", input: {prompts},
      output: {run}/h2h.jsonl, temperature: 0}}
  - {{stage: label, name: rm-judge, judge: rm/{run}/rm, input: "@h2h",
      output: {run}/h2h-labels.jsonl, constitution: harmless}}
"""
    )
    first = run_cli("run", str(recipe), timeout=600)
    assert first.returncode == 0, first.stderr
    for stage in ("sft", "reward", "rl"):
        assert f"trained {stage}:" in first.stderr
    h2h = [json.loads(line) for line in (run / "h2h.jsonl").read_text().splitlines()]
    assert h2h[0]["models"] == ["mock/policy", f"hf/{run}/policy"]
    labels = [json.loads(line) for line in (run / "h2h-labels.jsonl").read_text().splitlines()]
    assert {r["label_source"] for r in labels} == {"reward_model"}
    assert {r["a_source"] for r in labels} | {r["b_source"] for r in labels} == {
        "responses[0] (mock/policy)",
        f"responses[1] (hf/{run}/policy)",
    }
    assert "win rate:" in first.stderr


def test_recipe_train_stage_errors_name_the_stage(tmp_path: Path) -> None:
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("stages:\n  - {stage: train, input: x.jsonl, output: out, model: smollm2}\n")
    result = run_cli("run", str(recipe))
    assert result.returncode == 2
    assert "stages[0] (train): a train stage needs 'method'" in result.stderr
    recipe.write_text(
        f"stages:\n  - {{stage: train, method: dpo, input: {recipe}, output: out,"
        " model: smollm2, lables: soft}\n"
    )
    result = run_cli("run", str(recipe))
    assert result.returncode == 2 and "lables" in result.stderr


def test_parquet_data_model_options_and_force(tiny: Path, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = tmp_path / "labels.parquet"
    pq.write_table(pa.Table.from_pylist(_pairs(4)), data)
    opts = RewardOptions(
        input=str(data),
        output=tmp_path / "rm",
        model=str(tiny),
        max_steps=1,
        trl=["--dtype", "bfloat16"],  # a ModelConfig option reaches the model
    )
    assert train(opts).steps == 1
    config = json.loads((tmp_path / "rm" / "config.json").read_text())
    assert config["dtype"] == "bfloat16"
    assert train(opts.model_copy(update={"force": True})).steps == 1  # --force trains again


def test_win_rate_is_by_model_across_samples(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from charter.judges.records import label_summary

    rows = []
    for i, (a, b, p) in enumerate(
        [("A", "B", 0.8), ("B", "A", 0.3), ("A", "A", 0.9), ("A", "B", 0.6), ("B", "B", 0.1)]
    ):
        rows.append(
            {
                "id": f"x:{i}",
                "prompt": [{"role": "user", "content": "q"}],
                "response_a": "a",
                "response_b": "b",
                "a_source": f"responses[{i}] ({a})",
                "b_source": f"responses[{i + 1}] ({b})",
                "human_choice": None,
                "p_a": p,
                "p_a_when_first": p,
                "p_a_when_second": p,
                "position_consistent": True,
                "label_source": "logprobs",
                "principles": [],
                "per_principle": [],
                "judgements": [],
                "judge": "mock/j",
                "constitution": "c",
                "constitution_hash": "h",
                "chosen": None,
                "rejected": None,
                "p_chosen": None,
                "low_confidence": True,
            }
        )
    path = _write(tmp_path / "labels.jsonl", rows)
    with caplog.at_level(logging.INFO, logger="charter"):
        label_summary(path)
    # pairs of one model's samples are left out; A won 0.8, 0.7 and 0.6 of the other three
    assert "win rate: A preferred over B in 100% of 3 pairs (mean P = 0.700)" in caplog.text


def test_recipe_checks_model_folders_before_running(tmp_path: Path, tiny: Path) -> None:
    prompts = _write(tmp_path / "p.jsonl", [{"prompt": "hi"}])
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"stages:\n  - {{stage: respond, model: mock/m, input: {prompts},"
        f" output: {tmp_path}/a.jsonl}}\n"
        f"  - {{stage: train, method: sft, model: {tmp_path}/nowhere, input: '@respond',"
        f" output: {tmp_path}/sft}}\n"
    )
    result = run_cli("run", str(recipe))
    assert result.returncode == 2 and "stages[1] (train sft): model:" in result.stderr
    assert not (tmp_path / "a.jsonl").exists()  # nothing ran
    recipe.write_text(
        f"stages:\n  - {{stage: train, method: sft, model: {tiny}, input: {prompts},"
        f" output: {tmp_path}/sft}}\n"
        f"  - {{stage: respond, model: hf/{tmp_path}/sft, input: {tmp_path}/sft,"
        f" output: {tmp_path}/b.jsonl}}\n"
    )
    result = run_cli("run", str(recipe))
    assert result.returncode == 2 and "is the model folder stages[0] trains" in result.stderr


def test_cli_rl_with_charters_judge_as_the_reward(tiny: Path, tmp_path: Path) -> None:
    prompts = _write(tmp_path / "p.jsonl", [{"prompt": f"Say {w}."} for w in "ab"])
    result = run_cli(
        "train",
        "rl",
        str(prompts),
        "-o",
        str(tmp_path / "rl"),
        "-m",
        str(tiny),
        "--reward-judge",
        "mock/judge",
        "--rubric",
        "helpfulness",
        "--max-steps",
        "1",
        "--num-generations",
        "2",
        "--batch-size",
        "2",
        "--max-completion-length",
        "4",
        "-q",
    )
    assert result.returncode == 0, result.stderr
    assert "trained rl: 1 steps" in result.stderr
    assert "train_runtime" not in result.stdout  # -q: no metric lines


async def test_judge_reward_is_the_expected_score_and_none_when_ungradable() -> None:
    from charter.backends.mock import MockBackend, register_mock, unregister_mock
    from charter.rubric import load_rubric
    from charter.train.rewards import JudgeReward

    register_mock(MockBackend("mock/sure", option_probs={"4": 0.5, "5": 0.5}))
    register_mock(MockBackend("mock/mute", responder=lambda m, c: "no idea", logprobs=False))
    try:
        prompts = [[{"role": "user", "content": "Say hi."}]] * 2
        completions = [[{"role": "assistant", "content": t}] for t in ("hi", "hello")]
        sure = JudgeReward("mock/sure", load_rubric("helpfulness"))
        rewards = await sure(prompts=prompts, completions=completions)
        assert rewards == [4.5, 4.5]
        sure.count(rewards)
        mute = JudgeReward("mock/mute", load_rubric("helpfulness"))
        assert await mute(prompts=prompts, completions=completions) == [None, None]
        # the trainer counts a generation batch once it has every process's rewards
        assert mute.tally.ungraded == 0
        mute.count([None, None])
        assert mute.tally.ungraded == 2 and sure.tally.ungraded == 0 and sure.tally.graded == 2
        await sure.aclose()
        await mute.aclose()
    finally:
        unregister_mock("mock/sure")
        unregister_mock("mock/mute")


def _weights_of(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


def test_the_same_seed_trains_the_same_weights(tiny: Path, tmp_path: Path) -> None:
    # Issue 24, 3: a reward model's new head (and a LoRA adapter) was made before anything
    # was seeded, so two identical runs trained different weights.
    pairs = str(_write(tmp_path / "labels.jsonl", _pairs(4)))
    sft_rows = [{"prompt": f"q{i}", "completion": f"a kind answer {i}"} for i in range(4)]
    prompts = _write(tmp_path / "prompts.jsonl", [{"prompt": f"Say {w}."} for w in "ab"])
    common: dict[str, Any] = {"model": str(tiny), "max_steps": 1, "batch_size": 2}
    runs: dict[str, Any] = {
        "reward": lambda out, seed: RewardOptions(input=pairs, output=out, seed=seed, **common),
        "sft": lambda out, seed: SFTOptions(
            input=str(_write(tmp_path / "sft.jsonl", sft_rows)),
            output=out,
            seed=seed,
            lora=True,
            **common,
        ),
        "dpo": lambda out, seed: DPOOptions(input=pairs, output=out, seed=seed, **common),
        "rl": lambda out, seed: RLOptions(
            input=str(prompts),
            output=out,
            seed=seed,
            reward_judge="mock/judge",
            num_generations=2,
            max_completion_length=4,
            **common,
        ),
    }
    for method, options in runs.items():
        first, again = (train(options(tmp_path / f"{method}-{n}", 7)).output for n in (1, 2))
        a, b = _weights_of(first), _weights_of(again)
        assert a.keys() == b.keys()
        differ = [k for k in a if not torch.equal(a[k], b[k])]
        assert not differ, f"{method}: the same seed trained other weights: {differ[:3]}"
    # a test that can fail: another seed starts the reward head elsewhere
    other = _weights_of(train(runs["reward"](tmp_path / "reward-3", 8)).output)
    assert not torch.equal(
        other["score.weight"], _weights_of(tmp_path / "reward-1")["score.weight"]
    )


def test_rl_whose_judge_grades_nothing_stops_in_one_line(tiny: Path, tmp_path: Path) -> None:
    # Issue 24, 4: no completion got a score, yet the run printed "trained rl: 1 steps, final
    # loss 0.0000", exited 0 and marked the folder finished. (The CLI prints a CharterError
    # as one line: test_bad_inputs_fail_in_one_line.)
    prompts = _write(tmp_path / "p.jsonl", [{"prompt": f"Say {w}."} for w in "ab"])
    out = tmp_path / "rl"
    # log-probabilities with no score among them: straight to reading the answer
    refusal = "I would rather not grade."
    with FakeOpenAIServer(option_probs={"I": 1.0}, responder=lambda m, b: refusal) as srv:
        opts = RLOptions(
            input=str(prompts),
            output=out,
            model=str(tiny),
            reward_judge="openai/judge",
            base_url=srv.base_url,
            max_steps=2,
            num_generations=2,
            batch_size=2,
            max_completion_length=4,
        )
        with pytest.raises(CharterError) as raised:  # UngradedError
            train(opts)
    message = str(raised.value)
    assert "\n" not in message
    assert "graded none of the 2 completion(s) of a generation batch" in message, message
    assert refusal in message, message  # what the judge answered
    assert "--rubric harmlessness" in message  # where to look
    marker = json.loads((out / "charter-train.json").read_text())
    assert marker["finished"] is False  # a re-run trains again, not a no-op


def test_rl_reports_and_bounds_the_share_the_judge_left_ungraded(
    tiny: Path, tmp_path: Path
) -> None:
    from charter.backends.mock import MockBackend, register_mock, unregister_mock
    from charter.errors import UngradedError

    def grades_a_only(messages: list[Any], config: Any) -> str:
        return "4" if "Say a." in messages[-1].content else "no idea"

    register_mock(MockBackend("mock/half", responder=grades_a_only, logprobs=False))
    prompts = _write(tmp_path / "p.jsonl", [{"prompt": f"Say {w}."} for w in "ab"])
    # each step holds both prompts (2 completions each): half of its completions are graded
    opts = RLOptions(
        input=str(prompts),
        output=tmp_path / "rl",
        model=str(tiny),
        reward_judge="mock/half",
        max_steps=2,
        save_steps=1,
        num_generations=2,
        batch_size=4,
        max_completion_length=4,
    )
    try:
        with pytest.raises(
            UngradedError, match=r"could not grade 4 of 8 \(50.0%\) .*--max-ungraded 0.1"
        ):
            train(opts)
        marker = json.loads((opts.output / "charter-train.json").read_text())
        assert marker["finished"] is False
        assert marker["judged"] == {"graded": 4, "ungraded": 4, "share_ungraded": 0.5}
        kept = json.loads((opts.output / "checkpoint-1" / "charter-judged.json").read_text())
        assert kept == {"graded": 2, "ungraded": 2, "share_ungraded": 0.5}
        # the same training, resumed from step 1: its tally counts the step before it too
        result = train(opts.model_copy(update={"max_ungraded": 0.5}))
        assert result.judged is not None and str(result.judged) == "4 of 8 (50.0%)"
        marker = json.loads((opts.output / "charter-train.json").read_text())
        assert marker["finished"] is True and marker["judged"]["ungraded"] == 4
        assert not list(opts.output.glob("checkpoint-*"))
    finally:
        unregister_mock("mock/half")


def test_charter_run_trains_as_the_command_does(tiny: Path, tmp_path: Path) -> None:
    from charter.train.run import TrainResult

    data = str(_write(tmp_path / "labels.jsonl", _pairs(4)))
    result = charter.run(
        "train reward", input=data, output=tmp_path / "rm", model=str(tiny), max_steps=1
    )
    assert isinstance(result, TrainResult) and result.steps == 1
    with pytest.raises(ConfigError, match=r"^train reward: max_steps: "):
        charter.run("train reward", input=data, output=tmp_path / "x", model=str(tiny), max_steps=0)


def test_force_empties_the_folder_but_never_what_a_link_in_it_points_to(tmp_path: Path) -> None:
    from charter.train.run import _clear

    kept_dir, kept_file = tmp_path / "elsewhere", tmp_path / "data.jsonl"
    kept_dir.mkdir()
    (kept_dir / "inside.txt").write_text("x")
    kept_file.write_text("{}\n")
    out = tmp_path / "out"
    (out / "checkpoint-1").mkdir(parents=True)
    (out / "model.safetensors").write_text("weights")
    (out / "linked-dir").symlink_to(kept_dir)
    (out / "linked-file").symlink_to(kept_file)
    _clear(out)  # rmtree on the linked folder raised, after deleting the model
    assert not list(out.iterdir())
    assert (kept_dir / "inside.txt").read_text() == "x" and kept_file.read_text() == "{}\n"


async def test_a_judge_that_cannot_be_asked_stops_rl_instead_of_grading_nothing() -> None:
    from charter.backends.mock import MockBackend, register_mock, unregister_mock
    from charter.errors import BackendFatalError
    from charter.rubric import load_rubric
    from charter.train.rewards import JudgeReward

    denied = BackendFatalError("HTTP 401 from http://judge/v1: authentication failed")
    register_mock(MockBackend("mock/denied", outputs=[denied] * 4, logprobs=False))
    try:
        judge = JudgeReward("mock/denied", load_rubric("helpfulness"))
        prompts = [[{"role": "user", "content": "Say hi."}]] * 2
        completions = [[{"role": "assistant", "content": t}] for t in ("hi", "hello")]
        with pytest.raises(BackendFatalError, match="authentication failed"):
            await judge(prompts=prompts, completions=completions)
        await judge.aclose()
    finally:
        unregister_mock("mock/denied")


def test_trls_warning_for_each_unrewarded_completion_is_left_to_charter() -> None:
    from charter.train.run import _unrewarded

    def record(message: str) -> logging.LogRecord:
        return logging.LogRecord("trl", logging.WARNING, "", 0, message, None, None)

    # accelerate prefixes the rank; charter's judge says what it left ungraded itself
    assert not _unrewarded(record("[RANK 0] All reward functions returned None for: {...}"))
    assert _unrewarded(record("[RANK 0] any other warning"))
