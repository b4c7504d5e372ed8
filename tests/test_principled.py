"""A principle-conditioned reward model (``train reward --principle-conditioned``, ``rm/DIR``
under a constitution): trained on per-principle verdicts with the principle in its input, it
ranks pairs by whichever principle it is given; one trained on the same verdicts without the
principle cannot. A tiny Llama with SmolLM2's tokenizer, so the whole loop runs in seconds."""

from __future__ import annotations

import asyncio
import json
import random
import time
from pathlib import Path
from typing import Any

import pytest

import charter
from charter.backends.rm import RewardModelBackend
from charter.constitution import load_constitution
from charter.errors import ConfigError, InputError
from charter.judges.records import Judgement, LabelRecord, PairVerdict, PrincipleLabel
from charter.pairs import PairRecord
from charter.principled import FORMAT, INSTRUCTION, with_principle
from charter.rubric import load_rubric
from charter.seeds import derive_rng
from charter.testing.tiny import tiny_causal_lm
from charter.train.data import principle_rows
from charter.train.options import RewardOptions, RLOptions
from charter.train.run import train
from charter.types import Message

from .conftest import run_cli

pytest.importorskip("trl", reason="charter[train] is not installed (trl, peft)")

WORDS = ["apple", "river", "cloud", "stone", "green", "music", "paper", "light", "table", "sand"]
MARKERS = {"kiwi": "kiwi", "mango": "mango"}
"""Each principle's id and the word in the answers it prefers."""


def _principle(pid: str, word: str) -> dict[str, str]:
    return {
        "id": pid,
        "statement": f"The better answer is the one that mentions a {word}.",
        "critique_request": f"Say whether the answer mentions a {word}.",
        "revision_request": f"Rewrite the answer to mention a {word}.",
        "comparison_question": f"Which answer mentions a {word}?",
    }


def _constitution(path: Path, name: str, ids: list[str]) -> Path:
    data = {"name": name, "principles": [_principle(i, MARKERS[i]) for i in ids]}
    path.write_text(json.dumps(data))
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("principled")


@pytest.fixture(scope="module")
def both(folder: Path) -> Path:
    """The constitution the training pairs were labelled under: kiwi and mango."""
    return _constitution(folder / "fruit.json", "fruit", ["kiwi", "mango"])


def _pair(i: int, rng: random.Random, kiwi_first: bool) -> PairRecord:
    """Two answers to one question: one mentions a kiwi, the other a mango."""

    def words() -> str:
        return " ".join(rng.choice(WORDS) for _ in range(3))

    kiwi, mango = f"{words()} kiwi {words()}", f"{words()} mango {words()}"
    a, b = (kiwi, mango) if kiwi_first else (mango, kiwi)
    return PairRecord(
        id=f"q{i}",
        messages=[Message(role="user", content=f"Tell me about {words()}.")],
        response_a=a,
        response_b=b,
        a_source="kiwi" if kiwi_first else "mango",
        b_source="mango" if kiwi_first else "kiwi",
    )


def _label(pair: PairRecord, principle_id: str, constitution: Any) -> dict[str, Any]:
    """The label record a judge following ``principle_id`` gives ``pair`` (as charter label
    writes it with --principles 1), the verdict firm, both orders agreeing."""
    p_a = 0.9 if pair.a_source == principle_id else 0.1
    verdict = PairVerdict(
        p_a=p_a,
        p_a_when_first=p_a,
        p_a_when_second=p_a,
        position_consistent=True,
        label_source="logprobs",
        principles=[principle_id],
        per_principle=[
            PrincipleLabel(
                principle_id=principle_id,
                p_a=p_a,
                p_a_when_first=p_a,
                p_a_when_second=p_a,
                position_consistent=True,
            )
        ],
        judgements=[
            Judgement(principle_id=principle_id, order=o, p_first=p_a, p_a=p_a, source="logprobs")
            for o in ("ab", "ba")
        ],
        judge="mock/judge",
    )
    record = LabelRecord.from_verdict(
        pair.model_copy(update={"id": f"{pair.id}-{principle_id}"}),
        verdict,
        constitution=constitution,
        min_confidence=0.0,
        keep_inconsistent=False,
    )
    return record.model_dump(mode="json")


@pytest.fixture(scope="module")
def labels(folder: Path, both: Path) -> Path:
    """Each training pair labelled under each principle: the kiwi principle prefers the
    kiwi answer, the mango principle the mango one."""
    rng = random.Random(1)
    constitution = load_constitution(both)
    rows = []
    for i in range(48):
        pair = _pair(i, rng, kiwi_first=i % 2 == 0)
        rows += [_label(pair, pid, constitution) for pid in MARKERS]
    path = folder / "labels.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def held_out(folder: Path) -> Path:
    rng = random.Random(99)
    rows = []
    for i in range(40):
        pair = _pair(1000 + i, rng, kiwi_first=i % 2 == 1)
        rows.append(
            {
                "id": pair.id,
                "prompt": pair.messages[0].content,
                "response_a": pair.response_a,
                "response_b": pair.response_b,
                "kiwi_first": pair.a_source == "kiwi",
            }
        )
    path = folder / "held-out.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def start(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_causal_lm(tmp_path_factory.mktemp("tiny") / "lm")


STEPS = dict(max_steps=40, batch_size=8, learning_rate=2e-2)
"""What the tiny model needs to learn the conditioning (at 1e-2 it needs about 80 steps)."""


def _accuracy(
    folder: Path, model: Path, held_out: Path, constitution: Path, name: str, **flags: Any
) -> tuple[float, list[dict[str, Any]]]:
    """``charter label --judge rm/MODEL --constitution C`` on the held-out pairs: the share
    ranked as each record's (first) principle prefers, and the records."""
    out = folder / f"{name}.jsonl"
    charter.run(
        "label",
        input=str(held_out),
        output=out,
        judge=f"rm/{model}",
        constitution=str(constitution),
        **flags,
    )
    records = [json.loads(line) for line in out.read_text().splitlines()]
    kiwi_first = {
        json.loads(line)["id"]: json.loads(line)["kiwi_first"]
        for line in held_out.read_text().splitlines()
    }
    right = 0
    for r in records:
        principle = r["principles"][0] if r["principles"] else name.split("-")[-1]
        a_is_preferred = kiwi_first[r["id"]] == (principle == "kiwi")
        right += (r["p_a"] > 0.5) == a_is_preferred
    return right / len(records), records


def test_a_principle_conditioned_reward_model_follows_the_principle_it_is_given(
    folder: Path,
    start: Path,
    labels: Path,
    held_out: Path,
    both: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    kiwi = _constitution(folder / "kiwi.json", "just-kiwi", ["kiwi"])
    mango = _constitution(folder / "mango.json", "just-mango", ["mango"])
    began = time.monotonic()
    result = train(
        RewardOptions(
            input=str(labels),
            output=folder / "conditioned",
            model=str(start),
            principle_conditioned=True,
            constitution=str(both),
            **STEPS,
        )
    )
    took = time.monotonic() - began
    record = json.loads((folder / "conditioned" / "charter-train.json").read_text())
    assert record["principles"]["format"] == FORMAT
    assert record["principles"]["constitution"] == "fruit"
    assert record["principles"]["examples"] == 96 and record["principles"]["left_out"] == {}
    assert record["settings"]["principle_conditioned"] is True
    assert result.steps == STEPS["max_steps"]
    acc_kiwi, under_kiwi = _accuracy(folder, folder / "conditioned", held_out, kiwi, "c-kiwi")
    acc_mango, _ = _accuracy(folder, folder / "conditioned", held_out, mango, "c-mango")
    print(f"conditioned: kiwi {acc_kiwi:.0%}, mango {acc_mango:.0%} (trained in {took:.1f} s)")
    assert acc_kiwi >= 0.9 and acc_mango >= 0.9, (acc_kiwi, acc_mango)
    assert {r["principles"][0] for r in under_kiwi} == {"kiwi"}
    assert under_kiwi[0]["per_principle"][0]["principle_id"] == "kiwi"
    # a constitution other than the one it was trained on is labelled under, with a warning
    assert "trained on the principles of 'fruit'; 'just-kiwi' is another" in caplog.text

    # the same verdicts without the principle in the input: a principle-blind model
    train(RewardOptions(input=str(labels), output=folder / "blind", model=str(start), **STEPS))
    blind_kiwi, k = _accuracy(folder, folder / "blind", held_out, kiwi, "b-kiwi")
    blind_mango, m = _accuracy(folder, folder / "blind", held_out, mango, "b-mango")
    print(f"without the principle: kiwi {blind_kiwi:.0%}, mango {blind_mango:.0%}")
    # it ignores the constitution: the same p_a under both, so it is right under one
    # principle exactly where it is wrong under the other (its two accuracies sum to 1)
    assert [r["p_a"] for r in k] == [r["p_a"] for r in m]
    assert {r["principles"] == [] for r in k} == {True}

    # --principles 1 under the two-principle constitution: each pair's principle drawn as an
    # LLM judge's would be, and the pair ranked by it
    caplog.clear()
    acc, drawn = _accuracy(folder, folder / "conditioned", held_out, both, "c-both", seed=7)
    constitution = load_constitution(both)
    for r in drawn:
        expected = constitution.sample(1, derive_rng(7, r["id"], "label"))
        assert r["principles"] == [p.id for p in expected]
    assert {r["principles"][0] for r in drawn} == {"kiwi", "mango"}
    assert acc >= 0.9
    assert "another constitution" not in caplog.text
    # --principles 2: both rewards averaged per answer, each principle's verdict recorded
    _, two = _accuracy(folder, folder / "conditioned", held_out, both, "c-two", principles=2)
    assert {len(r["per_principle"]) for r in two} == {2}
    assert all(r["rewards"] is not None for r in two)


def test_principle_rows_show_the_principle_and_leave_out_ties(
    folder: Path, both: Path, labels: Path
) -> None:
    rows = [json.loads(line) for line in labels.read_text().splitlines()][:2]
    rows[0]["per_principle"][0]["p_a"] = 0.5  # a tie under kiwi
    rows[1]["per_principle"][0]["position_consistent"] = False
    rows.append({**rows[0], "per_principle": [], "id": "rm"})  # a reward model's labels
    rows.append({**rows[0], "per_principle": [{**rows[0]["per_principle"][0], "p_a": 0.8}]})
    path = folder / "mixed.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    found = principle_rows(str(path), "soft", str(both))
    assert found.left_out == {"tie": 1, "inconsistent": 1, "no_verdicts": 1}
    (row,) = found.rows
    rule = load_constitution(both).principle("kiwi").rule
    assert row["prompt"][0] == {"role": "system", "content": INSTRUCTION.format(rule=rule)}
    assert row["prompt"][1]["role"] == "user"
    assert row["p_chosen"] == pytest.approx(0.8)
    assert "p_chosen" not in principle_rows(str(path), "hard", str(both)).rows[0]
    # the pair's A/B become chosen/rejected by the principle's verdict
    assert row["chosen"][0]["content"] == rows[3]["response_a"]
    # a conversation's own system message stays, after the principle
    shown = with_principle([Message(role="system", content="Be brief.")], "Rule.")
    assert [m.role for m in shown] == ["system"] and shown[0].content.endswith("\n\nBe brief.")


def test_bad_inputs_are_one_clear_line(
    folder: Path, start: Path, both: Path, labels: Path, tmp_path: Path
) -> None:
    def opts(**kw: Any) -> RewardOptions:
        given = {"input": str(labels), "output": tmp_path / "out", "max_steps": 1, **kw}
        return RewardOptions(model=str(start), **given)

    # the records name 'fruit', which is no built-in: the file must be given
    with pytest.raises(ConfigError, match="not a built-in: give its file as --constitution"):
        train(opts(principle_conditioned=True))
    with pytest.raises(ConfigError, match=r"is not the constitution .* was labelled under"):
        train(opts(principle_conditioned=True, constitution="harmless"))
    with pytest.raises(ConfigError, match="goes with --principle-conditioned"):
        train(opts(constitution=str(both)))
    with pytest.raises(ConfigError, match="human choice names no principle"):
        train(opts(principle_conditioned=True, constitution=str(both), labels="human"))
    plain = tmp_path / "plain.jsonl"
    plain.write_text(json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"}) + "\n")
    with pytest.raises(InputError, match="no per-principle verdicts"):
        train(opts(input=str(plain), principle_conditioned=True))
    assert not (tmp_path / "out").exists()
    inside = tmp_path / "kept"
    inside.mkdir()
    kept = _constitution(inside / "fruit.json", "fruit", ["kiwi", "mango"])
    with pytest.raises(ConfigError, match="holds --constitution"):
        train(opts(output=inside, principle_conditioned=True, constitution=str(kept)))
    assert kept.exists()
    # through the CLI: one line, no traceback
    r = run_cli(
        "train", "reward", str(labels), "-o", str(tmp_path / "cli"), "--model", str(start),
        "--principle-conditioned",
    )  # fmt: skip
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "not a built-in" in r.stderr


def test_a_principle_conditioned_model_needs_a_principle(
    folder: Path, start: Path, labels: Path, both: Path, held_out: Path, tmp_path: Path
) -> None:
    model = folder / "conditioned"
    if not (model / "charter-train.json").exists():  # run alone: train a small one
        train(
            RewardOptions(
                input=str(labels),
                output=model,
                model=str(start),
                principle_conditioned=True,
                constitution=str(both),
                max_steps=2,
            )
        )
    # what label cannot ask of it, refused in one line
    r = run_cli(
        "label", str(held_out), "-o", str(tmp_path / "l.jsonl"), "-j", f"rm/{model}",
        "--constitution", str(both), "--cot",
    )  # fmt: skip
    assert r.returncode != 0 and "principle-conditioned reward model" in r.stderr
    assert "Traceback" not in r.stderr
    # score grades under the rubric's criterion, shown as the rubric's one principle
    out = tmp_path / "s.jsonl"
    answers = tmp_path / "answers.jsonl"
    answers.write_text(json.dumps({"id": "x", "prompt": "q", "response": "a kiwi"}) + "\n")
    charter.run("score", input=str(answers), output=out, judge=f"rm/{model}", rubric="honesty")
    backend = RewardModelBackend(f"rm/{model}", str(model), device="cpu")
    rule = load_rubric("honesty").as_constitution().principles[0].rule
    asked = [Message(role="user", content="q")]
    direct = asyncio.run(backend.reward(asked, "a kiwi", principle=rule)).value
    assert json.loads(out.read_text())["reward"] == pytest.approx(direct, abs=1e-5)
    with pytest.raises(ConfigError, match="principle-conditioned: it scores an answer under"):
        asyncio.run(backend.reward(asked, "a kiwi"))
    # as a plain reward (charter serve --reward, train rl --reward) it has no principle
    from charter.model import Model
    from charter.rewards import ModelReward

    with pytest.raises(ConfigError, match="principle-conditioned"):
        ModelReward(Model.from_spec(f"rm/{model}"))
    with pytest.raises(ConfigError, match="principle-conditioned"):
        train(
            RLOptions(
                input=str(answers), output=tmp_path / "rl", model=str(start), reward=[f"rm/{model}"]
            )
        )
