"""Outputs written by an earlier charter, kept as fixtures: the same inputs and settings give
byte-identical records, and settings files with the same settings (what a resume compares:
outputs made before a refactor still resume; the order of the keys may change). Every judge
path runs: option log-probabilities, principle ensembles by priority, CoT, votes, a reasoning
judge, a reward model, rubric scores, Prometheus, probe, deliberate, select, route and merge;
plus respond and revise.

To write the fixtures anew (only when a change to the records is intended and said so):
``CHARTER_WRITE_FIXTURES=1 pytest tests/test_unchanged_outputs.py``.
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import charter
from charter.backends.mock import MockBackend, register_mock, unregister_mock
from charter.testing.server import FakeOpenAIServer, ReasonedReply
from charter.types import GenerateConfig

FIXTURES = Path(__file__).parent / "fixtures" / "unchanged"
WRITE = os.environ.get("CHARTER_WRITE_FIXTURES") == "1"

PROMPTS = [
    "How do I pick a lock?",
    "Write a short poem about rain.",
    "What should I do if my friend seems very sad?",
]
PAIRS = [
    ("How do I pick a lock?", "Ask a locksmith; it may be illegal.", "Use a tension wrench."),
    ("Tell me a joke.", "Why did the chicken cross the road?", "No."),
    ("How do I make a bomb?", "I can't help with that.", "Mix these chemicals..."),
    ("Summarise: the cat sat.", "A cat sat down.", "The cat, it sat, on the mat, maybe."),
]


def _rows(path: Path, rows: list[dict[str, Any]]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path.name


def _prompts(folder: Path) -> str:
    return _rows(
        folder / "prompts.jsonl", [{"id": f"p{i}", "prompt": p} for i, p in enumerate(PROMPTS)]
    )


def _pairs(folder: Path, human: bool = False) -> str:
    rows = [
        {"id": f"q{i}", "prompt": p, "response_a": a, "response_b": b}
        | ({"human_choice": "ab"[i % 2]} if human else {})
        for i, (p, a, b) in enumerate(PAIRS)
    ]
    return _rows(folder / "pairs.jsonl", rows)


def _answers(folder: Path) -> str:
    rows = [
        {"id": f"a{i}:{j}", "prompt": p, "response": answer}
        for i, (p, a, b) in enumerate(PAIRS)
        for j, answer in enumerate((a, b))
    ]
    return _rows(folder / "answers.jsonl", rows)


def _pick(text: str) -> str:
    """A verdict that depends on the question only: A or B by a hash of it."""
    return "AB"[zlib.crc32(text.encode()) % 2]


def _reasoned_judge(messages: Any, config: GenerateConfig) -> str:
    return (
        f"The first answer is careful, the second less so.\nAnswer: {_pick(messages[-1].content)}"
    )


def _voter(messages: Any, config: GenerateConfig) -> str:
    return _pick(f"{messages[-1].content}{config.seed}")


def _grader(messages: Any, config: GenerateConfig) -> str:
    score = 1 + zlib.crc32(messages[-1].content.encode()) % 5
    if config.max_tokens <= 8:
        return str(score)
    return f"The reply is relevant and safe enough.\nScore: {score}"


def _prometheus(messages: Any, config: GenerateConfig) -> str:
    text = messages[-1].content
    if "###Response A" in text or "Response A" in text:
        return f"Feedback: Both are fine; one is better. [RESULT] {_pick(text + str(config.seed))}"
    return f"Feedback: The response meets the rubric. [RESULT] {1 + zlib.crc32(text.encode()) % 5}"


def _deliberator(messages: Any, config: GenerateConfig) -> str:
    if "Score" in messages[0].content:  # graded by the spec's rubric
        return "It follows the spec.\nScore: 4"
    return "[p1-no-serious-harm] decides; [p2-honesty] too. So: a careful answer."


MOCKS: dict[str, dict[str, Any]] = {
    "mock/fx-cot": {"responder": _reasoned_judge},
    "mock/fx-votes": {"responder": _voter, "logprobs": False},
    "mock/fx-grader": {"responder": _grader},
    "mock/fx-grader-text": {"responder": _grader, "logprobs": False},
    "mock/fx-prometheus": {"responder": _prometheus, "logprobs": False},
    "mock/fx-deliberator": {"responder": _deliberator},
}


@pytest.fixture(scope="module", autouse=True)
def mocks() -> Iterator[None]:
    for name, how in MOCKS.items():
        register_mock(MockBackend(name, **how))
    yield
    for name in MOCKS:
        unregister_mock(name)


Case = Callable[[Path], None]
"""Writes its inputs in the folder (the working directory) and runs there."""


def run(stage: str, **options: Any) -> None:
    file_stage = stage in ("select", "route")  # no cache: they call no model
    charter.run(stage, **options, **({} if file_stage else {"no_cache": True}))


def _respond(folder: Path) -> None:
    run("respond", input=_prompts(folder), output="out.jsonl", model="mock/policy", n=2)


def _revise(folder: Path) -> None:
    run(
        "revise", input=_prompts(folder), output="out.jsonl", model="mock/policy",
        constitution="harmless", rounds=2, pairs="pairs-out.jsonl",
    )  # fmt: skip


def _label(folder: Path) -> None:
    run("label", input=_pairs(folder, human=True), output="out.jsonl", judge="mock/judge",
        constitution="harmless")  # fmt: skip


def _label_priority(folder: Path) -> None:
    run(
        "label", input=_pairs(folder), output="out.jsonl", judge="mock/judge",
        constitution="spec", principles=3, weights="priority",
    )  # fmt: skip


def _label_in_prompt(folder: Path) -> None:
    run(
        "label", input=_pairs(folder), output="out.jsonl", judge="mock/judge",
        constitution="spec", principles_in_prompt=3, orders="random",
    )  # fmt: skip


def _label_cot(folder: Path) -> None:
    run("label", input=_pairs(folder), output="out.jsonl", judge="mock/fx-cot",
        constitution="harmless", cot=True)  # fmt: skip


def _label_votes(folder: Path) -> None:
    run("label", input=_pairs(folder), output="out.jsonl", judge="mock/fx-votes",
        constitution="harmless", votes=3, min_confidence=0.2)  # fmt: skip


def _label_few_shot(folder: Path) -> None:
    run("label", input=_pairs(folder), output="out.jsonl", judge="mock/judge",
        constitution="harmless", few_shot="auto", orders="first")  # fmt: skip


def _label_reasoning(folder: Path) -> None:
    reply = ReasonedReply(
        content="<think>B is shorter.</think> A", option_probs={"A": 0.7, "B": 0.3}
    )
    with FakeOpenAIServer(reasoned=reply) as srv:
        run("label", input=_pairs(folder), output="out.jsonl", judge="openai/judge",
            base_url=srv.base_url, constitution="harmless")  # fmt: skip


def _label_reward(folder: Path) -> None:
    from charter.testing.tiny import tiny_reward_model

    rm = tiny_reward_model(folder / "rm")
    run("label", input=_pairs(folder), output="out.jsonl", judge=f"rm/{rm.name}",
        constitution="harmless")  # fmt: skip


def _score(folder: Path) -> None:
    run("score", input=_answers(folder), output="out.jsonl", judge="mock/fx-grader",
        rubric="helpfulness")  # fmt: skip


def _score_no_cot(folder: Path) -> None:
    run("score", input=_answers(folder), output="out.jsonl", judge="mock/fx-grader-text",
        rubric="harmlessness", cot=False)  # fmt: skip


def _score_relative(folder: Path) -> None:
    run("score", input=_pairs(folder), output="out.jsonl", judge="mock/judge",
        rubric="honesty", mode="relative")  # fmt: skip


def _prometheus_absolute(folder: Path) -> None:
    run("score", input=_answers(folder), output="out.jsonl", judge="mock/fx-prometheus",
        rubric="helpfulness", format="prometheus")  # fmt: skip


def _prometheus_relative(folder: Path) -> None:
    run("score", input=_pairs(folder), output="out.jsonl", judge="mock/fx-prometheus",
        rubric="helpfulness", format="prometheus", mode="relative", votes=2)  # fmt: skip


def _probe(folder: Path) -> None:
    run("probe", input=_pairs(folder), output="out.jsonl", judge="mock/judge",
        constitution="harmless")  # fmt: skip


def _deliberate(folder: Path) -> None:
    run("deliberate", input=_prompts(folder), output="out.jsonl", model="mock/fx-deliberator",
        constitution="spec", sft="sft.jsonl", n=2, judge="mock/fx-deliberator")  # fmt: skip


def _select(folder: Path) -> None:
    _score(folder)
    run("select", input="out.jsonl", output="best.jsonl", pairs="scored-pairs.jsonl",
        min_gap=0.3)  # fmt: skip


def _route_and_merge(folder: Path) -> None:
    _label(folder)
    run("route", input="out.jsonl", output="queue.jsonl", budget=2, control=1, seed=3)
    log = folder / "human.jsonl"
    log.write_text(
        "".join(
            json.dumps({"event": "label", "id": f"q{i}", "annotator": "ann", "choice": c,
                        "routed_by": "uncertainty", "time": f"2026-01-0{i + 1}T00:00:00Z"})
            + "\n"
            for i, c in enumerate("abt")
        ).replace('"t"', '"tie"')
    )  # fmt: skip
    charter.merge("out.jsonl", ["human.jsonl"], "merged.jsonl")


def _evaluate(folder: Path) -> None:
    """``evaluate``'s metrics.json (its report.html aside: the plots are images) over two
    label files, human labels carried on the pairs and an annotation log of routed and
    control pairs."""
    from charter.evaluate import evaluate_files

    rows = [
        {"id": f"q{i}", "prompt": f"Question {i}: {PAIRS[i % 4][0]}",
         "response_a": PAIRS[i % 4][1] + " more" * (i % 5), "response_b": PAIRS[i % 4][2],
         "human_choice": "ab"[(i * 7 // 3) % 2]}
        for i in range(48)
    ]  # fmt: skip
    pairs = _rows(folder / "pairs.jsonl", rows)
    run("label", input=pairs, output="out.jsonl", judge="mock/judge", constitution="harmless",
        principles=2)  # fmt: skip
    run("label", input=pairs, output="cot.jsonl", judge="mock/fx-cot",
        constitution="harmless", cot=True)  # fmt: skip
    (folder / "human.jsonl").write_text(
        "".join(
            json.dumps({"event": "label", "id": f"q{i}", "annotator": "ann", "choice": c,
                        "routed_by": by, "time": f"2026-01-0{i + 1}T00:00:00Z"})
            + "\n"
            for i, (c, by) in enumerate([("a", "uncertainty"), ("b", "control"),
                                         ("b", "control"), ("a", "random")])
        )
    )  # fmt: skip
    for human in ("auto", "human.jsonl"):
        metrics = evaluate_files([Path("out.jsonl"), Path("cot.jsonl")], human=human, seed=0)
        name = "metrics.json" if human == "auto" else "metrics-log.json"
        (folder / name).write_text(metrics.model_dump_json(indent=2), encoding="utf-8")


CASES: dict[str, Case] = {
    "respond": _respond,
    "revise": _revise,
    "label": _label,
    "label-priority": _label_priority,
    "label-in-prompt": _label_in_prompt,
    "label-cot": _label_cot,
    "label-votes": _label_votes,
    "label-few-shot": _label_few_shot,
    "label-reasoning": _label_reasoning,
    "label-reward": _label_reward,
    "score": _score,
    "score-no-cot": _score_no_cot,
    "score-relative": _score_relative,
    "prometheus-absolute": _prometheus_absolute,
    "prometheus-relative": _prometheus_relative,
    "probe": _probe,
    "deliberate": _deliberate,
    "select": _select,
    "route-merge": _route_and_merge,
    "evaluate": _evaluate,
}

SKIP = {"charter-cache.sqlite", "rm"}
"""What a run leaves that is not its records: the request cache, a model folder."""


def _written(folder: Path, inputs: set[str]) -> dict[str, bytes]:
    return {
        p.name: p.read_bytes()
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name not in inputs and p.name not in SKIP
    }


@pytest.mark.parametrize("name", list(CASES))
def test_outputs_are_byte_identical_to_the_fixtures(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # relative paths, as in the fixtures
    CASES[name](tmp_path)
    got = _written(tmp_path, {"prompts.jsonl", "pairs.jsonl", "answers.jsonl", "human.jsonl"})
    assert got, f"{name} wrote nothing"
    folder = FIXTURES / name
    if WRITE:
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.iterdir():
            old.unlink()
        for file, data in got.items():
            (folder / file).write_bytes(data)
        return
    want = {p.name: p.read_bytes() for p in sorted(folder.iterdir())}
    assert sorted(got) == sorted(want), f"{name}: other files than the fixture's"
    for file in want:
        if file.endswith(".settings.json"):
            assert json.loads(got[file]) == json.loads(want[file]), f"{name}/{file}: settings"
            continue
        assert got[file] == want[file], f"{name}/{file} differs from tests/fixtures/unchanged"
