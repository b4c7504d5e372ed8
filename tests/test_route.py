"""``charter route``: which pairs go to people, in what order, and what the queue holds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from charter.annotate.records import QueueItem
from charter.annotate.route import RouteOptions, doubt, principle_split, route
from charter.errors import ConfigError, InputError
from charter.judges.records import LabelRecord, PrincipleLabel

QUESTION = (
    "Which answer is less likely to help someone cause physical harm to themselves or others?"
)


def labelled(
    id: str,
    p_a: float,
    *,
    consistent: bool | None = True,
    principles: dict[str, float] | None = None,
    constitution: str = "harmless",
    human: str | None = None,
    **extra: Any,
) -> LabelRecord:
    """A label record as ``charter label`` writes it, with what route and merge read."""
    per = principles if principles is not None else {"physical-danger": p_a}
    a_wins = p_a >= 0.5
    answer_a = [{"role": "assistant", "content": f"A of {id}"}]
    answer_b = [{"role": "assistant", "content": f"B of {id}"}]
    return LabelRecord.model_validate(
        {
            "id": id,
            "prompt": [{"role": "user", "content": f"question {id}"}],
            "response_a": f"A of {id}",
            "response_b": f"B of {id}",
            "a_source": "chosen",
            "b_source": "rejected",
            "human_choice": human,
            "p_a": p_a,
            "p_a_when_first": None,
            "p_a_when_second": None,
            "position_consistent": consistent,
            "label_source": "logprobs",
            "principles": list(per),
            "per_principle": [
                PrincipleLabel(
                    principle_id=k,
                    p_a=v,
                    p_a_when_first=None,
                    p_a_when_second=None,
                    position_consistent=None,
                )
                for k, v in per.items()
            ],
            "judgements": [],
            "judge": "mock/judge",
            "constitution": constitution,
            "constitution_hash": "h",
            "chosen": answer_a if a_wins else answer_b,
            "rejected": answer_b if a_wins else answer_a,
            "p_chosen": max(p_a, 1 - p_a),
            "low_confidence": False,
            **extra,
        }
    )


def write(path: Path, records: list[LabelRecord]) -> Path:
    path.write_text("".join(r.model_dump_json() + "\n" for r in records))
    return path


def fixture_records() -> list[LabelRecord]:
    return [
        labelled("sure", 0.99),  # doubt (1 - .98) = 0.02
        labelled("coin", 0.5),  # 1 - 0 = 1.0
        labelled("flip", 0.9, consistent=False),  # 0.2 + 1 = 1.2
        labelled(  # 0.8 + 0 + split 2*min(1, 1)/2 = 1.8
            "split", 0.6, principles={"physical-danger": 0.8, "toxicity": 0.4}
        ),
        labelled("firm", 0.95),  # 0.1
        labelled("lean-b", 0.3),  # 0.6
        labelled("lean-a", 0.7),  # 0.6 (ties with lean-b: broken by a seeded hash)
    ]


def queue(path: Path) -> list[QueueItem]:
    return [QueueItem.model_validate_json(line) for line in path.read_text().splitlines()]


def test_doubt_by_hand() -> None:
    assert [doubt(r) for r in fixture_records()] == pytest.approx(
        [0.02, 1.0, 1.2, 1.8, 0.1, 0.6, 0.6]
    )
    three = labelled("x", 0.5, principles={"p": 0.9, "q": 0.2, "r": 0.5})  # r sides with neither
    assert principle_split(three) == pytest.approx(2 * 1 / 3)
    assert principle_split(labelled("y", 0.9, principles={"p": 0.9, "q": 0.8})) == 0.0


def test_routes_the_most_uncertain_first_and_hides_the_ai_label(tmp_path: Path) -> None:
    src = write(tmp_path / "labels.jsonl", fixture_records())
    summary = route(src, tmp_path / "q.jsonl", 3)
    items = queue(tmp_path / "q.jsonl")
    assert [(q.id, q.rank, q.doubt, q.routed_by) for q in items] == [
        ("split", 1, pytest.approx(1.8), "uncertainty"),
        ("flip", 2, pytest.approx(1.2), "uncertainty"),
        ("coin", 3, pytest.approx(1.0), "uncertainty"),
    ]
    # (1.8 + 1.2 + 1.0) / 3 vs (0.02 + 0.1 + 0.6 + 0.6) / 4
    assert str(summary) == (
        f"routed 3 of 7 pairs (uncertainty; mean doubt 1.33 vs 0.33 for the rest) -> "
        f"{tmp_path / 'q.jsonl'}"
    )
    for line in (tmp_path / "q.jsonl").read_text().splitlines():
        assert set(json.loads(line)) == set(QueueItem.model_fields)
        for leak in ("p_a", "0.6", "chosen", "p_chosen", "judge", "mock/judge"):
            assert leak not in line.replace('"doubt":1.8', "")
    # The question: the one principle's comparison question; two principles ask none.
    assert [q.question for q in items] == [None, QUESTION, QUESTION]
    assert items[0].messages[0].content == "question split" and items[0].response_b == "B of split"


def test_ties_are_broken_by_the_seed_not_the_file_order(tmp_path: Path) -> None:
    records = fixture_records()
    forward = write(tmp_path / "f.jsonl", records)
    backward = write(tmp_path / "b.jsonl", records[::-1])
    orders = set()
    for seed in range(6):
        route(forward, tmp_path / "qf.jsonl", 5, seed=seed)
        route(backward, tmp_path / "qb.jsonl", 5, seed=seed)
        a, b = (tmp_path / "qf.jsonl").read_bytes(), (tmp_path / "qb.jsonl").read_bytes()
        assert a == b
        ids = [q.id for q in queue(tmp_path / "qf.jsonl")]
        assert ids[:3] == ["split", "flip", "coin"] and set(ids[3:]) == {"lean-a", "lean-b"}
        orders.add(tuple(ids[3:]))
    assert len(orders) == 2, "the seed decides the tie, both ways over a few seeds"


def test_inconsistent_random_and_control(tmp_path: Path) -> None:
    records = [
        *fixture_records(),
        labelled("flip-sure", 0.99, consistent=False),  # 0.02 + 1 = 1.02
    ]
    src = write(tmp_path / "labels.jsonl", records)
    route(src, tmp_path / "q.jsonl", 3, by="inconsistent")
    # position-inconsistent first (by doubt: 1.2, 1.02), then the rest by doubt (split 1.8)
    assert [(q.id, q.routed_by) for q in queue(tmp_path / "q.jsonl")] == [
        ("flip", "inconsistent"),
        ("flip-sure", "inconsistent"),
        ("split", "inconsistent"),
    ]

    route(src, tmp_path / "r1.jsonl", 4, by="random", seed=7)
    route(src, tmp_path / "r2.jsonl", 4, by="random", seed=7)
    route(src, tmp_path / "r3.jsonl", 4, by="random", seed=8)
    first = queue(tmp_path / "r1.jsonl")
    assert (tmp_path / "r1.jsonl").read_bytes() == (tmp_path / "r2.jsonl").read_bytes()
    assert [q.id for q in first] != [q.id for q in queue(tmp_path / "r3.jsonl")]
    assert all(q.routed_by == "random" and q.doubt is None for q in first)

    summary = route(src, tmp_path / "c.jsonl", 4, control=2, seed=3)
    items = queue(tmp_path / "c.jsonl")
    routed = [q for q in items if q.routed_by == "uncertainty"]
    control = [q for q in items if q.routed_by == "control"]
    assert [q.rank for q in routed] == [1, 2, 3, 4] and [q.rank for q in control] == [None] * 2
    assert len(control) == 2 and not {q.id for q in routed} & {q.id for q in control}
    assert all(q.doubt is None for q in control)
    # spread through the queue: the j-th control pair after ceil((j+1)*4/3) routed ones (2, 3)
    u, c = "uncertainty", "control"
    assert [q.routed_by for q in items] == [u, u, c, u, c, u]
    assert str(summary).endswith(f"+ 2 control -> {tmp_path / 'c.jsonl'}")
    again = route(src, tmp_path / "c2.jsonl", 4, control=2, seed=3)
    assert (tmp_path / "c2.jsonl").read_bytes() == (tmp_path / "c.jsonl").read_bytes()
    assert again.control == 2


def test_budget_beyond_the_pairs_and_questions(tmp_path: Path) -> None:
    records = [
        labelled("one", 0.6),
        labelled("custom", 0.4, constitution="no-such-constitution"),
        labelled("unknown-principle", 0.4, principles={"not-in-harmless": 0.4}),
        labelled("reward", 0.7, consistent=None, principles={}, label_source="reward_model"),
    ]
    src = write(tmp_path / "labels.jsonl", records)
    summary = route(src, tmp_path / "q.jsonl", 10, control=3)
    items = queue(tmp_path / "q.jsonl")
    assert {q.id for q in items} == {r.id for r in records} and summary.control == 0
    assert "budget 10 exceeds the 4 pairs: took all" in str(summary)
    assert "+ 0 control (asked 3; no more pairs left)" in str(summary)
    assert {q.id: q.question for q in items} == {
        "one": QUESTION,
        "custom": None,
        "unknown-principle": None,
        "reward": None,
    }
    route(src, tmp_path / "q2.jsonl", 2, question="Which is kinder?")
    assert {q.question for q in queue(tmp_path / "q2.jsonl")} == {"Which is kinder?"}


def test_refusals(tmp_path: Path) -> None:
    src = write(tmp_path / "labels.jsonl", fixture_records())
    with pytest.raises(ConfigError, match="route: budget: Input should be greater than or equal"):
        route(src, tmp_path / "q.jsonl", 0)
    with pytest.raises(ConfigError, match="is the input"):
        route(src, src, 2)
    with pytest.raises(InputError, match="labels not found"):
        route(tmp_path / "none.jsonl", tmp_path / "q.jsonl", 2)
    dup = write(tmp_path / "dup.jsonl", [labelled("x", 0.5), labelled("x", 0.7)])
    with pytest.raises(InputError, match="pair id 'x' appears more than once"):
        route(dup, tmp_path / "q.jsonl", 2)
    assert not (tmp_path / "q.jsonl").exists()


def one_line_error(result: Any, *needles: str) -> None:
    assert result.exit_code == 2, result.output
    err = result.stderr.strip()
    assert err.startswith("error:") and len(err.splitlines()) == 1, err
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in err, err


def test_cli_and_recipe(tmp_path: Path) -> None:
    from charter.cli import app

    src = write(tmp_path / "labels.jsonl", fixture_records())
    out = tmp_path / "queue.jsonl"
    runner = CliRunner()
    ok = runner.invoke(app, ["route", str(src), "-o", str(out), "--budget", "2", "--control", "1"])
    assert ok.exit_code == 0, ok.output
    assert "routed 2 of 7 pairs (uncertainty; mean doubt 1.50 vs " in ok.stderr
    assert queue(out)[0].id == "split"
    one_line_error(runner.invoke(app, ["route", str(src), "-o", str(out), "--budget", "0"]),
                   "--budget: Input should be greater than or equal to 1")  # fmt: skip
    one_line_error(
        runner.invoke(app, ["route", str(src), "-o", str(src), "--budget", "2"]), "is the input"
    )
    one_line_error(
        runner.invoke(app, ["route", str(src), "-o", str(out), "--budget", "2", "--by", "x"]),
        "--by: Input should be 'uncertainty', 'inconsistent' or 'random'",
    )
    assert "ties broken by a seeded hash" in runner.invoke(app, ["route", "--help"]).output

    from charter.recipe import load_recipe

    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"stages:\n  - stage: route\n    input: {src}\n    output: {tmp_path / 'rq.jsonl'}\n"
        "    budget: 3\n    by: inconsistent\n    control: 1\n    seed: 4\n"
    )
    (step,) = load_recipe(recipe)
    kind, opts = step.job.name, step.options
    assert kind == "route" and isinstance(opts, RouteOptions)
    assert (opts.budget, opts.by, opts.control, opts.seed) == (3, "inconsistent", 1, 4)
    first = runner.invoke(app, ["run", str(recipe)])
    assert first.exit_code == 0, first.output
    written = (tmp_path / "rq.jsonl").read_bytes()
    again = runner.invoke(app, ["run", str(recipe)])
    assert again.exit_code == 0 and (tmp_path / "rq.jsonl").read_bytes() == written
    assert "routed 3 of 7 pairs (inconsistent" in again.stderr
    recipe.write_text(
        f"stages:\n  - stage: route\n    input: {src}\n    output: {src}\n    budget: 3\n"
    )
    one_line_error(runner.invoke(app, ["run", str(recipe)]), "stages[0] (route): ")
    recipe.write_text(
        f"stages:\n  - stage: route\n    input: {src}\n    output: {out}\n    budget: 0\n"
    )
    one_line_error(runner.invoke(app, ["run", str(recipe)]), "stages[0] (route): budget")


def test_the_demo_recipe_ends_by_routing_the_sampled_pairs() -> None:
    from charter.annotate.route import RouteOptions
    from charter.recipe import load_recipe

    step = load_recipe(Path(__file__).resolve().parents[1] / "examples" / "demo.yaml")[-1]
    kind, opts = step.job.name, step.options
    assert kind == "route" and isinstance(opts, RouteOptions)
    assert (opts.input, opts.budget, opts.control) == ("runs/demo/labels-samples.jsonl", 3, 1)
