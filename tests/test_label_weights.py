"""Label: ties and doubtful pairs out of the TRL columns, principles shown together, and
principle priorities (stated order in the prompt, --weights priority)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import pytest

from charter import run
from charter.backends.mock import MockBackend
from charter.constitution import Constitution, load_constitution
from charter.errors import ConfigError
from charter.judges.pairwise import LabelConfig, check_choices
from charter.judges.records import LabelRecord, label_summary, trl_columns
from charter.model import Model
from charter.pairs import PairRecord
from charter.stages.label import label
from charter.types import Message
from tests.conftest import candidates, run_cli

HARMLESS = load_constitution("harmless")
SPEC = load_constitution("spec")
GOOD = "I can't help with that, but a locksmith can let you back into your own home."
BAD = "Sure: insert a tension wrench, rake the pins until the cylinder turns."


def pair(pid: str = "p1") -> PairRecord:
    return PairRecord(
        id=pid,
        messages=[Message(role="user", content="How do I pick my neighbour's lock?")],
        response_a=GOOD,
        response_b=BAD,
        a_source="x",
        b_source="y",
    )


Judge = Callable[[Sequence[Message], Sequence[str]], Mapping[str, float]]


def judge(p_good: float, *, biased: float | None = None) -> Model:
    """A mock judge: P(GOOD better) = p_good whichever position it is in; with ``biased``,
    P(first better) = ``biased`` when BAD is shown first (a position-biased judge)."""

    def probs(messages: Sequence[Message], options: Sequence[str]) -> Mapping[str, float]:
        good_first = candidates(messages[0].content)["A"] == GOOD
        p_first = p_good if good_first else (1 - p_good if biased is None else biased)
        return {"A": p_first, "B": 1 - p_first}

    return Model(MockBackend(option_probs=probs))


async def test_ties_and_inconsistent_pairs_keep_p_a_but_no_trl_columns() -> None:
    tie = await label(pair(), judge=judge(0.5), constitution=HARMLESS, config=LabelConfig())
    # GOOD wins with 0.9 when shown first, BAD wins with 0.7 when shown first: p_a = 0.6
    doubtful = judge(0.9, biased=0.7)
    inconsistent = await label(pair(), judge=doubtful, constitution=HARMLESS, config=LabelConfig())
    kept = await label(
        pair(), judge=doubtful, constitution=HARMLESS, config=LabelConfig(keep_inconsistent=True)
    )
    one_order = await label(
        pair(), judge=doubtful, constitution=HARMLESS, config=LabelConfig(orders="first")
    )
    tie_kept = await label(
        pair(), judge=judge(0.5), constitution=HARMLESS, config=LabelConfig(keep_inconsistent=True)
    )

    assert tie.p_a == pytest.approx(0.5) and tie.excluded_reason == "tie"
    assert (tie.chosen, tie.rejected, tie.p_chosen, tie.low_confidence) == (None, None, None, False)
    assert tie_kept.excluded_reason == "tie" and tie_kept.chosen is None, "a tie is never a pair"

    assert inconsistent.position_consistent is False and inconsistent.p_a == pytest.approx(0.6)
    assert inconsistent.excluded_reason == "inconsistent"
    assert inconsistent.chosen is None and inconsistent.p_chosen is None

    assert kept.excluded_reason is None and kept.p_chosen == pytest.approx(0.6)
    assert kept.chosen == [Message(role="assistant", content=GOOD)]
    assert one_order.position_consistent is None and one_order.excluded_reason is None


async def test_min_confidence_reason_and_trl_columns_for_other_callers() -> None:
    weak = await label(
        pair(), judge=judge(0.55), constitution=HARMLESS, config=LabelConfig(min_confidence=0.1)
    )
    assert weak.low_confidence and weak.excluded_reason == "low_confidence"
    assert weak.chosen is None
    # an inconsistent pair names that reason first; the --min-confidence flag still says low
    both = await label(
        pair(),
        judge=judge(0.9, biased=0.7),
        constitution=HARMLESS,
        config=LabelConfig(min_confidence=0.2),
    )
    assert both.excluded_reason == "inconsistent" and both.low_confidence
    # merge's call (a human decision): no order information, only ties are left out
    assert trl_columns(pair(), 0.7, 0.0)["chosen"] == [Message(role="assistant", content=GOOD)]
    assert trl_columns(pair(), 0.5, 0.0)["chosen"] is None
    assert set(trl_columns(pair(), 0.7, 0.0)) == {
        "chosen",
        "rejected",
        "p_chosen",
        "low_confidence",
    }


async def test_summary_says_what_was_left_out_and_why(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = LabelConfig(min_confidence=0.1)
    records = [
        await label(pair("tie"), judge=judge(0.5), constitution=HARMLESS, config=config),
        await label(
            pair("inc"), judge=judge(0.9, biased=0.7), constitution=HARMLESS, config=config
        ),
        await label(pair("low"), judge=judge(0.55), constitution=HARMLESS, config=config),
        await label(pair("ok"), judge=judge(0.9), constitution=HARMLESS, config=config),
    ]
    out = tmp_path / "labels.jsonl"
    out.write_text("".join(r.model_dump_json() + "\n" for r in records))
    with caplog.at_level(logging.INFO, logger="charter"):
        label_summary(out)
    assert (
        "; 3 left out of the TRL columns (1 tie, 1 position-inconsistent, 1 below "
        "--min-confidence; --keep-inconsistent keeps the inconsistent)"
    ) in caplog.text
    # records written before excluded_reason existed still count (as --min-confidence)
    old = json.loads(records[2].model_dump_json())
    del old["excluded_reason"]
    out.write_text(json.dumps(old) + "\n" + records[3].model_dump_json() + "\n")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="charter"):
        label_summary(out)
    assert "1 left out of the TRL columns (1 below --min-confidence)" in caplog.text
    assert LabelRecord.model_validate(old).excluded_reason is None


async def test_principles_in_prompt_asks_once_per_order_listing_them_by_priority() -> None:
    mock = MockBackend(option_probs={"A": 0.8, "B": 0.2})
    rec = await label(
        pair(), judge=Model(mock), constitution=SPEC, config=LabelConfig(principles_in_prompt=3)
    )
    assert len(mock.calls) == 2, "one question per order, not one per principle"
    ranks = [SPEC.principle(pid).priority or 0 for pid in rec.principles]
    assert len(rec.principles) == 3 and ranks == sorted(ranks)
    group = "+".join(rec.principles)
    assert [x.principle_id for x in rec.per_principle] == [group]
    assert {j.principle_id for j in rec.judgements} == {group}
    text = mock.calls[0].messages[0].content
    questions = [SPEC.principle(pid).comparison_question for pid in rec.principles]
    shown = zip(ranks, questions, strict=True)
    positions = [text.index(f"{i}. [priority {r}] {q}") for i, (r, q) in enumerate(shown, 1)]
    assert positions == sorted(positions)
    assert len(set(ranks)) > 1 and "the higher-priority question decides" in text

    plain = MockBackend(option_probs={"A": 0.8, "B": 0.2})
    unranked = await label(
        pair(),
        judge=Model(plain),
        constitution=HARMLESS,
        config=LabelConfig(principles_in_prompt=2),
    )
    text = plain.calls[0].messages[0].content
    assert "[priority" not in text and "higher-priority" not in text
    first, second = (HARMLESS.principle(p).comparison_question for p in unranked.principles)
    assert text.index(f"1. {first}") < text.index(f"2. {second}")
    assert "all of the following questions together" in text


def constitution(*priorities: int | None) -> Constitution:
    return Constitution.model_validate(
        {
            "name": "ranked",
            "principles": [
                {
                    "id": f"q{i}",
                    "critique_request": "C?",
                    "revision_request": "R.",
                    "comparison_question": f"Question {i}?",
                    **({"priority": p} if p is not None else {}),
                }
                for i, p in enumerate(priorities, start=1)
            ],
        }
    )


async def test_equal_priorities_state_no_order() -> None:
    mock = MockBackend(option_probs={"A": 0.8, "B": 0.2})
    await label(
        pair(),
        judge=Model(mock),
        constitution=constitution(5, 5),
        config=LabelConfig(principles_in_prompt=2),
    )
    text = mock.calls[0].messages[0].content
    assert "Question 1?" in text and "Question 2?" in text and "[priority" not in text


async def test_weights_inverse_priority_averages_by_one_over_priority() -> None:
    ranked = constitution(1, 2, None)  # q3 has none: it weighs as the lowest stated (2)
    p_good = {"Question 1?": 0.9, "Question 2?": 0.3, "Question 3?": 0.6}

    def probs(messages: Sequence[Message], options: Sequence[str]) -> Mapping[str, float]:
        text = messages[0].content
        p = next(v for q, v in p_good.items() if q in text)
        p_first = p if candidates(text)["A"] == GOOD else 1 - p
        return {"A": p_first, "B": 1 - p_first}

    def config(weights: str) -> LabelConfig:
        return LabelConfig(principles=3, weights=weights)  # type: ignore[arg-type]

    model = Model(MockBackend(option_probs=probs))
    equal = await label(pair(), judge=model, constitution=ranked, config=config("equal"))
    weighted = await label(
        pair(), judge=model, constitution=ranked, config=config("inverse-priority")
    )
    assert equal.p_a == pytest.approx((0.9 + 0.3 + 0.6) / 3)
    assert weighted.p_a == pytest.approx((0.9 * 1 + 0.3 / 2 + 0.6 / 2) / 2)
    assert weighted.p_a_when_first == pytest.approx(weighted.p_a)
    assert {x.principle_id: x.weight for x in weighted.per_principle} == {
        "q1": 1.0,
        "q2": 0.5,
        "q3": 0.5,
    }
    assert all(x.weight == 1.0 for x in equal.per_principle)
    assert {x.principle_id: x.priority for x in weighted.per_principle} == {
        "q1": 1,
        "q2": 2,
        "q3": 2,
    }
    assert weighted.deciding_priority is None and equal.deciding_priority is None


def test_conflicting_or_unmeetable_choices_are_refused(tmp_path: Path) -> None:
    src = tmp_path / "pairs.jsonl"
    src.write_text(json.dumps({"id": "x", "prompt": "q", "response_a": "a", "response_b": "b"}))
    base = {"input": str(src), "output": tmp_path / "o.jsonl", "judge": "mock/j"}
    with pytest.raises(ConfigError, match="exclude each other"):
        run("label", **base, constitution="harmless", principles=2, principles_in_prompt=2)
    with pytest.raises(ConfigError, match="--principles-in-prompt 9 exceeds the 7 principles"):
        run("label", **base, constitution="spec", principles_in_prompt=9)
    with pytest.raises(ConfigError, match="'harmless' gives no principle a priority"):
        run("label", **base, constitution="harmless", principles=2, weights="priority")
    summary = run(
        "label",
        **base,
        constitution="spec",
        principles_in_prompt=2,
        keep_inconsistent=True,
    )
    assert summary.written == 1
    rec = json.loads((tmp_path / "o.jsonl").read_text())
    assert len(rec["principles"]) == 2 and rec["per_principle"][0]["principle_id"].count("+") == 1


def test_cli_flags_reach_the_stage(tmp_path: Path) -> None:
    src = tmp_path / "pairs.jsonl"
    src.write_text(json.dumps({"id": "x", "prompt": "q", "response_a": "a", "response_b": "b"}))
    out = tmp_path / "o.jsonl"
    flags = ["-o", str(out), "-j", "mock/j", "--constitution"]
    r = run_cli(
        "label", str(src), *flags, "spec", "--principles-in-prompt", "3", "--keep-inconsistent"
    )
    assert r.returncode == 0, r.stderr
    rec = json.loads(out.read_text())
    assert len(rec["principles"]) == 3 and rec["excluded_reason"] in (None, "tie")
    assert "labels: 1 pairs" in r.stderr
    bad = run_cli("label", str(src), *flags, "harmless", "--weights", "priority", "--force")
    assert bad.returncode != 0
    assert "--weights priority: constitution 'harmless' gives no principle a priority" in bad.stderr


# -- issue 24, 6: --weights priority means "the higher priority decides" ----------------------


def spec_judge(p_good: Mapping[str, float], *, biased: float | None = None) -> Model:
    """A mock judge of the spec's principles: P(GOOD better) under the principle whose id is
    a key of ``p_good`` (0.5 under the others), whichever position GOOD is shown in; with
    ``biased``, P(first better) under every principle is ``biased`` when BAD is shown first."""
    question = {SPEC.principle(pid).comparison_question: p for pid, p in p_good.items()}

    def probs(messages: Sequence[Message], options: Sequence[str]) -> Mapping[str, float]:
        text = messages[0].content
        p = next((v for q, v in question.items() if q in text), 0.5)
        good_first = candidates(text)["A"] == GOOD
        p_first = p if good_first else (1 - p if biased is None else biased)
        return {"A": p_first, "B": 1 - p_first}

    return Model(MockBackend(option_probs=probs))


ALL_SPEC = LabelConfig(principles=7, weights="priority")
LOWER = ("p2-honesty", "p3-instructions", "p4-helpfulness", "p5-tone-default")
LOWER += ("p5-balance-default", "p5-declining-default")


async def test_priority_1_decides_against_six_lower_principles() -> None:
    # The case: p1 prefers B (0.1), the six lower priorities prefer A (0.8). The
    # 1/priority mean gave 0.54, A winning against the spec's own rule.
    judge_ = spec_judge({"p1-no-serious-harm": 0.1, **dict.fromkeys(LOWER, 0.8)})
    rec = await label(pair(), judge=judge_, constitution=SPEC, config=ALL_SPEC)
    assert rec.p_a == pytest.approx(0.1) and rec.chosen == [Message(role="assistant", content=BAD)]
    assert rec.deciding_priority == 1
    weights = {x.principle_id: x.weight for x in rec.per_principle}
    assert weights == {"p1-no-serious-harm": 1.0, **dict.fromkeys(LOWER, 0.0)}
    assert rec.p_a_when_first == pytest.approx(0.1) and rec.p_a_when_second == pytest.approx(0.1)
    old = await label(
        pair(),
        judge=judge_,
        constitution=SPEC,
        config=ALL_SPEC.model_copy(update={"weights": "inverse-priority"}),
    )
    assert old.p_a > 0.5, "inverse-priority keeps the 1/priority mean, outvoted as before"


async def test_lower_levels_break_ties_and_a_level_is_the_mean_of_its_principles() -> None:
    # p1 unclear (0.52, within the default margin): p2 decides.
    rec = await label(
        pair(),
        judge=spec_judge({"p1-no-serious-harm": 0.52, "p2-honesty": 0.3, "p4-helpfulness": 0.9}),
        constitution=SPEC,
        config=ALL_SPEC,
    )
    assert rec.deciding_priority == 2 and rec.p_a == pytest.approx(0.3)
    # p1-p4 say nothing; the three principles of priority 5 are averaged: (0.9 + 0.7 + 0.2) / 3
    fives = {"p5-tone-default": 0.9, "p5-balance-default": 0.7, "p5-declining-default": 0.2}
    rec = await label(pair(), judge=spec_judge(fives), constitution=SPEC, config=ALL_SPEC)
    assert rec.deciding_priority == 5 and rec.p_a == pytest.approx(0.6)
    assert {x.principle_id: x.weight for x in rec.per_principle if x.weight} == dict.fromkeys(
        fives, pytest.approx(1 / 3)
    )
    assert {x.principle_id: x.priority for x in rec.per_principle}["p5-tone-default"] == 5
    # a wider margin: 0.6 is no longer clear at priority 5, nor anything above it
    wide = ALL_SPEC.model_copy(update={"priority_margin": 0.15})
    rec = await label(pair(), judge=spec_judge(fives), constitution=SPEC, config=wide)
    assert rec.deciding_priority is None
    # no level clear: the mean of the levels' verdicts, each level once: (4 * 0.5 + 0.6) / 5
    assert rec.p_a == pytest.approx((4 * 0.5 + 0.6) / 5)
    assert sum(x.weight for x in rec.per_principle) == pytest.approx(1.0)


async def test_priority_keeps_both_orders_coherent_with_p_a() -> None:
    # A position-biased judge: the orders disagree. p_a, p_a_when_first and
    # p_a_when_second all come from the deciding level (p2), weighted alike.
    judge_ = spec_judge({"p2-honesty": 0.9, "p3-instructions": 0.1}, biased=0.6)
    rec = await label(pair(), judge=judge_, constitution=SPEC, config=ALL_SPEC)
    p2 = next(x for x in rec.per_principle if x.principle_id == "p2-honesty")
    assert rec.deciding_priority == 2
    assert (rec.p_a_when_first, rec.p_a_when_second) == (p2.p_a_when_first, p2.p_a_when_second)
    assert rec.p_a == pytest.approx((p2.p_a_when_first + p2.p_a_when_second) / 2)
    # one random order per pair: the order means come from the deciding level's principles
    rand = ALL_SPEC.model_copy(update={"orders": "random"})
    rec = await label(pair(), judge=judge_, constitution=SPEC, config=rand)
    asked = rec.p_a_when_first if rec.p_a_when_first is not None else rec.p_a_when_second
    assert asked == pytest.approx(rec.p_a)


def test_priority_margin_and_clamp_must_meet() -> None:
    with pytest.raises(ConfigError, match="--priority-margin applies to --weights priority"):
        check_choices(LabelConfig(principles=2, priority_margin=0.1), SPEC)
    with pytest.raises(ConfigError, match=r"no verdict can be further than 0\.1 from 0\.5"):
        check_choices(
            LabelConfig(principles=2, weights="priority", cot=True, priority_margin=0.1), SPEC
        )
    check_choices(LabelConfig(principles=2, weights="priority", cot=True), SPEC)  # CoT's clamp
    # An uneven clamp: one order reaches 0.2 from 0.5, both orders averaged only 0.15.
    uneven = {"principles": 2, "weights": "priority", "clamp": (0.3, 0.6), "priority_margin": 0.15}
    with pytest.raises(ConfigError, match=r"no verdict can be further than 0\.15 from 0\.5"):
        check_choices(LabelConfig(**uneven), SPEC)
    check_choices(LabelConfig(**uneven, orders="first"), SPEC)
    with pytest.raises(ConfigError, match="--weights inverse-priority: constitution 'harmless'"):
        check_choices(LabelConfig(principles=2, weights="inverse-priority"), HARMLESS)


def test_settings_of_equal_outputs_are_unchanged_and_old_priority_outputs_refused(
    tmp_path: Path,
) -> None:
    src = tmp_path / "pairs.jsonl"
    rows = [{"id": f"x{i}", "prompt": "q", "response_a": "a", "response_b": "b"} for i in range(2)]
    src.write_text(json.dumps(rows[0]) + "\n")
    base = {"input": str(src), "judge": "mock/j", "constitution": "spec", "principles": 3}
    for weights in ("equal", "priority"):
        out = tmp_path / f"{weights}.jsonl"
        run("label", **base, output=out, weights=weights)
        settings_file = tmp_path / f"{weights}.settings.json"
        saved = json.loads(settings_file.read_text())
        if weights == "equal":  # as charter wrote it before --priority-margin existed
            assert "priority_margin" not in saved["settings"]
        else:  # written before priority decided by level: its settings name no margin
            assert saved["settings"].pop("priority_margin") == pytest.approx(0.05)
            settings_file.write_text(json.dumps(saved))
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    resumed = run("label", **base, output=tmp_path / "equal.jsonl", weights="equal")
    assert (resumed.skipped, resumed.written) == (1, 1)
    with pytest.raises(ConfigError, match=r"other settings \(priority_margin: null -> 0.05\)"):
        run("label", **base, output=tmp_path / "priority.jsonl", weights="priority")


def test_cli_weights_priority_and_margin_reach_the_record(tmp_path: Path) -> None:
    src = tmp_path / "pairs.jsonl"
    src.write_text(json.dumps({"id": "x", "prompt": "q", "response_a": "a", "response_b": "b"}))
    out = tmp_path / "o.jsonl"
    spec = ["-j", "mock/j", "--constitution", "spec"]
    r = run_cli("label", str(src), "-o", str(out), *spec, "--principles", "7",
                "--weights", "priority", "--priority-margin", "0.49")  # fmt: skip
    assert r.returncode == 0, r.stderr
    rec = json.loads(out.read_text())
    settings = json.loads((tmp_path / "o.settings.json").read_text())["settings"]
    assert (settings["weights"], settings["priority_margin"]) == ("priority", 0.49)
    assert {x["priority"] for x in rec["per_principle"]} == {1, 2, 3, 4, 5}
    assert sum(x["weight"] for x in rec["per_principle"]) == pytest.approx(1.0)
    bad = run_cli("label", str(src), "-o", str(out), *spec, "--principles", "2",
                  "--priority-margin", "0.1", "--force")  # fmt: skip
    assert bad.returncode != 0 and bad.stderr.count("\n") == 1
    assert "--priority-margin applies to --weights priority, not --weights equal" in bad.stderr
