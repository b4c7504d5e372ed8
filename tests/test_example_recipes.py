"""The recipes in examples/ beyond CAI (issue 17, point 5) run end to end: every model stage on
the mock backend, every train stage on a tiny Llama, outputs under a temporary folder. The
same files run on SmolLM2 as they are (``charter run examples/NAME.yaml``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from charter.recipe import load_recipe
from charter.testing.tiny import tiny_causal_lm

ROOT = Path(__file__).resolve().parents[1]
MODEL_KEYS = ("model", "judge", "user_model")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_causal_lm(tmp_path_factory.mktemp("tiny") / "lm")


def offline(name: str, tmp: Path, tiny: Path) -> Path:
    """The example recipe with smollm2 replaced by mock models (by role) and, in train stages,
    by the tiny model; runs/ and examples/ paths made absolute under ``tmp`` and the repo."""
    data = yaml.safe_load((ROOT / "examples" / f"{name}.yaml").read_text())

    def path(value: Any) -> Any:
        if isinstance(value, str):
            for prefix in ("", "hf/", "rm/"):
                if value.startswith(prefix + "runs/"):
                    return prefix + str(tmp / value[len(prefix) :])
                if value.startswith(prefix + "examples/"):
                    return prefix + str(ROOT / value[len(prefix) :])
        return value

    for stage in data["stages"]:
        for key, value in stage.items():
            stage[key] = path(value)
        for key in MODEL_KEYS:
            if stage.get(key) == "smollm2":
                stage[key] = str(tiny) if stage["stage"] == "train" else f"mock/{key}"
    out = tmp / f"{name}.yaml"
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return out


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def run(recipe: Path) -> str:
    from charter.cli import app

    result = CliRunner().invoke(app, ["run", str(recipe), "-q"])
    assert result.exit_code == 0, result.output
    return result.stderr


def test_self_rewarding(tmp_path: Path, tiny: Path) -> None:
    log = run(offline("self-rewarding", tmp_path, tiny))
    runs = tmp_path / "runs" / "self-rewarding"
    assert "stage 3/4: select" in log and "trained dpo:" in log
    best = lines(runs / "best-of-n.jsonl")
    scores = lines(runs / "scores.jsonl")
    assert len(best) == 4 and len(scores) == 16
    for row in best:
        mine = [s for s in scores if s["id"].startswith(row["id"] + ":")]
        assert row["score"] == max(s["expected_score"] for s in mine)
    pairs = lines(runs / "pairs.jsonl")
    assert pairs and all(p["margin"] >= 0.25 for p in pairs)
    assert (runs / "dpo" / "config.json").exists()
    again = run(offline("self-rewarding", tmp_path, tiny))
    assert "4 already done" in again and "16 already done" in again


def test_deliberative(tmp_path: Path, tiny: Path) -> None:
    log = run(offline("deliberative", tmp_path, tiny))
    runs = tmp_path / "runs" / "deliberative"
    records = lines(runs / "deliberations.jsonl")
    assert len(records) == 4 and all(len(r["completions"]) == 2 for r in records)
    sft = lines(runs / "sft.jsonl")
    kept = [c for r in records for c in r["completions"] if c["kept"]]
    assert len(sft) == len(kept) >= 1 and all(c["expected_score"] >= 1.5 for c in kept)
    assert all(row["messages"][0]["role"] == "user" for row in sft), "no spec in the prompt"
    assert "trained sft:" in log and (runs / "sft-model" / "config.json").exists()


def test_dialogues(tmp_path: Path, tiny: Path) -> None:
    run(offline("dialogues", tmp_path, tiny))
    runs = tmp_path / "runs" / "dialogues"
    chats = lines(runs / "conversations.jsonl")
    assert len(chats) == 4
    for chat in chats:
        roles = [m["role"] for m in chat["messages"]]
        assert roles == ["user", "assistant", "user", "assistant", "user"]
        assert len(chat["responses"]) == 2 and chat["dialogue"]["user_model"] == "mock/user_model"
        assert chat["dialogue"]["persona"]
    revisions = {r["id"]: r for r in lines(runs / "revisions.jsonl")}
    labels = {r["id"]: r for r in lines(runs / "labels.jsonl")}
    for chat in chats:
        assert revisions[chat["id"]]["initial"] == chat["responses"][0]
        (pair,) = [r for k, r in labels.items() if k.startswith(chat["id"])]
        assert pair["prompt"] == chat["messages"]
        assert {pair["response_a"], pair["response_b"]} == set(chat["responses"])


def test_collective(tmp_path: Path, tiny: Path) -> None:
    """from-polis on the shipped conversation, label under it and under harmless, compare."""
    run(offline("collective", tmp_path, tiny))
    made = tmp_path / "runs" / "collective"
    constitution = yaml.safe_load((made / "constitution.yaml").read_text())
    assert len(constitution["principles"]) == 8
    assert all(p["provenance"]["comment_ids"] for p in constitution["principles"])
    assert "CC BY 4.0" in constitution["description"]
    collective = lines(made / "labels-collective.jsonl")
    assert {r["constitution"] for r in collective} == {constitution["name"]}
    compared = json.loads((made / "compare" / "compare.json").read_text())
    assert compared["common_pairs"] == 16 and compared["human"]["n"] == 16
    assert (made / "compare" / "report.html").exists()


def test_the_examples_validate_as_written() -> None:
    for name in ("self-rewarding", "deliberative", "dialogues", "collective"):
        kinds = [step.job.name for step in load_recipe(ROOT / "examples" / f"{name}.yaml")]
        assert kinds[0] in ("respond", "deliberate", "from-polis")
