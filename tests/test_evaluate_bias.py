"""``evaluate``'s length-controlled win rate, self-preference and prediction-powered
estimates, on label files with a planted truth (the estimators themselves: test_stats.py)."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from charter.errors import ConfigError
from charter.evaluate import evaluate_files
from tests.conftest import run_cli
from tests.test_evaluate import label

N = 400


def _sigmoid(z: float) -> float:
    return 1 / (1 + math.exp(-z))


def head_to_head_file(path: Path, *, judge: str, bias: float, seed: int = 0) -> Path:
    """Models m1 and m2 of equal quality (people pick each half the time), m1 writing longer
    answers; the judge prefers length by ``bias`` (log-odds per unit of the tanh term)."""
    rng = random.Random(seed)
    lines = []
    for i in range(N):
        w1, w2 = rng.randint(40, 120), rng.randint(10, 90)
        a_is_m1 = rng.random() < 0.5
        wa, wb = (w1, w2) if a_is_m1 else (w2, w1)
        pref_m1 = _sigmoid(bias * math.tanh((w1 - w2) / 40) + rng.gauss(0, 1))
        p_a = pref_m1 if a_is_m1 else 1 - pref_m1
        human = rng.choice("ab")
        rec = label(id=f"p{i}", p_a=round(p_a, 6), human=human,
                    response_a=" ".join(["w"] * wa), response_b=" ".join(["w"] * wb))  # fmt: skip
        data = json.loads(rec.model_dump_json())
        first, second = ("m1", "m2") if a_is_m1 else ("m2", "m1")
        data.update(a_source=f"responses[0] (openai/{first})",
                    b_source=f"responses[1] (openai/{second})", judge=judge)  # fmt: skip
        lines.append(json.dumps(data))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_length_control_and_self_preference_in_evaluate(tmp_path: Path) -> None:
    # m1's own judge, biased towards length (and so towards m1, which writes longer)
    own = head_to_head_file(tmp_path / "own.jsonl", judge="openai/m1", bias=2.0)
    fair = head_to_head_file(tmp_path / "fair.jsonl", judge="openai/m3", bias=0.0)
    metrics = evaluate_files([own, fair])
    biased, even = (j.bias for j in metrics.judges)
    assert biased is not None and even is not None
    h2h = biased.head_to_head
    assert h2h is not None and (h2h.model, h2h.opponent) == ("openai/m1", "openai/m2")
    assert h2h.judge.raw.value > 0.65  # carried off by length
    assert abs(h2h.judge.controlled.value - 0.5) < 0.04  # equal once length is controlled
    assert h2h.judge.controlled.ci95[1] - h2h.judge.controlled.ci95[0] < 0.15
    assert h2h.judge.length_effect > 1.0
    assert (
        h2h.human is not None and h2h.human.controlled.ci95[0] < 0.5 < h2h.human.controlled.ci95[1]
    )
    # m1 judging its own answers prefers them, against people and against judge m3
    references = {s.reference: s for s in biased.self_preference}
    assert set(references) == {"people", "openai/m3 (fair (openai/m3))"}
    assert all(s.difference.ci95[0] > 0 for s in references.values())
    assert even.self_preference == [] and "wrote none of the answers" in str(
        even.self_preference_note
    )
    assert biased.estimates is None and "random draw" in str(biased.estimates_note)


def _log(path: Path, routed: dict[str, str]) -> Path:
    path.write_text(
        "".join(
            json.dumps({"event": "label", "id": pid, "annotator": "ann", "choice": "a",
                        "routed_by": by, "time": "2026-01-01T00:00:00Z"}) + "\n"
            for pid, by in routed.items()
        )
    )  # fmt: skip
    return path


def test_ppi_uses_the_random_draw_only_and_refuses_doubt(tmp_path: Path) -> None:
    src = head_to_head_file(tmp_path / "l.jsonl", judge="openai/j", bias=0.0)
    routed = {f"p{i}": "control" if i < 30 else "uncertainty" for i in range(40)}
    mixed = _log(tmp_path / "mixed.jsonl", routed)
    (judge,) = evaluate_files([src], human=str(mixed)).judges
    assert judge.bias is not None and judge.bias.estimates is not None
    est = judge.bias.estimates
    assert (est.pairs, est.drawn) == (N, 30)  # the doubt-routed pairs are left out
    assert est.rate_of == "openai/m1 preferred over openai/m2"
    assert est.rates.human_only.n == 30 and est.rates.ppi.n == 30
    with pytest.raises(ConfigError, match="routed because the judge was doubtful"):
        evaluate_files([src], human=str(mixed), human_random=True)
    doubt = _log(tmp_path / "doubt.jsonl", {f"p{i}": "uncertainty" for i in range(10)})
    (judge,) = evaluate_files([src], human=str(doubt)).judges
    assert judge.bias is not None and judge.bias.estimates is None
    # the labels carried in the file, vouched for as a random draw
    (judge,) = evaluate_files([src], human_random=True).judges
    assert judge.bias is not None and judge.bias.estimates is not None
    assert judge.bias.estimates.drawn == N
    refused = run_cli("evaluate", str(src), "-o", str(tmp_path / "r"), "--human", str(mixed),
                      "--human-random")  # fmt: skip
    assert refused.returncode != 0 and "doubtful" in refused.stderr
    assert "Traceback" not in refused.stderr
