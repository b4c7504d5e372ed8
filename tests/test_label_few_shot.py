"""``label --few-shot``: worked comparisons shown before each question, to chat judges as
earlier turns and to base models (``openai-completions/``) inside the plain transcript."""

from __future__ import annotations

from pathlib import Path

import pytest

import charter
from charter.errors import CharterError
from charter.testing.server import FakeOpenAIServer
from tests.conftest import ROOT

SHOTS = ROOT / "examples" / "label-few-shot.yaml"


def pairs(tmp_path: Path) -> Path:
    src = tmp_path / "pairs.jsonl"
    src.write_text((ROOT / "examples/preference-pairs.jsonl").read_text().splitlines()[0] + "\n")
    return src


def run(tmp_path: Path, srv: FakeOpenAIServer, name: str, **options: object) -> None:
    options = {"judge": "openai/judge", "constitution": "harmless", "orders": "first", **options}
    summary = charter.run(
        "label",
        input=str(pairs(tmp_path)),
        output=str(tmp_path / f"{name}.jsonl"),
        base_url=srv.base_url,
        **options,
    )
    assert summary.failed == 0


def test_examples_come_before_the_question_as_answered_turns(tmp_path: Path) -> None:
    with FakeOpenAIServer(option_probs={"A": 0.6, "B": 0.4}) as srv:
        run(tmp_path, srv, "plain")
        (plain,) = srv.requests
        srv.requests.clear()
        run(tmp_path, srv, "shots", few_shot=str(SHOTS))
        (shots,) = srv.requests
        srv.requests.clear()
        run(tmp_path, srv, "base", few_shot=str(SHOTS), judge="openai-completions/base")
        (base,) = srv.requests
    roles = [m["role"] for m in shots["messages"]]
    assert roles == ["user", "assistant", "user", "assistant", "user"]
    assert [m["content"] for m in shots["messages"][1::2][:2]] == ["A", "B"]
    assert "neighbour's loud dog" in shots["messages"][0]["content"]
    assert shots["messages"][-1] == plain["messages"][-1]  # the real question is unchanged
    prompt = base["prompt"]
    assert prompt.count("\n\nAssistant: A\n\nHuman:") == 1 and "Assistant: B\n\nHuman:" in prompt
    assert prompt.endswith("Assistant: The answer is (")


def test_reasoning_is_shown_with_cot_and_the_settings_name_the_examples(tmp_path: Path) -> None:
    from charter.registry import find
    from charter.stages.label import LabelOptions

    with FakeOpenAIServer(option_probs={"A": 0.6, "B": 0.4}) as srv:
        run(tmp_path, srv, "cot", few_shot=str(SHOTS), cot=True, max_tokens=8)
        first = srv.requests[0]["messages"]
    assert first[1]["content"].startswith("B suggests harming an animal")
    assert first[1]["content"].endswith("\nAnswer: A")

    def settings(**extra: object) -> object:
        opts = LabelOptions(
            input="x.jsonl",
            output=Path("o.jsonl"),
            judge="mock/j",
            constitution="harmless",
            **extra,
        )
        return find("label").prepare(opts).settings  # type: ignore[union-attr]

    other = tmp_path / "shots.yaml"
    other.write_text(SHOTS.read_text().replace("Canberra is the capital", "Canberra is it"))
    assert settings() != settings(few_shot=str(SHOTS)) != settings(few_shot=str(other))


def test_bad_examples_are_one_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("label_examples:\n  - prompt: hi\n    response_a: x\n    response_b: y\n")
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text(SHOTS.read_text().replace("answer: B", "answer: B\n    principle_id: nope"))
    for path, message in (
        (bad, r"bad.yaml: label_examples\[0\]\.answer"),
        (unknown, "names principle 'nope', which harmless does not have"),
        (tmp_path / "missing.yaml", "few-shot file not found"),
    ):
        with pytest.raises(CharterError, match=message):
            charter.run(
                "label",
                input=str(pairs(tmp_path)),
                output=str(tmp_path / "o.jsonl"),
                judge="mock/j",
                constitution="harmless",
                few_shot=str(path),
            )


def test_auto_takes_the_constitutions_own_examples(tmp_path: Path) -> None:
    import yaml

    from charter.constitution import load_constitution
    from charter.stages.label import resolve_examples

    data = yaml.safe_load((ROOT / "src/charter/constitutions/harmless.yaml").read_text())
    data["label_examples"] = yaml.safe_load(SHOTS.read_text())["label_examples"]
    path = tmp_path / "with-examples.yaml"
    path.write_text(yaml.safe_dump(data))
    own = load_constitution(path)
    assert [ex.answer for ex in resolve_examples("auto", own)] == ["A", "B"]
    assert resolve_examples("auto", load_constitution("harmless")) == ()
    assert resolve_examples("none", own) == ()
