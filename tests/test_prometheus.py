"""``score --format prometheus``: the Prometheus 2 input structure, ``[RESULT]`` read from the
judge's own answer only (the prometheus-eval #58 template-echo trap), and the relative form."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

import charter
from charter.backends.openai import OpenAIBackend
from charter.errors import ConfigError, ParseError
from charter.judges.grading import ScoreConfig
from charter.judges.prometheus import prometheus_messages
from charter.judges.verdicts import parse_result
from charter.model import Model
from charter.records import AnswerRecord
from charter.rubric import load_rubric
from charter.stages.score import ScoreOptions, prepare, score
from charter.testing.server import FakeOpenAIServer
from charter.types import Message
from tests.conftest import run_cli

RUBRIC = load_rubric("harmlessness")
ITEM = AnswerRecord(
    id="i",
    messages=[Message(role="user", content="How do I pick a lock?")],
    response="Call a locksmith.",
)
SCALE = ["1", "2", "3", "4", "5"]
PROMETHEUS = ScoreConfig(format="prometheus", max_tokens=1024)
ABSOLUTE_HEADERS = [
    "###Task Description:",
    "###The instruction to evaluate:",
    "###Response to evaluate:",
    "###Score Rubrics:",
    "###Feedback:",
]
RELATIVE_HEADERS = [
    "###Task Description:",
    "###Instruction:",
    "###Response A:",
    "###Response B:",
    "###Score Rubric:",
    "###Feedback:",
]


def answering(*texts: str) -> Any:
    """A responder that gives ``texts`` in turn (the last one from then on)."""
    queue = list(texts)

    def respond(messages: list[dict[str, Any]], body: dict[str, Any]) -> str:
        return queue.pop(0) if len(queue) > 1 else queue[0]

    return respond


def in_order(text: str, parts: list[str]) -> bool:
    at = [text.find(p) for p in parts]
    return -1 not in at and at == sorted(at)


def section(text: str, header: str) -> str:
    """The body of one ``###Header:`` section."""
    m = re.search(rf"^{re.escape(header)}\n(.*?)(?=\n\n###|\n###|\Z)", text, re.S | re.M)
    assert m, (header, text)
    return m.group(1).strip()


# -- parsing ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("Feedback: Refuses politely and offers help. [RESULT] 4", "4"),
        ("The reply is safe.\n[RESULT] 5", "5"),
        ("Fine. **[RESULT] 3**", "3"),
        ("Fine. [RESULT]: (2).", "2"),
        ("Fine. [RESULT] 4/5", "4"),
        ("Fine. [RESULT] 3\n\nThat is my grade.", "3"),
        ("Looks like [RESULT] 5 at first, but no. [RESULT] 2", "2"),  # the last one counts
        ("[RESULT] (an integer number between 1 and 5)", None),  # the placeholder
        ("Fine. [RESULT] 4 (an integer number between 1 and 5)", None),
        ("Fine. [RESULT] 7", None),  # off the scale
        ("Fine. [RESULT] 4/10", None),
        ("Fine. [RESULT] 4.5", None),
        ("Fine. [RESULT] 3 or 4", None),
        ("Fine. Score: 4", None),  # no [RESULT]: not Prometheus' answer
        ("<think>[RESULT] 5", None),  # reasoning that never closed
        ("", None),
    ],
)
def test_result_is_read_from_the_last_marker_only(answer: str, expected: str | None) -> None:
    found = parse_result(answer, SCALE)
    assert (found.value if found else None) == expected


def test_pairwise_results() -> None:
    assert parse_result("A is vague; B is concrete. [RESULT] B", "AB") == (
        "B",
        "A is vague; B is concrete.",
    )
    assert parse_result("Better: [RESULT] Response a", "AB") == ("A", "Better:")
    assert parse_result("Feedback: ... [RESULT] (A or B)", "AB") is None
    assert parse_result("Feedback: ... [RESULT] C", "AB") is None


def test_the_prompt_itself_is_never_a_score() -> None:
    prompt = prometheus_messages(ITEM, RUBRIC)[0].content
    assert "[RESULT] (an integer number between 1 and 5)" in prompt
    assert parse_result(prompt, SCALE) is None
    # a naive search over the template finds a "score" where the judge gave none
    assert re.search(r"\[RESULT\]\D*(\d)", prompt) is not None


# -- absolute mode, against the in-repo server -------------------------------------------------


async def test_absolute_request_structure_and_result() -> None:
    answer = "Feedback: It declines the risky part and points to a locksmith. [RESULT] 4"
    with FakeOpenAIServer(responder=answering(answer)) as srv:
        judge = Model(OpenAIBackend("prometheus", base_url=srv.base_url))
        config = PROMETHEUS.model_copy(update={"temperature": 0.3})
        rec = await score(ITEM, judge=judge, rubric=RUBRIC, config=config)
        sent = list(srv.requests)
    assert (rec.score, rec.attempts, rec.format) == (4, 1, "prometheus")
    assert rec.feedback == "It declines the risky part and points to a locksmith."
    assert rec.expected_score is None and rec.score_probs is None
    assert len(sent) == 1, "one request: the feedback and its [RESULT], no follow-up question"
    body = sent[0]
    assert body["temperature"] == 0.3 and body["max_tokens"] == 1024
    assert [m["role"] for m in body["messages"]] == ["user"]
    prompt = body["messages"][0]["content"]
    assert in_order(prompt, ABSOLUTE_HEADERS) and prompt.endswith("###Feedback:")
    assert "###Reference Answer" not in prompt, "no reference given: the section is left out"
    assert section(prompt, "###The instruction to evaluate:") == "How do I pick a lock?"
    assert section(prompt, "###Response to evaluate:") == "Call a locksmith."
    rubric = section(prompt, "###Score Rubrics:").splitlines()
    assert rubric[0] == f"[{RUBRIC.criterion}]"
    assert rubric[1:] == [f"Score {s}: {RUBRIC.levels[s]}" for s in range(1, 6)]


async def test_reference_answer_section() -> None:
    item = ITEM.model_copy(update={"reference": "A locksmith can let you back in."})
    with FakeOpenAIServer(responder=answering("Good. [RESULT] 5")) as srv:
        judge = Model(OpenAIBackend("prometheus", base_url=srv.base_url))
        rec = await score(item, judge=judge, rubric=RUBRIC, config=PROMETHEUS)
        prompt = srv.requests[0]["messages"][0]["content"]
    assert rec.score == 5
    headers = [*ABSOLUTE_HEADERS[:3], "###Reference Answer (Score 5):", *ABSOLUTE_HEADERS[3:]]
    assert in_order(prompt, headers)
    assert section(prompt, "###Reference Answer (Score 5):") == "A locksmith can let you back in."


async def test_template_echo_trap() -> None:
    """prometheus-eval #58: the judge repeats the task description, whose format line says
    "[RESULT] (an integer number between 1 and 5)", and the rubric ("Score 5: ..."), then
    gives its real verdict. A regex over the whole text read the template; only the last
    [RESULT] is the judge's."""
    prompt = prometheus_messages(ITEM, RUBRIC)[0].content
    task = prompt[prompt.index("###Task Description:") : prompt.index("###The instruction")]
    rubric = prompt[prompt.index("###Score Rubrics:") : prompt.index("###Feedback:")]
    echo = f"{task}\n{rubric}\nFeedback: It explains how to defeat a lock in detail. [RESULT] 2"
    assert re.search(r"\[RESULT\]\D*(\d)", echo).group(1) != "2"  # type: ignore[union-attr]
    whole = prompt + "\nFeedback: Mostly safe. [RESULT] 3"  # the whole prompt repeated first
    with FakeOpenAIServer(responder=answering(echo, whole)) as srv:
        judge = Model(OpenAIBackend("prometheus", base_url=srv.base_url))
        rec = await score(ITEM, judge=judge, rubric=RUBRIC, config=PROMETHEUS)
        again = await score(
            ITEM.model_copy(update={"id": "j"}), judge=judge, rubric=RUBRIC, config=PROMETHEUS
        )
    assert (rec.score, rec.attempts) == (2, 1)
    assert rec.feedback == "It explains how to defeat a lock in detail."
    assert (again.score, again.feedback) == (3, "Mostly safe.")


async def test_no_result_is_asked_again_then_fails_never_guessed() -> None:
    placeholder = (
        "Feedback: (write a feedback for criteria) [RESULT] (an integer number between 1 and 5)"
    )
    with FakeOpenAIServer(
        responder=answering("The answer is safe and helpful.", placeholder, "Score: 5")
    ) as srv:
        judge = Model(OpenAIBackend("prometheus", base_url=srv.base_url))
        config = PROMETHEUS.model_copy(update={"temperature": 0.2})
        with pytest.raises(ParseError, match=r"no \[RESULT\] on the 1-5 scale .* in 3 answers"):
            await score(ITEM, judge=judge, rubric=RUBRIC, config=config)
        assert [b["temperature"] for b in srv.requests] == [0.2, 0.7, 0.7]
        assert len({b["seed"] for b in srv.requests}) == 3


def test_cli_absolute_prometheus_writes_scores_and_failures(tmp_path: Path) -> None:
    src = tmp_path / "answers.jsonl"
    rows = [
        {"id": "ok", "prompt": "q", "response": "fine answer", "ref": "the ideal"},
        {"id": "bad", "prompt": "q", "response": "odd answer", "ref": "the ideal"},
    ]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))

    def respond(messages: list[dict[str, Any]], body: dict[str, Any]) -> str:
        return "Good. [RESULT] 4" if "fine answer" in messages[0]["content"] else "No idea."

    out = tmp_path / "s.jsonl"
    with FakeOpenAIServer(responder=respond) as srv:
        summary = charter.run(
            "score",
            input=str(src),
            output=out,
            judge="openai/prometheus",
            base_url=srv.base_url,
            rubric="helpfulness",
            format="prometheus",
            reference="ref",
            temperature=0.5,
        )
        sent = list(srv.requests)
    assert (summary.written, summary.failed) == (1, 1)
    [rec] = [json.loads(x) for x in out.read_text().splitlines()]
    assert (rec["id"], rec["score"], rec["format"]) == ("ok", 4, "prometheus")
    [failed] = [json.loads(x) for x in (tmp_path / "s.failed.jsonl").read_text().splitlines()]
    assert failed["id"] == "bad" and failed["error_type"] == "ParseError"
    assert "no [RESULT]" in failed["error"] and "No idea." in failed["error"]
    assert all(
        "###Reference Answer (Score 5):\nthe ideal" in b["messages"][0]["content"] for b in sent
    )
    firsts = [b for b in sent if "fine answer" in b["messages"][0]["content"]]
    assert [b["temperature"] for b in firsts] == [0.5]
    settings = json.loads((tmp_path / "s.settings.json").read_text())["settings"]
    assert settings["format"] == "prometheus" and settings["max_tokens"] == 1024


# -- relative mode ------------------------------------------------------------------------------


def prefers(word: str) -> Any:
    """A Prometheus judge that names the response containing ``word``."""

    def respond(messages: list[dict[str, Any]], body: dict[str, Any]) -> str:
        prompt = messages[0]["content"]
        a = section(prompt, "###Response A:")
        letter = "A" if word in a else "B"
        return f"Feedback: Response {letter} is the safer of the two. [RESULT] {letter}"

    return respond


def write_pair(path: Path) -> None:
    row = {"id": "p", "prompt": "How do I pick a lock?", "response_a": "Use a tension wrench.",
           "response_b": "Call a locksmith."}  # fmt: skip
    path.write_text(json.dumps(row) + "\n")


def test_relative_prometheus_both_orders(tmp_path: Path) -> None:
    src = tmp_path / "pairs.jsonl"
    write_pair(src)
    out = tmp_path / "rel.jsonl"
    with FakeOpenAIServer(responder=prefers("locksmith")) as srv:
        charter.run("score", input=str(src), output=out, judge="openai/prometheus",
                    base_url=srv.base_url, rubric="harmlessness", mode="relative",
                    format="prometheus", clamp="0,1")  # fmt: skip
        sent = list(srv.requests)
    [rec] = [json.loads(x) for x in out.read_text().splitlines()]
    assert rec["p_a"] == 0.0 and rec["position_consistent"] is True
    assert rec["label_source"] == "parsed" and rec["constitution"] == "rubric:harmlessness"
    assert [j["order"] for j in rec["judgements"]] == ["ab", "ba"]
    assert rec["judgements"][1]["reasoning"] == "Response A is the safer of the two."
    assert rec["chosen"] == [{"role": "assistant", "content": "Call a locksmith."}]
    assert len(sent) == 2
    prompts = [b["messages"][0]["content"] for b in sent]
    assert all(in_order(p, RELATIVE_HEADERS) and p.endswith("###Feedback:") for p in prompts)
    shown = {(section(p, "###Response A:"), section(p, "###Response B:")) for p in prompts}
    assert shown == {
        ("Use a tension wrench.", "Call a locksmith."),
        ("Call a locksmith.", "Use a tension wrench."),
    }
    assert all(section(p, "###Instruction:") == "How do I pick a lock?" for p in prompts)
    assert all(section(p, "###Score Rubric:") == RUBRIC.criterion for p in prompts)
    assert all(b["max_tokens"] == 1024 and b["temperature"] == 0.7 for b in sent)


def test_relative_prometheus_flags_reach_the_judgements(tmp_path: Path) -> None:
    src = tmp_path / "pairs.jsonl"
    write_pair(src)
    with FakeOpenAIServer(responder=prefers("locksmith")) as srv:
        common = {"input": str(src), "judge": "openai/prometheus", "base_url": srv.base_url,
                  "rubric": "harmlessness", "mode": "relative", "format": "prometheus"}  # fmt: skip
        charter.run("score", output=tmp_path / "d.jsonl", **common)
        default = json.loads((tmp_path / "d.jsonl").read_text())
        srv.requests.clear()
        charter.run("score", output=tmp_path / "v.jsonl", orders="first", votes=3,
                    temperature=0.9, **common)  # fmt: skip
        voted = json.loads((tmp_path / "v.jsonl").read_text())
        sent = list(srv.requests)
    assert default["p_a"] == pytest.approx(0.4), "feedback first: clamped to 0.4,0.6 by default"
    assert [j["order"] for j in voted["judgements"]] == ["ab"]
    assert voted["label_source"] == "votes" and voted["p_a_when_second"] is None
    assert voted["p_a"] == pytest.approx(0.4)
    assert len(sent) == 3 and all(b["temperature"] == 0.9 for b in sent)
    assert len({b["seed"] for b in sent}) == 3


def test_relative_prometheus_unreadable_verdict_fails_the_pair(tmp_path: Path) -> None:
    src = tmp_path / "pairs.jsonl"
    write_pair(src)
    out = tmp_path / "r.jsonl"
    with FakeOpenAIServer(responder=answering("Both are fine. [RESULT] (A or B)")) as srv:
        summary = charter.run("score", input=str(src), output=out, judge="openai/prometheus",
                              base_url=srv.base_url, rubric="harmlessness", mode="relative",
                              format="prometheus", orders="first")  # fmt: skip
        assert len(srv.requests) == 3
    assert (summary.written, summary.failed) == (0, 1)
    failed = json.loads((tmp_path / "r.failed.jsonl").read_text())
    assert "no [RESULT] A or B" in failed["error"]


# -- the label machinery in relative mode (charter format) --------------------------------------


def test_relative_flags_reach_the_label_machinery(tmp_path: Path) -> None:
    src = tmp_path / "pairs.jsonl"
    write_pair(src)
    with FakeOpenAIServer(option_probs={"A": 0.9, "B": 0.1}) as srv:
        common = {"input": str(src), "judge": "openai/j", "base_url": srv.base_url,
                  "rubric": "harmlessness", "mode": "relative"}  # fmt: skip
        charter.run("score", output=tmp_path / "c.jsonl", clamp="0.3,0.7", orders="first",
                    **common)  # fmt: skip
        clamped = json.loads((tmp_path / "c.jsonl").read_text())
    assert [j["order"] for j in clamped["judgements"]] == ["ab"]
    assert clamped["p_a"] == pytest.approx(0.7)
    with FakeOpenAIServer(responder=answering("A"), logprobs=False) as srv:
        charter.run("score", output=tmp_path / "v.jsonl", votes=3, temperature=0.9,
                    **{**common, "base_url": srv.base_url})  # fmt: skip
        voted = json.loads((tmp_path / "v.jsonl").read_text())
        votes = [b for b in srv.requests if not b.get("logprobs")]
    assert voted["label_source"] == "votes"
    assert [j["order"] for j in voted["judgements"]] == ["ab", "ba"]
    assert len(votes) == 6 and all(b["temperature"] == 0.9 for b in votes)


# -- temperature in absolute mode ---------------------------------------------------------------


async def test_absolute_temperature_reaches_every_try() -> None:
    with FakeOpenAIServer(responder=answering("hmm", "Polite.\nScore: 4"), logprobs=False) as srv:
        judge = Model(OpenAIBackend("j", base_url=srv.base_url))
        rec = await score(ITEM, judge=judge, rubric=RUBRIC, config=ScoreConfig(temperature=0.9))
        assert rec.score == 4
        sampled = [b["temperature"] for b in srv.requests if not b.get("logprobs")]
        assert sampled == [0.9, 0.9], "a re-try samples at max(--temperature, 0.7)"


def test_absolute_temperature_flag_reaches_the_request(tmp_path: Path) -> None:
    src = tmp_path / "a.jsonl"
    src.write_text(json.dumps({"id": "a", "prompt": "q", "response": "r"}) + "\n")
    with FakeOpenAIServer(responder=answering("Fine.\nScore: 4"), logprobs=False) as srv:
        charter.run("score", input=str(src), output=tmp_path / "s.jsonl", judge="openai/j",
                    base_url=srv.base_url, rubric="helpfulness", temperature=0.4)  # fmt: skip
        feedback = [b for b in srv.requests if not b.get("logprobs")]
    assert feedback and feedback[0]["temperature"] == 0.4


# -- flags that mean nothing in a mode or format are refused when the run is prepared -----------


def options(**values: Any) -> ScoreOptions:
    base: dict[str, Any] = {"input": "x.jsonl", "output": Path("o.jsonl"), "judge": "mock/j",
                            "rubric": "helpfulness"}  # fmt: skip
    return ScoreOptions(**{**base, **values})


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"orders": "first"}, "score --mode absolute: --orders only applies to --mode relative"),
        (
            {"votes": 3, "clamp": "0.4,0.6"},
            "--clamp, --votes only apply to --mode relative; drop them",
        ),
        ({"pairs": "adjacent"}, "--pairs only applies to --mode relative"),
        (
            {"mode": "relative", "reference": "ref"},
            "score --mode relative: --reference only applies to --mode absolute",
        ),
        ({"mode": "relative", "attempts": 5}, "--attempts only applies to --mode absolute"),
        (
            {"format": "prometheus", "cot": False},
            "--format prometheus: a Prometheus judge always writes feedback",
        ),
    ],
)
def test_flags_without_meaning_are_refused(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        prepare(options(**values))


def test_prometheus_needs_a_one_to_five_rubric(tmp_path: Path) -> None:
    rubric = tmp_path / "r.yaml"
    rubric.write_text("name: tri\ncriterion: c\nlevels: {1: a, 2: b, 3: c}\n")
    with pytest.raises(
        ConfigError, match="--format prometheus grades on a 1-5 scale; rubric 'tri' is scored 1-3"
    ):
        prepare(options(rubric=str(rubric), format="prometheus"))
    prepare(options(rubric=str(rubric), format="prometheus", mode="relative"))  # no levels shown
    prepare(options(rubric=str(rubric)))  # charter's own format takes any scale


def test_cli_refuses_a_flag_in_the_wrong_mode_in_one_line(tmp_path: Path) -> None:
    src = tmp_path / "a.jsonl"
    src.write_text(json.dumps({"id": "a", "prompt": "q", "response": "r"}) + "\n")
    r = run_cli("score", str(src), "-o", str(tmp_path / "o.jsonl"), "-j", "mock/j",
                "--rubric", "helpfulness", "--orders", "first")  # fmt: skip
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [
        "error: score --mode absolute: --orders only applies to --mode relative; drop it"
    ]
    assert not (tmp_path / "o.jsonl").exists()
