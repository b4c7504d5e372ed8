from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import yaml

from charter.constitution import builtin_names, load_constitution
from charter.errors import ConstitutionError
from charter.seeds import derive_rng


def test_builtins_load_and_meet_minimums() -> None:
    assert set(builtin_names()) >= {"harmless", "hhh", "rules", "spec"}
    harmless = load_constitution("harmless")
    assert len(harmless.principles) >= 12
    assert harmless.few_shot, "harmless ships worked critique/revision examples"
    tags = {t for p in harmless.principles for t in p.tags}
    assert {"privacy", "fairness", "minors", "law", "autonomy"} <= tags
    spec = load_constitution("spec")
    assert spec.preamble and all(p.priority for p in spec.principles)


def test_hash_is_content_based_across_formats(tmp_path: Path) -> None:
    data = {
        "name": "tiny",
        "principles": [
            {
                "id": "a",
                "critique_request": "c?",
                "revision_request": "r.",
                "comparison_question": "q?",
            }
        ],
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(data))
    (tmp_path / "c.json").write_text(json.dumps(data))
    (tmp_path / "c.toml").write_text(
        'name = "tiny"\n[[principles]]\nid = "a"\ncritique_request = "c?"\n'
        'revision_request = "r."\ncomparison_question = "q?"\n'
    )
    hashes = {load_constitution(tmp_path / f"c.{ext}").hash for ext in ("yaml", "json", "toml")}
    assert len(hashes) == 1
    data["principles"][0]["weight"] = 2.0  # type: ignore[index]
    (tmp_path / "d.json").write_text(json.dumps(data))
    assert load_constitution(tmp_path / "d.json").hash not in hashes


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (
            {
                "name": "x",
                "principles": [{"id": "a", "critique_request": "c", "revision_request": "r"}],
            },
            "principles[0].comparison_question: Field required",
        ),
        (
            {
                "name": "x",
                "principles": [
                    {
                        "id": "a",
                        "critique_request": "c",
                        "revision_request": "r",
                        "comparison_question": "q",
                        "wieght": 2,
                    }
                ],
            },
            "principles[0].wieght: Extra inputs are not permitted",
        ),
        ({"name": "x", "principles": []}, "principles: Tuple should have at least 1 item"),
        (
            {
                "name": "x",
                "principles": [
                    {
                        "id": "a",
                        "critique_request": "c",
                        "revision_request": "r",
                        "comparison_question": "q",
                    },
                    {
                        "id": "a",
                        "critique_request": "c",
                        "revision_request": "r",
                        "comparison_question": "q",
                    },
                ],
            },
            "duplicate principle id 'a'",
        ),
        (
            {
                "name": "x",
                "principles": [
                    {
                        "id": "a",
                        "critique_request": "c",
                        "revision_request": "r",
                        "comparison_question": "q",
                        "weight": -1,
                    }
                ],
            },
            "principles[0].weight: Input should be greater than 0",
        ),
    ],
)
def test_validation_errors_name_file_and_field(
    tmp_path: Path, content: dict[str, object], expected: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(content))
    with pytest.raises(ConstitutionError) as info:
        load_constitution(path)
    assert str(path) in str(info.value)
    assert expected in str(info.value)


def test_unparseable_and_missing_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConstitutionError, match=r"bad\.json: not valid JSON"):
        load_constitution(bad)
    with pytest.raises(
        ConstitutionError, match=r"constitution not found: nope.*built-ins: harmless"
    ):
        load_constitution("nope")


def test_sampling_is_seeded_and_without_replacement() -> None:
    c = load_constitution("harmless")
    a = [p.id for p in c.sample(5, derive_rng(7, "rec-1"))]
    b = [p.id for p in c.sample(5, derive_rng(7, "rec-1"))]
    other = [p.id for p in c.sample(5, derive_rng(7, "rec-2"))]
    assert a == b
    assert a != other
    assert len(set(a)) == 5
    everything = c.sample(len(c.principles), derive_rng(1))
    assert sorted(p.id for p in everything) == sorted(p.id for p in c.principles)
    with pytest.raises(ConstitutionError, match="cannot sample 99 distinct"):
        c.sample(99, derive_rng(1))


def test_sampling_follows_weights() -> None:
    c = load_constitution("harmless")
    rng = derive_rng(0)
    counts = Counter(p.id for p in c.sample(20000, rng, replace=True))
    total_weight = sum(p.weight for p in c.principles)
    for p in c.principles:
        expected = 20000 * p.weight / total_weight
        assert abs(counts[p.id] - expected) < 0.15 * expected
    # Without replacement, a doubly weighted principle comes first more often than a single one.
    firsts = Counter(c.sample(1, derive_rng(0, i))[0].id for i in range(4000))
    singles = [firsts[p.id] for p in c.principles if p.weight == 1.0]
    assert firsts["overall-harm"] > 1.5 * (sum(singles) / len(singles))
