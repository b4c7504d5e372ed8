"""``charter.run``: every stage a command or recipe runs also runs from Python, with the same
options; a wrong stage name or option is one ConfigError."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

import charter
from charter.errors import ConfigError
from charter.registry import JOBS
from tests.test_route import fixture_records
from tests.test_route import write as write_labels
from tests.test_select import scored
from tests.test_select import write as write_scores


def test_select_and_route_run_as_their_commands_do(tmp_path: Path) -> None:
    scores = write_scores(
        tmp_path / "scores.jsonl",
        [scored("q1:0", "ok", 3), scored("q1:1", "great", 5), scored("q1:2", "bad", 1),
         scored("q2:0", "fine", 4), scored("q2:1", "same", 4), scored("solo", "alone", 5)],
    )  # fmt: skip
    got = charter.run(
        "select",
        input=scores,
        output=tmp_path / "sft.jsonl",
        pairs=tmp_path / "pairs.jsonl",
        all_pairs=True,
        min_gap=1.5,
    )
    want = charter.select(
        scores, tmp_path / "sft2.jsonl", tmp_path / "pairs2.jsonl", all_pairs=True, min_gap=1.5
    )
    assert isinstance(got, charter.SelectSummary)
    assert got == dataclasses.replace(
        want, output=tmp_path / "sft.jsonl", pairs_output=tmp_path / "pairs.jsonl"
    )
    assert (got.sft_rows, got.pairs) == (3, 3)
    assert (tmp_path / "sft.jsonl").read_bytes() == (tmp_path / "sft2.jsonl").read_bytes()
    assert (tmp_path / "pairs.jsonl").read_bytes() == (tmp_path / "pairs2.jsonl").read_bytes()

    labels = write_labels(tmp_path / "labels.jsonl", fixture_records())
    reported: list[object] = []
    queue = charter.run(
        "route",
        input=labels,
        output=tmp_path / "queue.jsonl",
        budget=2,
        by="inconsistent",
        control=1,
        seed=3,
        report=reported.append,
    )
    same = charter.route(labels, tmp_path / "q2.jsonl", 2, by="inconsistent", control=1, seed=3)
    assert isinstance(queue, charter.RouteSummary) and reported == [queue]
    assert queue == dataclasses.replace(same, output=tmp_path / "queue.jsonl")
    assert (queue.routed, queue.control) == (2, 1)
    assert (tmp_path / "queue.jsonl").read_bytes() == (tmp_path / "q2.jsonl").read_bytes()


def test_a_wrong_stage_or_option_is_one_config_error(tmp_path: Path) -> None:
    labels = write_labels(tmp_path / "labels.jsonl", fixture_records())
    out = tmp_path / "queue.jsonl"
    with pytest.raises(ConfigError, match=r"^route: budget: Field required$"):
        charter.run("route", input=labels, output=out)
    with pytest.raises(ConfigError, match=r"^select: engine: Extra inputs are not permitted$"):
        charter.run("select", input=labels, output=out, engine="ray")
    with pytest.raises(ConfigError) as e:
        charter.run("selct", input=labels, output=out)
    message = str(e.value)
    assert message.startswith("no stage 'selct'; stages: ") and "\n" not in message
    listed = message.split("stages: ")[1].split(", ")
    assert sorted(listed) == sorted(JOBS)
    assert {"select", "route", "label", "probe"} <= set(listed)
    assert not out.exists()


def test_engine_options_reach_only_the_engine_that_reads_them(tmp_path: Path) -> None:
    labels = write_labels(tmp_path / "labels.jsonl", fixture_records())
    run = {"input": labels, "output": tmp_path / "o.jsonl", "judge": "mock/j"}
    with pytest.raises(ConfigError, match=r"^--shard-size, --workers only apply to --engine ray"):
        charter.run("label", **run, constitution="harmless", workers=2, shard_size=8)
    with pytest.raises(ConfigError, match="engine: Extra inputs are not permitted"):
        charter.run("select", input=labels, output=tmp_path / "s.jsonl", engine="ray")
    assert not (tmp_path / "o.jsonl").exists()


def test_a_recipe_checks_merges_annotation_logs_before_running(tmp_path: Path) -> None:
    from charter.recipe import load_recipe

    labels = write_labels(tmp_path / "labels.jsonl", fixture_records())
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"stages:\n  - stage: merge\n    input: {labels}\n"
        f"    human: [{tmp_path / 'nobody.jsonl'}]\n    output: {tmp_path / 'merged.jsonl'}\n"
    )
    with pytest.raises(ConfigError, match=r"stages\[0\] \(merge\): not found: .*nobody\.jsonl"):
        load_recipe(recipe)
