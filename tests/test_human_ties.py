"""A human tie is read the same way by every reader of human labels: an id/human_choice rows
file, an annotation log and a label input all accept it, and it names no better answer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from charter.errors import InputError
from charter.evaluate import evaluate_files
from charter.pairs import read_pairs
from tests.test_merge import event
from tests.test_route import labelled, write

# id: (AI p_a, people's label); t3 carries a human "a" that the people's tie replaces.
PAIRS = {"t1": (0.8, "a"), "t2": (0.3, "a"), "t3": (0.9, "tie"), "t4": (0.6, "b")}


def label_file(tmp_path: Path) -> Path:
    return write(
        tmp_path / "labels.jsonl",
        [labelled(i, p, human="a" if i == "t3" else None) for i, (p, _) in PAIRS.items()],
    )


def test_evaluate_reads_a_tie_row_as_an_annotation_log_tie(tmp_path: Path) -> None:
    labels = label_file(tmp_path)
    rows = tmp_path / "human_rows.jsonl"
    rows.write_text(
        "".join(json.dumps({"id": i, "human_choice": h}) + "\n" for i, (_, h) in PAIRS.items())
    )
    log = tmp_path / "human_log.jsonl"
    log.write_text("".join(event(i, "ann", h) for i, (_, h) in PAIRS.items()))

    from_rows = evaluate_files([labels], human=str(rows))
    from_log = evaluate_files([labels], human=str(log))
    for metrics in (from_rows, from_log):
        (judge,) = metrics.judges
        # The tie has no better answer to agree with: out of agreement and calibration.
        assert (judge.pairs_with_human_label, judge.pairs_with_human_tie) == (3, 1)
        assert judge.agreement is not None
        assert judge.agreement.accuracy == pytest.approx(1 / 3)  # t1 right; t2, t4 wrong
        assert judge.calibration is not None
        assert judge.calibration.brier == pytest.approx((0.2**2 + 0.7**2 + 0.6**2) / 3)
        assert any("1 pair(s) people called a tie are left out" in n for n in metrics.notes)
    rows_judge, log_judge = from_rows.judges[0], from_log.judges[0]
    assert rows_judge.agreement == log_judge.agreement
    assert rows_judge.calibration == log_judge.calibration

    rows.write_text('{"id": "t1", "human_choice": "a"}\n{"id": "t2", "human_choice": "both"}\n')
    with pytest.raises(InputError, match=rf"^{rows}:2: human_choice: "):
        evaluate_files([labels], human=str(rows))


def test_label_inputs_accept_a_tie_and_carry_no_better_answer(tmp_path: Path) -> None:
    src = tmp_path / "pairs.jsonl"
    rows = [
        {"id": i, "prompt": "q", "response_a": "x", "response_b": "y", "human_choice": h}
        for i, h in [("a", "a"), ("tie", "tie"), ("none", None)]
    ]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert {p.id: p.human_choice for p in read_pairs(src)} == {"a": "a", "tie": None, "none": None}
    src.write_text(json.dumps({**rows[0], "human_choice": "c"}) + "\n")
    with pytest.raises(InputError, match="human_choice must be 'a', 'b' or 'tie'"):
        list(read_pairs(src))
