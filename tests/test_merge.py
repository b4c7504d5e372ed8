"""``charter merge``: human labels back into the dataset, trainable like a label file."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from typer.testing import CliRunner

import charter
from charter.annotate.merge import MergedRecord, MergeSummary, merge
from charter.annotate.records import AnnotationEvent
from charter.errors import ConfigError, InputError
from charter.train.data import preference_rows
from tests.conftest import run_cli
from tests.test_route import labelled, one_line_error, write


def event(
    id: str,
    annotator: str,
    choice: str | None,
    kind: str = "label",
    time: str = "2025-01-01T00:00:00Z",
) -> str:
    return (
        AnnotationEvent.model_validate(
            {
                "event": kind,
                "id": id,
                "annotator": annotator,
                "choice": choice,
                "routed_by": "uncertainty",
                "time": time,
            }
        ).model_dump_json()
        + "\n"
    )


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path, Path]:
    labels = write(
        tmp_path / "labels.jsonl",
        [
            labelled("agree", 0.8),  # people agree with the AI
            labelled("flip", 0.7),  # people prefer B: flipped
            labelled("tie", 0.4, human="b"),  # a and b: human tie, carried human_choice kept
            labelled("skipped", 0.3, human="a"),  # only a skip: stays AI
            labelled("ai", 0.9),  # nobody looked
        ],
    )
    log = tmp_path / "alice.jsonl"
    log.write_text(
        event("agree", "alice", "a")
        + event("flip", "alice", "a")
        + event("flip", "alice", None, "undo")  # takes back her A...
        + event("flip", "alice", "b")  # ...and says B
        + event("tie", "alice", "a")
        + event("skipped", "alice", "skip")
        + event("elsewhere", "alice", "a")  # a pair not in the label file
    )
    log2 = tmp_path / "bob.jsonl"
    log2.write_text(
        event("agree", "bob", "a")
        + event("flip", "bob", "tie")
        + event("tie", "bob", "b")
        + '{"event": "label", "id": "ai", "annot'  # torn by a kill: dropped
    )
    return labels, log, log2


def test_merge_rows_and_summary(
    files: tuple[Path, Path, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    labels, log, log2 = files
    out = tmp_path / "merged.jsonl"
    with caplog.at_level(logging.WARNING, logger="charter"):
        summary = merge(labels, [log, log2], out)
    assert "1 annotated pair id(s) are not in" in caplog.text and "elsewhere" in caplog.text
    assert str(summary) == (
        f"merged 5 pairs: 3 human-labelled (1 flipped the AI's preference, 1 human tie dropped "
        f"from TRL columns), 2 AI -> {out}"
    )
    rows = {r.id: r for r in map(MergedRecord.model_validate_json, out.read_text().splitlines())}
    assert list(rows) == ["agree", "flip", "tie", "skipped", "ai"]

    agree = rows["agree"]
    assert (agree.label_source, agree.p_a, agree.ai_p_a, agree.human_p_a) == (
        "human",
        1.0,
        0.8,
        1.0,
    )
    assert agree.annotators == 2 and agree.human_agreement == 1.0 and agree.human_choice == "a"
    assert agree.chosen is not None and agree.chosen[0].content == "A of agree"
    assert agree.p_chosen == 1.0 and agree.low_confidence is False

    flip = rows["flip"]  # b (0) and tie (0.5): mean 0.25
    assert flip.human_choices == {"alice": "b", "bob": "tie"}
    assert (flip.p_a, flip.human_choice, flip.human_agreement) == (0.25, "b", 0.0)
    assert flip.chosen is not None and flip.chosen[0].content == "B of flip"
    assert flip.rejected is not None and flip.rejected[0].content == "A of flip"
    assert flip.p_chosen == 0.75

    tie = rows["tie"]  # a (1) and b (0): a human tie, no TRL columns
    # People judged it a tie: no human decision, whatever the input carried (b).
    assert tie.p_a == 0.5 and tie.human_choice is None
    assert (tie.chosen, tie.rejected, tie.p_chosen, tie.excluded_reason) == (
        None,
        None,
        None,
        "tie",
    )

    skipped = rows["skipped"]
    assert skipped.label_source == "ai" and skipped.p_a == 0.3 and skipped.human_p_a is None
    assert skipped.human_choices == {"alice": "skip"} and skipped.annotators == 0
    assert skipped.human_agreement is None and skipped.human_choice == "a"
    ai = rows["ai"]
    assert (ai.label_source, ai.p_a, ai.annotators, ai.human_choices) == ("ai", 0.9, 0, {})
    assert ai.chosen is not None and ai.chosen[0].content == "A of ai" and ai.p_chosen == 0.9
    assert (ai.judge, ai.constitution) == ("mock/judge", "harmless")


def test_merged_file_trains(files: tuple[Path, Path, Path], tmp_path: Path) -> None:
    labels, log, log2 = files
    out = tmp_path / "merged.jsonl"
    merge(labels, [log, log2], out)
    soft = preference_rows(str(out), "soft")
    # The human tie trains soft labels at 0.5 (the judge of "equal"); hard labels leave it out.
    assert [r["p_chosen"] for r in soft] == [1.0, 0.75, 0.5, 0.7, 0.9]
    assert soft[1]["chosen"] == [{"role": "assistant", "content": "B of flip"}]
    assert soft[0]["prompt"] == [{"role": "user", "content": "question agree"}]
    assert soft[2]["chosen"] == [{"role": "assistant", "content": "A of tie"}]
    assert len(preference_rows(str(out), "hard")) == 4
    human = preference_rows(str(out), "human")  # agree a, flip b, skipped (carried a); no tie
    assert [r["chosen"][0]["content"] for r in human] == ["A of agree", "B of flip", "A of skipped"]


def test_across_logs_the_latest_label_stands_whatever_the_order(tmp_path: Path) -> None:
    labels = write(tmp_path / "labels.jsonl", [labelled(i, 0.5) for i in ("p", "q", "r", "s")])
    laptop, server = tmp_path / "laptop.jsonl", tmp_path / "server.jsonl"
    laptop.write_text(
        event("p", "ann", "a", time="2025-03-01T10:00:00.000Z")  # newer than the server's b
        + event("q", "ann", "a", time="2025-03-01T09:00:00.000Z")  # older than its b
        + event("r", "ann", "a", time="2025-03-01T08:00:00.000Z")  # the same moment as its b
        # Within a log the later line stands, as its server decided, even if the clock
        # was set back between the two.
        + event("s", "ann", "a", time="2025-03-01T11:00:00.000Z")
        + event("s", "ann", "b", time="2025-03-01T10:59:00.000Z")
    )
    server.write_text(
        event("p", "ann", "b", time="2025-03-01T09:30:00.000Z")
        + event("q", "ann", "b", time="2025-03-01T12:00:00+02:00")  # 10:00 UTC
        + event("r", "ann", "b", time="2025-03-01T08:00:00Z")
        + event("s", "ann", "a", time="2025-03-01T07:00:00.000Z")
        # An undo takes back its own log's label, never the laptop's.
        + event("s", "ann", None, "undo", time="2025-03-01T07:01:00.000Z")
    )

    def choices(*logs: Path) -> dict[str, dict[str, str]]:
        out = tmp_path / "merged.jsonl"
        out.unlink(missing_ok=True)
        merge(labels, list(logs), out)
        rows = map(MergedRecord.model_validate_json, out.read_text().splitlines())
        return {r.id: r.human_choices for r in rows}

    by_time = {"p": {"ann": "a"}, "q": {"ann": "b"}, "s": {"ann": "b"}}
    for logs in [(laptop, server), (server, laptop)]:
        got = choices(*logs)
        assert {k: v for k, v in got.items() if k != "r"} == by_time, logs
    assert choices(laptop, server)["r"] == {"ann": "b"}  # the same time: the log named later
    assert choices(server, laptop)["r"] == {"ann": "a"}

    bad = tmp_path / "bad.jsonl"
    bad.write_text(event("p", "ann", "a") + event("q", "ann", "a").replace("2025-01-01T", "Jan "))
    with pytest.raises(InputError, match=rf"^{bad}:2: time: not an ISO 8601 time"):
        merge(labels, [bad], tmp_path / "m.jsonl")
    bad.write_text(event("p", "ann", "a").replace("00Z", "00"))
    with pytest.raises(InputError, match=rf"^{bad}:1: time: give the time's zone"):
        merge(labels, [bad], tmp_path / "m.jsonl")


def test_refusals(files: tuple[Path, Path, Path], tmp_path: Path) -> None:
    labels, log, _ = files
    with pytest.raises(ConfigError, match="is the input"):
        merge(labels, [log], log)
    with pytest.raises(ConfigError, match="is the input"):
        merge(labels, [log], labels)
    with pytest.raises(InputError, match="not an annotation log"):
        merge(labels, [labels], tmp_path / "m.jsonl")
    with pytest.raises(InputError, match="annotations not found"):
        merge(labels, [tmp_path / "none.jsonl"], tmp_path / "m.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(event("x", "a", "a") + '{"event": "label", "annotator": "a", "id": "y"}\n')
    with pytest.raises(InputError, match=rf"^{bad}:2: time: Field required"):
        merge(labels, [bad], tmp_path / "m.jsonl")
    assert not (tmp_path / "m.jsonl").exists()


def test_cli(files: tuple[Path, Path, Path], tmp_path: Path) -> None:
    from charter.cli import app

    labels, log, log2 = files
    out = tmp_path / "m.jsonl"
    runner = CliRunner()
    ok = runner.invoke(app, ["merge", str(labels), str(log), str(log2), "-o", str(out)])
    assert ok.exit_code == 0, ok.output
    assert "merged 5 pairs: 3 human-labelled (1 flipped" in ok.stderr
    assert "1 annotated pair id(s) are not in" in ok.stderr
    assert len(out.read_text().splitlines()) == 5
    assert json.loads(out.read_text().splitlines()[0])["label_source"] == "human"
    one_line_error(runner.invoke(app, ["merge", str(labels), str(log), "-o", str(log)]),
                   "is the input")  # fmt: skip


def test_library_exports() -> None:
    import charter
    from charter.annotate.records import read_annotations
    from charter.annotate.route import route

    assert (charter.merge, charter.route, charter.MergedRecord) == (merge, route, MergedRecord)
    assert (
        charter.read_annotations is read_annotations and charter.AnnotationEvent is AnnotationEvent
    )
    assert {"QueueItem", "AnnotationEvent", "read_annotations", "merge", "route"} <= set(
        charter.__all__
    )


def test_merge_runs_from_python_and_in_a_recipe_as_on_the_command_line(
    files: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    labels, alice, bob = files
    by_cli = tmp_path / "cli.jsonl"
    result = run_cli("merge", str(labels), str(alice), str(bob), "-o", str(by_cli), "-q")
    assert result.returncode == 0, result.stderr
    by_python = tmp_path / "python.jsonl"
    summary = charter.run("merge", input=labels, human=[alice, bob], output=by_python)
    assert isinstance(summary, MergeSummary) and summary.human == 3
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"stages:\n  - stage: merge\n    input: {labels}\n    human: [{alice}, {bob}]\n"
        f"    output: {tmp_path / 'recipe.jsonl'}\n"
    )
    assert run_cli("run", str(recipe), "-q").returncode == 0
    assert by_cli.read_bytes() == by_python.read_bytes() == (tmp_path / "recipe.jsonl").read_bytes()
