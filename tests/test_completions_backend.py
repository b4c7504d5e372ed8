"""``openai-completions/NAME``: a base model behind ``/v1/completions``, against the in-repo
server (its completions endpoint answers in the legacy shape base-model servers use)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import charter
from charter.backends.completions import ANSWER_PREFIX, plain_prompt
from charter.testing.server import FakeOpenAIServer
from charter.types import Message
from tests.conftest import ROOT


def test_plain_prompt_is_a_transcript_left_open_for_the_assistant() -> None:
    messages = [
        Message(role="system", content="Be brief."),
        Message(role="user", content="Hi"),
        Message(role="assistant", content="Hello."),
        Message(role="user", content="2+2?"),
    ]
    assert plain_prompt(messages) == (
        "Be brief.\n\nHuman: Hi\n\nAssistant: Hello.\n\nHuman: 2+2?\n\nAssistant:"
    )
    lead = Message(role="assistant", content=ANSWER_PREFIX)
    assert plain_prompt([*messages[1:2], lead]).endswith("Assistant: The answer is (")


def probs(messages: list[dict[str, Any]]) -> dict[str, float]:
    """A base model that prefers A, asked at the position the lead-in opens."""
    prompt = messages[0]["content"]
    return {"A": 0.7, "B": 0.2, "The": 0.1} if prompt.endswith(ANSWER_PREFIX) else {"The": 1.0}


def test_label_and_respond_with_a_base_model(tmp_path: Path) -> None:
    pairs = tmp_path / "pairs.jsonl"
    rows = (ROOT / "examples/preference-pairs.jsonl").read_text().splitlines()[:2]
    pairs.write_text("\n".join(rows) + "\n")
    with FakeOpenAIServer(option_probs=probs) as srv:
        summary = charter.run(
            "label",
            input=str(pairs),
            output=str(tmp_path / "labels.jsonl"),
            judge="openai-completions/base",
            base_url=srv.base_url,
            constitution="harmless",
        )
        assert summary.written == 2 and summary.failed == 0
        asked = [r for r in srv.requests if "prompt" in r]
        assert asked and len(asked) == len(srv.requests)  # nothing went to chat/completions
        assert all("messages" not in r for r in asked)
        assert all(r["prompt"].endswith("Assistant: The answer is (") for r in asked)
        assert all(isinstance(r["logprobs"], int) and r["logprobs"] >= 1 for r in asked)
        assert all("top_logprobs" not in r for r in asked)
        srv.requests.clear()
        charter.run(
            "respond",
            input=str(pairs),
            output=str(tmp_path / "answers.jsonl"),
            model="openai-completions/base",
            base_url=srv.base_url,
            max_tokens=8,
        )
        (request,) = srv.requests[:1]
        assert request["prompt"].endswith("\n\nAssistant:") and "\n\nHuman:" in request["stop"]
    labels = [json.loads(x) for x in (tmp_path / "labels.jsonl").read_text().splitlines()]
    # A shown first: 0.7/0.9; A shown second: B's 0.2/0.9 -> P(A) = (7/9 + 2/9) / 2 = 0.5
    assert {x["label_source"] for x in labels} == {"logprobs"}
    assert all(abs(x["p_a_when_first"] - 7 / 9) < 1e-9 for x in labels)
    assert all(x["judge"] == "openai-completions/base" for x in labels)
    answers = [json.loads(x) for x in (tmp_path / "answers.jsonl").read_text().splitlines()]
    assert all(a["responses"][0].startswith("Echo:") for a in answers)
