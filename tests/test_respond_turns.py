"""``respond --turns N --user-model SPEC``: a second model plays the user, and the record has
the shape revise, label, score and select already take."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

import charter
from charter.backends.mock import MockBackend, register_mock, unregister_mock
from charter.errors import ConfigError, InputError
from charter.seeds import sample_seed
from charter.stages.respond import (
    DEFAULT_PERSONA,
    clean_user_turn,
    load_personas,
    read_dialogues,
)
from charter.testing.server import FakeOpenAIServer
from charter.types import GenerateConfig, Message
from tests.conftest import run_cli

TRIP = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Plan a trip to Rome"},
]


def policy_text(messages: Sequence[Message], config: GenerateConfig) -> str:
    """``A<k> #<seed>``: the k-th assistant turn, and the seed it was sampled with."""
    return f"A{sum(m.role == 'assistant' for m in messages) + 1} #{config.seed}"


def user_text(messages: Sequence[Message], config: GenerateConfig) -> str:
    """A user turn as models write them: labelled and padded (``question <k>`` for the k-th
    user turn; the user model's view has the assistant's turns as ``user`` messages)."""
    return f"  User: question {sum(m.role == 'user' for m in messages) + 1}  "


@pytest.fixture
def mocks() -> Iterator[tuple[MockBackend, MockBackend]]:
    policy = register_mock(MockBackend("mock/turns-policy", responder=policy_text))
    user = register_mock(MockBackend("mock/turns-user", responder=user_text))
    yield policy, user
    unregister_mock(policy.name)
    unregister_mock(user.name)


def write(path: Path, rows: Sequence[object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def roles(messages: Sequence[Message | dict[str, Any]]) -> list[str]:
    return [m.role if isinstance(m, Message) else m["role"] for m in messages]


def converse(tmp_path: Path, rows: Sequence[object], **options: Any) -> Path:
    src = write(tmp_path / "p.jsonl", rows)
    out = tmp_path / "r.jsonl"
    options = {"model": "mock/turns-policy", "user_model": "mock/turns-user", **options}
    charter.run("respond", input=str(src), output=out, **options)
    return out


def test_three_turns_two_final_answers(
    tmp_path: Path, mocks: tuple[MockBackend, MockBackend]
) -> None:
    policy, user = mocks
    row = {"id": "q", "messages": TRIP, "persona": "a retired teacher", "goal": "a cheap plan"}
    out = converse(tmp_path, [row], turns=3, n=2, seed=5)
    (rec,) = lines(out)
    earlier = [c.config.seed for c in policy.calls[:2]]
    assert [m["content"] for m in rec["messages"]] == [
        "Be brief.",
        "Plan a trip to Rome",
        f"A1 #{earlier[0]}",
        "question 2",
        f"A2 #{earlier[1]}",
        "question 3",
    ]
    final = [sample_seed(5, "q", i) for i in range(2)]  # as single-turn respond samples
    assert rec["seeds"] == final and rec["responses"] == [f"A3 #{s}" for s in final]
    user_seeds = [c.config.seed for c in user.calls]
    assert len({*earlier, *final, *user_seeds}) == 6
    assert rec["model"] == "mock/turns-policy" and rec["models"] is None
    assert rec["dialogue"] == {
        "turns": 3,
        "user_model": "mock/turns-user",
        "persona": "a retired teacher",
        "goal": "a cheap plan",
        "finish_reasons": ["stop", "stop"],
        "user_finish_reasons": ["stop", "stop"],
    }
    assert rec["usage"]["requests"] == 6  # 2 earlier answers, 2 user turns, 2 final answers
    for call in policy.calls:  # the policy sees the conversation itself, never the persona
        assert call.messages[0].content == "Be brief." and call.messages[-1].role == "user"
        assert not any("retired teacher" in m.content for m in call.messages)
    first, second = (c.messages for c in user.calls)
    system = first[0].content
    assert first[0].role == "system" and "You are the user" in system
    assert "a retired teacher" in system and "a cheap plan" in system and "Be brief." in system
    assert [(m.role, m.content) for m in first[1:]] == [
        ("assistant", "Plan a trip to Rome"),
        ("user", f"A1 #{earlier[0]}"),
    ]
    assert roles(second) == ["system", "assistant", "user", "assistant", "user"]
    assert second[3].content == "question 2" and second[4].content == f"A2 #{earlier[1]}"


def test_row_persona_beats_the_file_and_the_pick_is_fixed_by_seed_and_id(
    tmp_path: Path,
) -> None:
    personas = tmp_path / "personas.jsonl"
    write(personas, ["a student", {"persona": "a lawyer", "goal": "win the case"}, "a chef"])
    loaded = load_personas(personas)
    assert [(p.persona, p.goal) for p in loaded] == [
        ("a student", None),
        ("a lawyer", "win the case"),
        ("a chef", None),
    ]
    rows = [
        {"id": "own", "prompt": "x", "persona": "a pilot"},
        {"id": "goal-only", "prompt": "y", "goal": "land safely"},
        *({"id": f"r{i}", "prompt": f"q{i}"} for i in range(12)),
    ]
    src = write(tmp_path / "p.jsonl", rows)
    recs = {r.id: r for r in read_dialogues(src, personas=loaded, seed=1)}
    assert (recs["own"].persona, recs["own"].goal) == ("a pilot", None)
    assert recs["goal-only"].goal == "land safely"
    assert recs["goal-only"].persona in {p.persona for p in loaded}
    picked = {rid: (r.persona, r.goal) for rid, r in recs.items() if rid.startswith("r")}
    assert len(set(picked.values())) > 1 and set(picked.values()) <= {
        (p.persona, p.goal) for p in loaded
    }
    backwards = write(tmp_path / "b.jsonl", rows[::-1])  # by id, not by place in the file
    again = {r.id: (r.persona, r.goal) for r in read_dialogues(backwards, personas=loaded, seed=1)}
    assert {k: again[k] for k in picked} == picked
    other = {r.id: r.persona for r in read_dialogues(src, personas=loaded, seed=2)}
    assert any(other[k] != picked[k][0] for k in picked)
    (plain,) = read_dialogues(write(tmp_path / "one.jsonl", [{"prompt": "z"}]))
    assert (plain.persona, plain.goal) == (DEFAULT_PERSONA.persona, None)
    yaml_file = tmp_path / "personas.yaml"
    yaml_file.write_text("- a student\n- persona: a lawyer\n  goal: win the case\n- a chef\n")
    assert load_personas(yaml_file) == loaded


def test_revise_label_and_sft_take_the_conversation(
    tmp_path: Path, mocks: tuple[MockBackend, MockBackend]
) -> None:
    sft = tmp_path / "sft.jsonl"
    out = converse(tmp_path, [{"id": "q", "prompt": "Plan a trip"}], turns=2, n=2, sft=sft)
    (rec,) = lines(out)
    assert roles(rec["messages"]) == ["user", "assistant", "user"]
    reviser = register_mock(MockBackend("mock/turns-reviser", outputs=["critique", "revised"]))
    try:
        charter.run(
            "revise",
            input=str(out),
            output=tmp_path / "rev.jsonl",
            model=reviser.name,
            constitution="harmless",
            rounds=1,
            few_shot="none",
        )
    finally:
        unregister_mock(reviser.name)
    (revised,) = lines(tmp_path / "rev.jsonl")
    assert revised["initial"] == rec["responses"][0] and revised["initial_source"] == "input"
    assert revised["prompt"] == rec["messages"]
    assert revised["messages"] == [*rec["messages"], {"role": "assistant", "content": "revised"}]
    critique = reviser.calls[0].messages  # y0 is the final answer to the whole conversation
    assert [m.model_dump() for m in critique[: len(rec["messages"]) + 1]] == [
        *rec["messages"],
        {"role": "assistant", "content": rec["responses"][0]},
    ]
    labels = tmp_path / "labels.jsonl"
    charter.run("label", input=str(out), output=labels, judge="mock/j", constitution="harmless")
    (label,) = lines(labels)
    assert label["prompt"] == rec["messages"]
    assert {label["response_a"], label["response_b"]} == set(rec["responses"])
    assert [row["messages"] for row in lines(sft)] == [
        [*rec["messages"], {"role": "assistant", "content": answer}] for answer in rec["responses"]
    ]


def test_single_turn_output_is_unchanged_and_old_outputs_resume(
    tmp_path: Path, mocks: tuple[MockBackend, MockBackend]
) -> None:
    src = write(tmp_path / "p.jsonl", [{"id": "a", "prompt": "hi"}, {"id": "b", "prompt": "yo"}])
    out = tmp_path / "r.jsonl"
    charter.run("respond", input=str(src), output=out, model="mock/turns-policy", limit=1)
    seed = sample_seed(0, "a", 0)
    first = out.read_text().splitlines()[0]
    assert first.startswith(
        '{"id":"a","messages":[{"role":"user","content":"hi"}],'
        f'"responses":["A1 #{seed}"],"finish_reasons":["stop"],"model":"mock/turns-policy",'
        f'"models":null,"seeds":[{seed}],"usage":{{'
    )
    assert '"dialogue"' not in first and list(json.loads(first))[-2:] == ["usage", "input_hash"]
    settings_file = tmp_path / "r.settings.json"
    data = json.loads(settings_file.read_text())
    assert {k: data["settings"][k] for k in ("turns", "user_model", "personas")} == {
        "turns": 1,
        "user_model": None,
        "personas": None,
    }
    for key in ("turns", "user_model", "personas"):  # as a charter before --turns wrote it
        del data["settings"][key]
    settings_file.write_text(json.dumps(data))
    again = charter.run("respond", input=str(src), output=out, model="mock/turns-policy")
    assert (again.written, again.skipped) == (1, 1)


def test_resume_skips_every_conversation(
    tmp_path: Path, mocks: tuple[MockBackend, MockBackend]
) -> None:
    policy, user = mocks
    rows = [{"id": f"q{i}", "prompt": f"question {i}"} for i in range(3)]
    out = converse(tmp_path, rows, turns=2)
    before = out.read_text()
    sent = len(policy.calls) + len(user.calls)
    summary = charter.run(
        "respond",
        input=str(tmp_path / "p.jsonl"),
        output=out,
        model="mock/turns-policy",
        user_model="mock/turns-user",
        turns=2,
    )
    assert (summary.written, summary.skipped, summary.failed) == (0, 3, 0)
    assert out.read_text() == before and len(policy.calls) + len(user.calls) == sent


def test_an_empty_user_turn_fails_its_record(tmp_path: Path) -> None:
    def mute_on_b(messages: Sequence[Message], config: GenerateConfig) -> str:
        return "User:  " if "for b" in messages[1].content else "fine"

    user = register_mock(MockBackend("mock/turns-mute", responder=mute_on_b))
    try:
        rows = [{"id": "a", "prompt": "for a"}, {"id": "b", "prompt": "for b"}]
        out = converse(tmp_path, rows, model="mock/t", user_model=user.name, turns=2)
    finally:
        unregister_mock(user.name)
    assert [r["id"] for r in lines(out)] == ["a"]
    (failed,) = lines(tmp_path / "r.failed.jsonl")
    assert failed["id"] == "b" and failed["stage"] == "respond"
    assert failed["error_type"] == "ParseError"
    assert "mock/turns-mute wrote an empty user turn after assistant turn 1 of 2" in failed["error"]
    assert failed["input"]["persona"] == DEFAULT_PERSONA.persona


def test_a_cut_off_earlier_turn_is_recorded_and_said(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="charter"):
        out = converse(
            tmp_path, [{"prompt": "a question of six words"}], model="mock/t", user_model="mock/u",
            turns=2, max_tokens=4,
        )  # fmt: skip
    (rec,) = lines(out)
    assert rec["dialogue"]["finish_reasons"] == rec["dialogue"]["user_finish_reasons"] == ["length"]
    assert "1 conversation(s) in" in caplog.text and "earlier turn cut off" in caplog.text


def test_user_turns_are_cleaned() -> None:
    assert clean_user_turn("  User: hello there \n") == "hello there"
    assert clean_user_turn("**User:** what about *User: x*?") == "what about *User: x*?"
    assert clean_user_turn('Human: "Can you say more?"') == "Can you say more?"
    assert clean_user_turn("Sure.\nAssistant: Here it is.") == "Sure."
    assert clean_user_turn("Username: bob") == "Username: bob"
    assert clean_user_turn("User:") == ""
    assert clean_user_turn('"User: can you elaborate?"') == "can you elaborate?"
    assert clean_user_turn("My list:\nAI: artificial intelligence") == (
        "My list:\nAI: artificial intelligence"
    ), "only an Assistant: label starts the assistant's turn"


def test_refusals_are_one_line_before_any_request(tmp_path: Path) -> None:
    src = write(tmp_path / "p.jsonl", [{"id": "a", "prompt": "hi"}])
    bad_row = write(tmp_path / "bad.jsonl", [{"id": "a", "prompt": "hi", "persona": ["x"]}])
    files = {
        "not-a-list.yaml": "persona: a chef\n",
        "empty.yaml": "[]\n",
        "nothing.yaml": "# no personas yet\n",
        "ok.yaml": "- a chef\n",
        "blank.yaml": "- a chef\n- persona: '  '\n",
        "typo.jsonl": '"a chef"\n{"persona": "a pilot", "goals": "fly"}\n',
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    out = tmp_path / "r.jsonl"
    two = {"turns": 2, "user_model": "mock/u"}
    cases: list[tuple[dict[str, Any], str]] = [
        ({"turns": 3}, "--turns 3 needs --user-model"),
        ({"user_model": "mock/u"}, "--turns is 1"),
        ({"personas": tmp_path / "empty.yaml"}, "--personas are played"),
        ({**two, "model": "mock/a,mock/b"}, "takes one --model"),
        ({**two, "user_model": "mock/u,mock/v"}, "--user-model takes one model spec"),
        ({**two, "personas": tmp_path / "missing.yaml"}, "missing.yaml: not found"),
        ({**two, "personas": tmp_path / "not-a-list.yaml"}, "expected a list of personas"),
        ({**two, "personas": tmp_path / "empty.yaml"}, "empty.yaml: holds no personas"),
        ({**two, "personas": tmp_path / "nothing.yaml"}, "nothing.yaml: holds no personas"),
        (
            {**two, "personas": tmp_path / "ok.yaml", "sft": tmp_path / "ok.yaml"},
            "ok.yaml is the --personas file this run reads",
        ),
        ({**two, "personas": tmp_path / "blank.yaml"}, "blank.yaml: entry 2: 'persona'"),
        ({**two, "personas": tmp_path / "typo.jsonl"}, "typo.jsonl:2: unknown key 'goals'"),
    ]
    for options, why in cases:
        options = {"model": "mock/t", **options}
        with pytest.raises(ConfigError) as refused:
            charter.run("respond", input=str(src), output=out, **options)
        assert why in str(refused.value) and "\n" not in str(refused.value), options
    assert not out.exists()
    with pytest.raises(InputError, match=r"bad\.jsonl:1: field 'persona' must be a string"):
        charter.run("respond", input=str(bad_row), output=out, model="mock/t", **two)
    # The command line prints each as one line and exits 2 (three of them, to keep it quick).
    argv = [
        ["--turns", "3"],
        ["--turns", "2", "--user-model", "mock/u", "--personas", str(tmp_path / "typo.jsonl")],
        ["--turns", "2", "--user-model", "mock/u", "--personas", str(tmp_path / "empty.yaml")],
    ]
    with ThreadPoolExecutor(max_workers=len(argv)) as pool:  # a process each
        results = list(
            pool.map(lambda a: run_cli("respond", str(src), "-o", str(out), "-m", "x", *a), argv)
        )
    for r, (_, why) in zip(results, [cases[0], cases[-1], cases[7]], strict=True):
        err = r.stderr.strip()
        assert r.returncode == 2 and len(err.splitlines()) == 1, err
        assert err.startswith("error:") and why in err and "Traceback" not in err, err
    assert not out.exists()


def test_both_models_over_http(tmp_path: Path) -> None:
    def reply(messages: list[dict[str, Any]], body: dict[str, Any]) -> str:
        turn = sum(m["role"] == "user" for m in messages)
        return f"User: next {turn}" if body["model"] == "player" else f"answer {turn}"

    with FakeOpenAIServer(responder=reply) as srv:
        out = converse(
            tmp_path,
            [{"id": "q", "prompt": "Hello"}],
            model="openai/policy",
            user_model="openai/player",
            base_url=srv.base_url,
            turns=3,
            temperature=0,
        )
        sent = list(srv.requests)
    (rec,) = lines(out)
    assert [m["content"] for m in rec["messages"]] == [
        "Hello",
        "answer 1",
        "next 1",
        "answer 2",
        "next 2",
    ]
    assert rec["responses"] == ["answer 3"] and rec["dialogue"]["user_model"] == "openai/player"
    played = [r["messages"] for r in sent if r["model"] == "player"]
    assert len(played) == 2 and all(roles(m)[0] == "system" for m in played)
    assert [(m["role"], m["content"]) for m in played[1][1:]] == [
        ("assistant", "Hello"),
        ("user", "answer 1"),
        ("assistant", "next 1"),
        ("user", "answer 2"),
    ]
