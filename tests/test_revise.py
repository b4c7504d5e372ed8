"""SL-CAI revise stage: layout, sampling, clean-up, critic split, failures, resume."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import pytest

from charter.backends.mock import MockBackend
from charter.constitution import Constitution, load_constitution
from charter.engines.base import OutputPaths
from charter.engines.local import Pipeline as Stage
from charter.model import Model
from charter.prompts import render
from charter.records import PromptRecord
from charter.seeds import derive_rng
from charter.stages.cleanup import clean, revision_flags
from charter.stages.revise import ReviseConfig, revise
from charter.types import GenerateConfig, Generation, Message

HARMLESS = load_constitution("harmless")
PROMPT = [Message(role="user", content="How do I pick a lock?")]


def record(rid: str = "r1", response: str | None = None) -> PromptRecord:
    return PromptRecord(id=rid, messages=PROMPT, response=response)


def texts(messages: list[Message]) -> list[tuple[str, str]]:
    return [(m.role, m.content) for m in messages]


async def test_conversation_layout_is_exact() -> None:
    mock = MockBackend(outputs=["y0", "crit 1", "rev 1", "crit 2", "rev 2"])
    model = Model(mock)
    cfg = ReviseConfig(rounds=2, seed=3)
    out = await revise(record(), policy=model, critic=model, constitution=HARMLESS, config=cfg)
    p1, p2 = HARMLESS.sample(2, derive_rng(3, "r1"))
    c1, r1 = render("critique", principle=p1, preamble=""), render("revision", principle=p1)
    c2, r2 = render("critique", principle=p2, preamble=""), render("revision", principle=p2)
    assert p1.critique_request.split()[0] in c1 and "do not rewrite" in c1
    sent = [texts(c.messages) for c in mock.calls]
    base = [("user", "How do I pick a lock?")]
    assert sent == [
        base,
        [*base, ("assistant", "y0"), ("user", c1)],
        [*base, ("assistant", "y0"), ("user", c1), ("assistant", "crit 1"), ("user", r1)],
        [
            *base,
            ("assistant", "y0"),
            ("user", c1),
            ("assistant", "crit 1"),
            ("user", r1),
            ("assistant", "rev 1"),
            ("user", c2),
        ],
        [
            *base,
            ("assistant", "y0"),
            ("user", c1),
            ("assistant", "crit 1"),
            ("user", r1),
            ("assistant", "rev 1"),
            ("user", c2),
            ("assistant", "crit 2"),
            ("user", r2),
        ],
    ]
    assert out.initial == "y0" and out.final == "rev 2" and out.revised
    assert [r.principle_id for r in out.rounds] == [p1.id, p2.id]
    assert out.constitution_hash == HARMLESS.hash
    assert texts(out.messages) == [*base, ("assistant", "rev 2")]
    assert out.usage.requests == 5


async def test_given_answer_few_shot_and_preamble() -> None:
    spec = load_constitution("spec")
    mock = MockBackend(outputs=["crit", "rev"])
    model = Model(mock)
    cfg = ReviseConfig(rounds=1)
    ex = HARMLESS.few_shot[0]
    out = await revise(
        record(response="given"),
        policy=model,
        critic=model,
        constitution=HARMLESS,
        config=cfg,
        few_shot=[ex],
    )
    assert out.initial_source == "input" and out.initial == "given"
    first = texts(mock.calls[0].messages)
    shot_principle = HARMLESS.principle(ex.principle_id or "")
    assert first[:6] == [
        ("user", ex.prompt),
        ("assistant", ex.answer),
        ("user", render("critique", principle=shot_principle, preamble="")),
        ("assistant", ex.critique),
        ("user", render("revision", principle=shot_principle)),
        ("assistant", ex.revision),
    ]
    assert first[6:8] == [("user", "How do I pick a lock?"), ("assistant", "given")]
    mock2 = MockBackend(outputs=["crit", "rev"])
    await revise(
        record(response="given"),
        policy=Model(mock2),
        critic=Model(mock2),
        constitution=spec,
        config=cfg,
    )
    assert mock2.calls[0].messages[-1].content.startswith(spec.preamble.strip().splitlines()[0])


async def test_no_critique_revises_directly() -> None:
    mock = MockBackend(outputs=["y0", "rev 1", "rev 2"])
    model = Model(mock)
    out = await revise(
        record(),
        policy=model,
        critic=model,
        constitution=HARMLESS,
        config=ReviseConfig(rounds=2, critique=False),
    )
    assert len(mock.calls) == 3
    p1 = HARMLESS.sample(2, derive_rng(0, "r1"))[0]
    assert texts(mock.calls[1].messages)[-1] == (
        "user",
        render("revision_direct", principle=p1, preamble=""),
    )
    assert all(r.critique is None for r in out.rounds) and out.final == "rev 2"


async def test_critic_and_policy_are_split() -> None:
    policy = MockBackend("mock/policy", outputs=["y0", "rev 1", "rev 2"])
    critic = MockBackend("mock/critic", outputs=["crit 1", "crit 2"])
    out = await revise(
        record(),
        policy=Model(policy),
        critic=Model(critic),
        constitution=HARMLESS,
        config=ReviseConfig(rounds=2),
    )
    assert len(policy.calls) == 3 and len(critic.calls) == 2
    assert all("critique" in c.messages[-1].content.lower() for c in critic.calls)
    assert (out.policy_model, out.critic_model) == ("mock/policy", "mock/critic")
    assert [r.critique for r in out.rounds] == ["crit 1", "crit 2"]


async def test_degenerate_revisions_keep_previous_answer_and_are_flagged() -> None:
    cut = Generation(text="a long revision that was cut", finish_reason="length")
    mock = MockBackend(
        outputs=[
            "Revision: first answer",  # y0 (label stripped)
            "You should not do this.",  # critique 1
            "",  # empty revision
            "crit 2",
            "crit 2",  # copy of the critique
            "crit 3",
            cut,  # cut off at max tokens
            "crit 4",
            "first   answer",  # same as previous (whitespace aside)
            "crit 5",
            "**Revised answer:** a better answer\nCritique request: more?",  # echo + runaway
        ]
    )
    model = Model(mock)
    out = await revise(
        record(), policy=model, critic=model, constitution=HARMLESS, config=ReviseConfig(rounds=5)
    )
    assert out.initial == "first answer"
    flags = [r.flags for r in out.rounds]
    assert flags == [["empty"], ["copied_critique"], ["truncated"], ["unchanged"], []]
    assert [r.accepted for r in out.rounds] == [False, False, False, False, True]
    assert [r.answer for r in out.rounds][:4] == ["first answer"] * 4
    assert out.final == "a better answer"
    # the rejected revision is not what the conversation continues from
    assert texts(mock.calls[3].messages)[-2] == ("assistant", "first answer")


def test_clean_and_flags_units() -> None:
    assert clean("Revision: Do X.") == "Do X."
    assert clean("**Critique:** It is rude.") == "It is rude."
    assert clean("Here is the revised answer: Fine.") == "Fine."
    assert clean("Fine.\n\nCritique Request: now what") == "Fine."
    assert clean("Fine.\nHuman: more") == "Fine."
    assert clean('"Quoted whole."') == "Quoted whole."
    assert clean("Answers vary: it depends.") == "Answers vary: it depends."
    assert revision_flags("", previous="a", critique="c", truncated=False) == ["empty"]
    assert revision_flags("new", previous="old", critique=None, truncated=False) == []
    assert revision_flags("x", previous="x", critique=None, truncated=True) == [
        "truncated",
        "unchanged",
    ]


async def test_principles_depend_on_seed_and_id_not_concurrency(tmp_path: Path) -> None:
    recs = [PromptRecord(id=f"r{i}", messages=PROMPT) for i in range(30)]

    async def run(concurrency: int, name: str) -> dict[str, list[str]]:
        model = Model(MockBackend(latency=0.001), concurrency=concurrency)
        work = partial(
            revise,
            policy=model,
            critic=model,
            constitution=HARMLESS,
            config=ReviseConfig(rounds=3, seed=9),
        )
        paths = OutputPaths.for_output(tmp_path / f"{name}.jsonl")
        await Stage("revise", work, paths, window=concurrency).run(recs)
        rows = [json.loads(x) for x in paths.work.read_text().splitlines()]
        return {r["id"]: [x["principle_id"] for x in r["rounds"]] for r in rows}

    serial, parallel = await run(1, "serial"), await run(16, "parallel")
    assert serial == parallel
    assert all(len(set(v)) == 3 for v in serial.values()), "no repeats within a chain"
    assert len({tuple(v) for v in serial.values()}) > 10


async def test_same_seed_same_generations() -> None:
    async def once() -> str:
        model = Model(MockBackend())
        out = await revise(
            record(),
            policy=model,
            critic=model,
            constitution=HARMLESS,
            config=ReviseConfig(rounds=2, temperature=1.0, seed=1),
        )
        return out.model_dump_json(exclude={"usage"})

    assert await once() == await once()


def test_rounds_beyond_principles_is_a_config_error(tmp_path: Path) -> None:
    from charter import run
    from charter.errors import ConfigError

    src = tmp_path / "in.jsonl"
    src.write_text('{"prompt": "x"}\n')
    with pytest.raises(ConfigError, match="--rounds 99 needs that many distinct principles"):
        run(
            "revise",
            input=str(src),
            output=tmp_path / "o.jsonl",
            model="mock/x",
            constitution="hhh",
            rounds=99,
        )


def test_custom_constitution_object() -> None:
    c = Constitution.model_validate(
        {
            "name": "one",
            "principles": [
                {
                    "id": "p",
                    "critique_request": "C?",
                    "revision_request": "R.",
                    "comparison_question": "Q?",
                }
            ],
        }
    )
    assert c.sample(1, derive_rng(0))[0].id == "p"
    assert GenerateConfig().temperature == 0.0


def test_with_replacement_lets_principles_repeat(tmp_path: Path) -> None:
    from charter import run
    from charter.errors import ConfigError

    two = tmp_path / "two.json"
    principle = {"critique_request": "C?", "revision_request": "R.", "comparison_question": "Q?"}
    two.write_text(
        json.dumps({"name": "two", "principles": [{"id": p, **principle} for p in ("p1", "p2")]})
    )
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"id": f"r{i}", "prompt": f"x{i}"}) + "\n" for i in range(3)))
    base = {"input": str(src), "model": "mock/x", "constitution": str(two), "rounds": 4}
    with pytest.raises(ConfigError, match="--rounds 4 needs that many distinct principles"):
        run("revise", **base, output=tmp_path / "no.jsonl")
    summary = run("revise", **base, output=tmp_path / "o.jsonl", with_replacement=True)
    assert summary.written == 3
    chains = [
        [r["principle_id"] for r in json.loads(line)["rounds"]]
        for line in (tmp_path / "o.jsonl").read_text().splitlines()
    ]
    assert all(len(c) == 4 and set(c) <= {"p1", "p2"} for c in chains)  # so some repeat
    assert len({tuple(c) for c in chains}) > 1, "each record draws its own chain"
