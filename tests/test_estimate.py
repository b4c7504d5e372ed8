"""``--estimate``: what a job will cost, said from a dry run of a sample that sends nothing
and writes nothing."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

import charter
from charter.api import run_job
from charter.estimate import Estimate, EstimateOptions, estimate_recipe
from charter.recipe import load_recipe
from charter.testing.server import FakeOpenAIServer
from tests.conftest import run_cli

PAIRS = [
    {
        "prompt": f"How do I do thing number {i}?",
        "chosen": f"Carefully, step {i}: first this, then that, and check it works.",
        "rejected": f"Just do thing {i}.",
    }
    for i in range(7)
]


def write_jsonl(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*")}


@pytest.mark.parametrize(
    ("flags", "per_pair"),
    [
        ({}, 2),  # both orders, one principle
        ({"principles": 3}, 6),  # both orders x 3 principles, each asked apart
        ({"principles": 3, "orders": "first"}, 3),
        ({"principles": 2, "cot": True}, 8),  # CoT: the reasoning, then the letter asked
    ],
)
def test_label_requests_are_counted_exactly(
    tmp_path: Path, flags: dict[str, object], per_pair: int
) -> None:
    pairs = write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    est = charter.run(
        "label",
        input=str(pairs),
        output=tmp_path / "labels.jsonl",
        judge="mock/judge",
        constitution="harmless",
        estimate=True,
        estimate_sample=3,  # 3 of the 7 pairs run dry, the other 4 projected
        **flags,
    )
    assert isinstance(est, Estimate)
    [stage] = est.stages
    assert (stage.records, stage.sampled, stage.failed) == (7, 3, 0)
    [model] = stage.models
    assert model.name == "mock/judge"
    assert model.requests == 7 * per_pair == est.requests


@pytest.mark.parametrize(
    ("stage", "judge", "flags", "per_row"),
    [
        ("score", "mock/judge", {}, 2),  # CoT feedback ending "Score: N", then the number
        ("score", "mock/judge", {"format": "prometheus"}, 1),  # feedback ending [RESULT] N
        ("label", "mock/blind", {}, 2),  # no log-probabilities: the letter, read, per order
        ("label", "mock/blind", {"votes": 3}, 6),
        ("label", "mock/blind", {"cot": True}, 2),  # the verdict read after the reasoning
    ],
)
def test_verdicts_read_from_text_are_read_at_the_first_ask(
    tmp_path: Path, stage: str, judge: str, flags: dict[str, object], per_row: int
) -> None:
    """The dry judge ends its placeholder with the verdict each format asks for, so no
    request is asked again for want of one (which would inflate the count)."""
    from charter.backends.mock import MockBackend, register_mock, unregister_mock

    register_mock(MockBackend("mock/blind", logprobs=False))
    rows = (
        PAIRS
        if stage == "label"
        else [{"prompt": p["prompt"], "response": p["chosen"]} for p in PAIRS]
    )
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    what = {"constitution": "harmless"} if stage == "label" else {"rubric": "helpfulness"}
    try:
        est = charter.run(
            stage, input=str(source), output=tmp_path / "o.jsonl", judge=judge, estimate=True,
            **what, **flags,
        )  # fmt: skip
    finally:
        unregister_mock("mock/blind")
    [said] = est.stages
    assert (said.failed, said.note) == (0, None)
    assert said.models[0].requests == len(PAIRS) * per_row


def test_the_estimate_matches_what_a_mock_run_sends(tmp_path: Path) -> None:
    """Option requests (no placeholder in them): the estimate's prompt tokens are the real
    run's, counted by the mock's own rule."""
    pairs = write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    options = {
        "input": str(pairs),
        "output": tmp_path / "labels.jsonl",
        "judge": "mock/judge",
        "constitution": "harmless",
        "principles": 2,
    }
    est = charter.run("label", estimate=True, estimate_sample=7, **options)
    real = charter.run("label", **options)
    [used] = real.models
    assert (est.requests, est.prompt_tokens) == (used.usage.requests, used.usage.prompt_tokens)


def test_a_reward_model_judge_is_counted_with_its_tokenizer(tmp_path: Path, rm_dir: Path) -> None:
    pairs = write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    options = {"input": str(pairs), "output": tmp_path / "l.jsonl", "judge": f"rm/{rm_dir}"}
    est = charter.run("label", constitution="harmless", estimate=True, **options)
    real = charter.run("label", constitution="harmless", **options)
    [used] = real.models
    assert est.requests == used.usage.requests == 2 * len(PAIRS)  # each answer scored alone
    assert est.prompt_tokens == used.usage.prompt_tokens


def test_an_estimate_writes_nothing(tmp_path: Path) -> None:
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"Q{i}?"} for i in range(5)])
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"""
defaults: {{max_tokens: 40}}
stages:
  - {{stage: respond, model: mock/policy, input: {prompts}, output: {tmp_path}/out/r.jsonl, n: 2}}
  - {{stage: revise, model: mock/policy, input: "@respond", output: {tmp_path}/out/v.jsonl,
      constitution: harmless, rounds: 2, few_shot: none, pairs: {tmp_path}/out/p.jsonl}}
  - {{stage: label, judge: mock/judge, input: "@revise", output: {tmp_path}/out/l.jsonl,
      constitution: harmless}}
  - {{stage: route, input: "@label", output: {tmp_path}/out/q.jsonl, budget: 2}}
""",
        encoding="utf-8",
    )
    before = files_under(tmp_path)
    done = run_cli("run", str(recipe), "--estimate", "--estimate-sample", "3")
    assert done.returncode == 0, done.stderr
    assert files_under(tmp_path) == before  # no output, settings file or cache
    for stage in ("1. respond", "2. revise", "3. label", "4. route"):
        assert stage in done.stdout
    assert "calls no model" in done.stdout
    assert "ceiling, every answer at max_tokens" in done.stdout
    single = run_cli(
        "label", str(tmp_path / "recipe.yaml"), "-o", str(tmp_path / "l.jsonl"), "-j", "mock/x",
        "--constitution", "harmless", "--estimate-sample", "3",
    )  # fmt: skip
    assert single.returncode != 0
    assert "--estimate-sample only apply with --estimate" in single.stderr
    assert "Traceback" not in single.stderr
    assert files_under(tmp_path) == before


def test_a_recipe_projects_later_stages_from_the_earlier_ones(tmp_path: Path) -> None:
    """respond (5 prompts, --n 3) -> label: 3 pairs per row, 15 pairs, 2 requests each."""
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"Q{i}?"} for i in range(9)])
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"""
stages:
  - {{stage: respond, model: mock/policy, input: {prompts}, output: {tmp_path}/r.jsonl, n: 3,
      limit: 5}}
  - {{stage: label, judge: mock/judge, input: "@respond", output: {tmp_path}/l.jsonl,
      constitution: harmless}}
""",
        encoding="utf-8",
    )
    options = EstimateOptions(estimate=True, estimate_sample=2)
    est = asyncio.run(estimate_recipe(load_recipe(recipe), options))
    respond, label = est.stages
    assert (respond.records, respond.sampled, respond.models[0].requests) == (5, 2, 15)
    assert (label.records, label.sampled, label.models[0].requests) == (15, 2, 30)
    assert not any(tmp_path.glob("*.jsonl.*")) and not (tmp_path / "r.jsonl").exists()


def test_a_stage_reading_what_no_dry_run_writes_is_not_estimated(tmp_path: Path) -> None:
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "Q?"}])
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"""
stages:
  - {{stage: revise, model: mock/p, input: {prompts}, output: {tmp_path}/v.jsonl,
      constitution: harmless, few_shot: none, pairs: {tmp_path}/pairs.jsonl}}
  - {{stage: label, judge: mock/j, input: {tmp_path}/pairs.jsonl, output: {tmp_path}/l.jsonl,
      constitution: harmless}}
  - {{stage: select, input: {tmp_path}/l.jsonl, output: {tmp_path}/best.jsonl}}
""",
        encoding="utf-8",
    )
    est = asyncio.run(estimate_recipe(load_recipe(recipe), EstimateOptions(estimate=True)))
    revise, label, select = est.stages
    assert revise.estimated and revise.models[0].requests == 1 + 2 * 2
    assert not label.estimated and "pairs.jsonl is written by stage 1 (revise)" in str(label.note)
    assert (select.estimated, select.note) == (False, "calls no model")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prompts.jsonl", "recipe.yaml"]


def test_openai_models_are_estimated_offline(
    tmp_path: Path, server: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "Say hi."}] * 1)
    est = charter.run(
        "respond",
        input=str(prompts),
        output=tmp_path / "r.jsonl",
        model="openai/gpt-4o-mini",
        base_url=server.base_url,
        n=4,
        max_tokens=100,
        price_input=0.15,
        price_output=0.60,
        estimate=True,
        estimate_fill=0.5,
    )
    assert server.requests == []
    [model] = est.stages[0].models
    assert (model.requests, model.completion_tokens) == (4, 4 * 50)
    assert model.cost == pytest.approx((model.prompt_tokens * 0.15 + 200 * 0.60) / 1e6)
    assert model.tokenizer.startswith(("tiktoken", "characters/4"))
    assert est.ceiling is not None and est.ceiling.completion_tokens == 400
    # no key and no server: an estimate needs neither
    charter.run(
        "respond",
        input=str(prompts),
        output=tmp_path / "r.jsonl",
        model="openai/gpt-4o-mini",
        estimate=True,
    )
    assert list(tmp_path.iterdir()) == [prompts]


DEMO = """
defaults: {{max_tokens: 24, temperature: 0.7, concurrency: 8, seed: 0}}
stages:
  - {{stage: respond, model: smollm2, input: {root}/examples/prompts.jsonl,
      output: {out}/responses.jsonl, n: 2, limit: 2}}
  - {{stage: revise, model: smollm2, input: "@respond", output: {out}/revisions.jsonl,
      constitution: harmless, rounds: 1, few_shot: none}}
  - {{stage: label, name: label-samples, judge: smollm2, input: "@respond",
      output: {out}/labels-samples.jsonl, constitution: harmless}}
"""


@pytest.mark.slow
def test_the_estimate_of_a_reduced_demo_is_within_10_percent(tmp_path: Path) -> None:
    """The demo recipe on two prompts (examples/demo.yaml's settings): the estimate, made
    first, against the tokens the run then reports; the ceiling is never below them."""
    pytest.importorskip("transformers")
    root = Path(__file__).resolve().parents[1]
    recipe = tmp_path / "demo.yaml"
    recipe.write_text(DEMO.format(root=root, out=tmp_path / "runs"), encoding="utf-8")
    plan = load_recipe(recipe)
    est = asyncio.run(estimate_recipe(plan, EstimateOptions(estimate=True)))
    assert not (tmp_path / "runs").exists()

    async def run_all() -> tuple[int, int]:
        prompt = completion = 0
        for step in plan:
            summary = await run_job(step.job, step.options, step.engine)
            prompt += sum(m.usage.prompt_tokens for m in summary.models)
            completion += sum(m.usage.completion_tokens for m in summary.models)
        return prompt, completion

    prompt, completion = asyncio.run(run_all())
    assert est.prompt_tokens == pytest.approx(prompt, rel=0.10)
    total = est.prompt_tokens + est.completion_tokens
    assert total == pytest.approx(prompt + completion, rel=0.10)
    assert est.ceiling is not None
    assert est.ceiling.prompt_tokens + est.ceiling.completion_tokens >= prompt + completion
