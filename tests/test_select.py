"""``charter select``: best-of-n SFT rows and self-rewarding pairs from scored answers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from charter import SelectSummary, select
from charter.errors import ConfigError, InputError
from charter.judges.records import ScoreRecord
from charter.train.data import preference_rows, sft_rows
from charter.types import Message
from tests.test_route import labelled, one_line_error
from tests.test_route import write as write_labels


def scored(
    id: str,
    response: str,
    score: int | None,
    expected: float | None = None,
    reward: float | None = None,
    prompt: str | None = None,
) -> ScoreRecord:
    row = id.rsplit(":", 1)[0]
    return ScoreRecord(
        id=id,
        prompt=[Message(role="user", content=prompt or f"question {row}")],
        response=response,
        score=score,
        expected_score=expected,
        score_probs=None,
        feedback=None,
        attempts=1,
        rubric="helpful",
        rubric_hash="sha256:0",
        judge="mock/judge",
        reward=reward,
    )


def write(path: Path, records: list[ScoreRecord]) -> Path:
    path.write_text("".join(r.model_dump_json() + "\n" for r in records))
    return path


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def scores(tmp_path: Path) -> Path:
    return write(
        tmp_path / "scores.jsonl",
        [
            scored("q1:0", "ok", 3),
            scored("q1:1", "great", 5),
            scored("q1:2", "bad", 1),
            scored("q1:3", "fine", 4),
            scored("tie:0", "same", 4),  # all equal: no pair
            scored("tie:1", "same too", 4),
            scored("low:0", "poor", 2),
            scored("low:1", "worse", 1),
            scored("solo", "alone", 5),  # one answer: an SFT row, never a pair
            # the finer expected score ranks: 4.4 beats an integer 5's 4.2
            scored("fine:0", "a", 5, expected=4.2),
            scored("fine:1", "b", 4, expected=4.4),
        ],
    )


def test_best_of_n_and_pairs(tmp_path: Path, scores: Path) -> None:
    out, pairs = tmp_path / "sft.jsonl", tmp_path / "pairs.jsonl"
    summary = select(scores, out, pairs)
    sft = {r["id"]: r for r in lines(out)}
    assert set(sft) == {"q1", "tie", "low", "solo", "fine"}
    assert sft["q1"]["messages"] == [
        {"role": "user", "content": "question q1"},
        {"role": "assistant", "content": "great"},
    ]
    assert (sft["q1"]["answer_id"], sft["q1"]["score"], sft["q1"]["answers"]) == ("q1:1", 5, 4)
    assert sft["tie"]["answer_id"] == "tie:0"  # the first among equals
    assert sft["fine"]["answer_id"] == "fine:1"
    got = {r["id"]: r for r in lines(pairs)}
    assert set(got) == {"q1:1>q1:2", "low:0>low:1", "fine:1>fine:0"}
    best = got["q1:1>q1:2"]
    assert best["prompt"] == [{"role": "user", "content": "question q1"}]
    assert best["chosen"] == [{"role": "assistant", "content": "great"}]
    assert best["rejected"] == [{"role": "assistant", "content": "bad"}]
    assert (best["score_chosen"], best["score_rejected"], best["margin"]) == (5, 1, 4)
    assert got["fine:1>fine:0"]["margin"] == pytest.approx(0.2)
    assert summary == SelectSummary(
        output=out,
        pairs_output=pairs,
        prompts=5,
        answers=11,
        sft_rows=5,
        below_threshold=0,
        pairs=3,
        ties=1,
        single=1,
        scored_by="expected_score, else score",
    )
    text = str(summary)
    assert (
        "3 pairs" in text
        and "1 ties or gaps under --min-gap skipped" in text
        and "1 prompts with one answer" in text
    )

    rows = preference_rows(str(pairs), "hard")  # trains as it is
    assert len(rows) == 3
    assert rows[0]["chosen"] == [{"role": "assistant", "content": "great"}]
    assert rows[0]["margin"] == 4.0
    assert sft_rows(str(out))[0]["completion"] == [{"role": "assistant", "content": "great"}]


def test_threshold_and_all_pairs_with_min_gap(tmp_path: Path, scores: Path) -> None:
    out, pairs = tmp_path / "sft.jsonl", tmp_path / "pairs.jsonl"
    summary = select(scores, out, pairs, threshold=4, min_gap=2, all_pairs=True)
    assert {r["id"] for r in lines(out)} == {"q1", "tie", "solo", "fine"}
    assert summary.below_threshold == 1 and "1 below the threshold" in str(summary)
    got = {r["id"] for r in lines(pairs)}
    # q1 scores 3, 5, 1, 4: gaps >= 2 are 5-3, 3-1, 5-1, 4-1
    assert got == {"q1:1>q1:0", "q1:0>q1:2", "q1:1>q1:2", "q1:3>q1:2"}
    # q1: 6 candidates, 2 under the gap; tie: 1; low: 1 (gap 1); fine: 1 (gap 0.2)
    assert summary.ties == 5
    assert all(r["margin"] >= 2 for r in lines(pairs))


def test_rewards_rank_a_reward_model_file(tmp_path: Path) -> None:
    src = write(
        tmp_path / "rm.jsonl",
        [scored("r:0", "x", None, reward=-1.5), scored("r:1", "y", None, reward=0.25)],
    )
    summary = select(src, tmp_path / "sft.jsonl", tmp_path / "pairs.jsonl")
    assert summary.scored_by == "reward"
    (pair,) = lines(tmp_path / "pairs.jsonl")
    assert (pair["chosen_id"], pair["margin"]) == ("r:1", 1.75)


def test_mixed_reward_and_scores_refused(tmp_path: Path) -> None:
    src = write(
        tmp_path / "mixed.jsonl",
        [scored("m:0", "x", 3), scored("m:1", "y", None, reward=0.5)],
    )
    with pytest.raises(InputError, match=r"mixed.jsonl:2: no score or expected_score"):
        select(src, tmp_path / "sft.jsonl")


def test_bad_inputs(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(InputError, match="no score records"):
        select(empty, tmp_path / "out.jsonl")
    labels = write_labels(tmp_path / "labels.jsonl", [labelled("p", 0.8)])
    with pytest.raises(InputError, match=r"labels.jsonl:1: a pair label, not a score record"):
        select(labels, tmp_path / "out.jsonl")
    broken = tmp_path / "broken.jsonl"
    broken.write_text(scored("a:0", "x", 3).model_dump_json() + "\n{not json\n")
    with pytest.raises(InputError, match=r"broken.jsonl:2: not JSON"):
        select(broken, tmp_path / "out.jsonl")
    missing = tmp_path / "missing.jsonl"
    missing.write_text('{"id": "a", "response": "x"}\n')
    with pytest.raises(InputError, match=r"missing.jsonl:1: not a score record: .*prompt"):
        select(missing, tmp_path / "out.jsonl")
    other = write(
        tmp_path / "other.jsonl",
        [scored("a:0", "x", 3), scored("a:1", "y", 4, prompt="something else")],
    )
    with pytest.raises(InputError, match=r"other.jsonl:2: answer 'a:1' has another prompt"):
        select(other, tmp_path / "out.jsonl")
    twice = write(tmp_path / "twice.jsonl", [scored("a:0", "x", 3), scored("a:0", "x", 3)])
    with pytest.raises(InputError, match=r"twice.jsonl:2: score id 'a:0' appears more"):
        select(twice, tmp_path / "out.jsonl")
    with pytest.raises(ConfigError, match="is the input"):
        select(twice, twice)
    with pytest.raises(ConfigError, match="is the input"):
        select(twice, tmp_path / "out.jsonl", twice)


def test_single_answers_refused_for_pairs_only(tmp_path: Path) -> None:
    src = write(tmp_path / "single.jsonl", [scored("a", "x", 3), scored("b", "y", 4)])
    out, pairs = tmp_path / "sft.jsonl", tmp_path / "pairs.jsonl"
    with pytest.raises(InputError, match=r"no prompt has two or more scored answers \(2 prompts"):
        select(src, out, pairs)
    assert not out.exists() and not pairs.exists()  # nothing half-written
    assert select(src, out).sft_rows == 2  # best-of-1 is still a (filtered) SFT set


def test_folder_of_parts(tmp_path: Path) -> None:
    parts = tmp_path / "scores"
    parts.mkdir()
    write(parts / "part-00000.jsonl", [scored("q:0", "x", 2)])
    write(parts / "part-00001.jsonl", [scored("q:1", "y", 5)])
    summary = select(parts, tmp_path / "sft.jsonl", tmp_path / "pairs.jsonl")
    assert (summary.prompts, summary.pairs) == (1, 1)


def test_cli(tmp_path: Path, scores: Path) -> None:
    from charter.cli import app

    out, pairs = tmp_path / "sft.jsonl", tmp_path / "pairs.jsonl"
    runner = CliRunner()
    ok = runner.invoke(
        app,
        ["select", str(scores), "-o", str(out), "--pairs", str(pairs), "--all-pairs"],
    )
    assert ok.exit_code == 0, ok.output
    assert "5 SFT rows" in ok.stderr and "8 pairs ->" in ok.stderr
    assert len(lines(pairs)) == 8  # q1: 6, low: 1, fine: 1; the tie gives none
    one_line_error(runner.invoke(app, ["select", str(scores), "-o", str(scores)]), "is the input")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    one_line_error(
        runner.invoke(app, ["select", str(empty), "-o", str(out)]), "empty.jsonl", "no score"
    )
    one_line_error(
        runner.invoke(app, ["select", str(scores), "-o", str(out), "--min-gap", "-1"]),
        "--min-gap",
    )


def test_non_finite_scores_binary_input_and_parquet_output(tmp_path: Path, scores: Path) -> None:
    bad = tmp_path / "nan.jsonl"
    bad.write_text(scores.read_text().replace('"expected_score":4.4', '"expected_score":NaN'))
    with pytest.raises(InputError, match=r"nan\.jsonl:11: the score of 'fine:1' is not a finite"):
        select(bad, tmp_path / "o.jsonl")
    for flag in ({"min_gap": float("nan")}, {"threshold": float("inf")}):
        with pytest.raises(ConfigError, match="must be a"):
            select(scores, tmp_path / "o.jsonl", **flag)  # type: ignore[arg-type]
    binary = tmp_path / "scores.jsonl.gz"
    binary.write_bytes(b"\x1f\x8b\x08\x00\xff\xfe" * 10)
    with pytest.raises(InputError, match="not UTF-8 JSONL"):
        select(binary, tmp_path / "o.jsonl")
    best, pairs = tmp_path / "best.parquet", tmp_path / "pairs.parquet"
    select(scores, best, pairs)
    assert best.read_bytes()[:4] == b"PAR1" and pairs.read_bytes()[:4] == b"PAR1"
    assert len(sft_rows(str(best))) == 5 and len(preference_rows(str(pairs), "hard")) == 3


def test_pair_flags_without_pairs_and_non_finite_values_are_refused_up_front(
    tmp_path: Path,
) -> None:
    from pydantic import ValidationError

    from charter.errors import ConfigError as RecipeError
    from charter.recipe import load_recipe
    from charter.stages.select import SelectOptions

    with pytest.raises(ValidationError, match="--min-gap and --all-pairs shape the pairs"):
        SelectOptions(input="s.jsonl", output=tmp_path / "o.jsonl", min_gap=1, all_pairs=True)
    recipe = tmp_path / "r.yaml"
    src = tmp_path / "s.jsonl"
    src.write_text("")
    for key, value in (("threshold", ".nan"), ("min_gap", ".inf")):
        recipe.write_text(
            f"stages:\n  - stage: select\n    input: {src}\n    output: {tmp_path}/o.jsonl\n"
            f"    pairs: {tmp_path}/p.jsonl\n    {key}: {value}\n"
        )
        with pytest.raises(RecipeError, match=rf"stages\[0\] \(select\): {key}: must be a finite"):
            load_recipe(recipe)
