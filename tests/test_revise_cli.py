"""charter revise / charter run as a user runs them, against a real local HTTP server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from charter.testing.server import FakeOpenAIServer, Fault
from tests.conftest import ROOT, ids_of, run_cli


def write_prompts(path: Path, n: int, poison: set[int] = frozenset()) -> list[str]:  # type: ignore[assignment]
    ids = []
    with path.open("w") as f:
        for i in range(n):
            text = f"poison request {i}" if i in poison else f"ordinary request {i}"
            f.write(json.dumps({"id": f"p{i:03d}", "prompt": text}) + "\n")
            ids.append(f"p{i:03d}")
    return ids


def poison_rule(body: dict) -> Fault | None:  # type: ignore[type-arg]
    first = body["messages"][0]["content"]
    return Fault(500, message="model crashed on this input") if "poison" in first else None


def test_kill_9_mid_run_then_resume_gives_each_id_exactly_once(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    ids = write_prompts(src, 60, poison={7, 33})
    out = tmp_path / "out.jsonl"
    failed = tmp_path / "out.failed.jsonl"
    with FakeOpenAIServer(latency=0.03, fault_rule=poison_rule) as srv:
        args = [
            sys.executable,
            "-m",
            "charter",
            "revise",
            str(src),
            "-o",
            str(out),
            "-m",
            "openai/fake",
            "--base-url",
            srv.base_url,
            "--constitution",
            "harmless",
            "--rounds",
            "2",
            "-c",
            "4",
            "--max-tokens",
            "20",
            "--retries",
            "1",
            "-q",
        ]
        env = {**os.environ, "NO_COLOR": "1"}
        proc = subprocess.Popen(
            args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT
        )
        deadline = time.time() + 60
        while len(ids_of(out)) < 8 and time.time() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        done_before = ids_of(out)
        assert 8 <= len(done_before) < 60, "the kill landed mid-run"
        sent_before = len(srv.requests)
        again = subprocess.run(args, env=env, capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert again.returncode == 0, again.stderr
    written, failures = ids_of(out), ids_of(failed)
    assert len(written) == len(set(written)), "no id written twice"
    assert set(written).isdisjoint(failures)
    assert sorted(written + failures) == ids
    assert sorted(failures) == ["p007", "p033"]
    assert written[: len(done_before)] == done_before, "earlier records kept as they were"
    assert f"{len(done_before)} already done" in again.stderr
    assert len(srv.requests) - sent_before < 60 * 5, "resumed, not restarted"


def test_failing_records_go_to_the_failed_file_with_reasons(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    ids = write_prompts(src, 6, poison={1, 4})
    out = tmp_path / "out.jsonl"

    def rule(body: dict) -> Fault | None:  # type: ignore[type-arg]
        first = body["messages"][0]["content"]
        if first == "poison request 4":
            return Fault(400, message="prompt rejected by server policy")
        return poison_rule(body)

    with FakeOpenAIServer(fault_rule=rule) as srv:
        r = run_cli(
            "revise",
            str(src),
            "-o",
            str(out),
            "-m",
            "openai/fake",
            "--base-url",
            srv.base_url,
            "--constitution",
            "rules",
            "--retries",
            "2",
            "--rounds",
            "1",
        )
        assert r.returncode == 0, r.stderr
        assert "4 written" in r.stderr and "2 failed" in r.stderr
        assert "failed records:" in r.stderr
        sent = [b["messages"][0]["content"] for b in srv.requests]
    assert sent.count("poison request 1") == 3, "retried 5xx: 1 try + 2 retries"
    assert sent.count("poison request 4") == 1, "4xx is not retried"
    failed = {
        f["id"]: f
        for f in map(json.loads, (tmp_path / "out.failed.jsonl").read_text().splitlines())
    }
    assert set(failed) == {"p001", "p004"}
    assert "HTTP 500" in failed["p001"]["error"] and "model crashed" in failed["p001"]["error"]
    assert "HTTP 400" in failed["p004"]["error"] and failed["p004"]["stage"] == "revise"
    assert failed["p004"]["input"]["messages"][0]["content"] == "poison request 4"
    assert sorted(ids_of(out) + list(failed)) == ids


def test_revise_from_respond_output_with_pairs(tmp_path: Path) -> None:
    responses = tmp_path / "responses.jsonl"
    r1 = run_cli(
        "respond",
        str(ROOT / "examples/prompts.jsonl"),
        "-o",
        str(responses),
        "-m",
        "mock/p",
        "--limit",
        "4",
    )
    assert r1.returncode == 0, r1.stderr
    out, pairs = tmp_path / "rev.jsonl", tmp_path / "pairs.jsonl"
    r2 = run_cli(
        "revise",
        str(responses),
        "-o",
        str(out),
        "-m",
        "mock/p",
        "--constitution",
        "harmless",
        "--rounds",
        "3",
        "--pairs",
        str(pairs),
    )
    assert r2.returncode == 0, r2.stderr
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    given = {
        json.loads(x)["id"]: json.loads(x)["responses"][0]
        for x in responses.read_text().splitlines()
    }
    assert all(r["initial_source"] == "input" and r["initial"] == given[r["id"]] for r in recs)
    assert all(len(r["rounds"]) == 3 for r in recs)
    assert all(r["messages"][-1] == {"role": "assistant", "content": r["final"]} for r in recs)
    rows = [json.loads(x) for x in pairs.read_text().splitlines()]
    assert len(rows) == sum(r["final"] != r["initial"] for r in recs) > 0
    assert set(rows[0]) >= {"prompt", "chosen", "rejected"}
    assert rows[0]["chosen"][0]["role"] == "assistant" and rows[0]["prompt"][0]["role"] == "user"
    import datasets

    ds = datasets.load_dataset("json", data_files=str(pairs), split="train")
    assert ds.column_names[:4] == ["id", "prompt", "chosen", "rejected"]
    sft = datasets.load_dataset("json", data_files=str(out), split="train")
    assert "messages" in sft.column_names


def test_recipe_runs_stages_in_order(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"""
defaults:
  model: mock/recipe
  temperature: 0.5
  rounds: 2
stages:
  - stage: respond
    input: {ROOT / "examples/prompts.jsonl"}
    output: {tmp_path / "a.jsonl"}
    n: 2
  - stage: revise
    name: fix
    input: "@respond"
    output: {tmp_path / "b.parquet"}
    constitution: rules
"""
    )
    r = run_cli("run", str(recipe))
    assert r.returncode == 0, r.stderr
    assert "stage 1/2: respond" in r.stderr and "stage 2/2: revise" in r.stderr
    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "b.parquet")
    assert table.num_rows == 16 and "rounds" in table.column_names
    again = run_cli("run", str(recipe))
    assert again.stderr.count("16 already done") == 2


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ("stages:\n  - stage: judge\n", "stages[0]: 'stage' must be one of respond, revise"),
        (
            "stages:\n  - stage: revise\n    input: x\n    output: y.jsonl\n    model: mock/x\n",
            "stages[0] (revise): constitution: Field required",
        ),
        (
            "stages:\n  - stage: respond\n    input: x\n    output: y.jsonl\n"
            "    model: m\n    n: 0\n",
            "stages[0] (respond): n: Input should be greater than or equal to 1",
        ),
        (
            "defaults:\n  modle: x\nstages:\n  - stage: respond\n",
            "defaults: unknown option(s) modle",
        ),
        (
            "stages:\n  - stage: revise\n    input: '@respond'\n",
            "input '@respond' names no earlier stage",
        ),
        ("stages: [", "not valid YAML"),
    ],
)
def test_bad_recipes_name_the_stage_and_field(tmp_path: Path, body: str, needle: str) -> None:
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(body)
    r = run_cli("run", str(recipe))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert needle in r.stderr and str(recipe) in r.stderr


def test_few_shot_file_and_no_few_shot(tmp_path: Path) -> None:
    from charter.backends.mock import MockBackend, register_mock, unregister_mock

    shots = tmp_path / "shots.yaml"
    shots.write_text(
        "few_shot:\n  - prompt: Tell me a secret.\n    answer: Here is one.\n"
        "    critique: It shares private information.\n    revision: I keep secrets private.\n"
    )
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"id": "x", "prompt": "hello"}) + "\n")
    from charter import run

    mock = register_mock(MockBackend("mock/fewshot"))
    try:
        for choice, first in ((str(shots), "Tell me a secret."), ("none", "hello")):
            mock.calls.clear()
            run(
                "revise",
                input=str(src),
                output=tmp_path / f"o-{first[:4]}.jsonl",
                model="mock/fewshot",
                constitution="harmless",
                rounds=1,
                few_shot=choice,
                no_cache=True,
            )
            assert mock.calls[1].messages[0].content == first
    finally:
        unregister_mock("mock/fewshot")
    bad = tmp_path / "bad.yaml"
    bad.write_text("few_shot:\n  - prompt: x\n")
    r = run_cli(
        "revise",
        str(src),
        "-o",
        str(tmp_path / "b.jsonl"),
        "-m",
        "mock/x",
        "--constitution",
        "harmless",
        "--few-shot",
        str(bad),
    )
    assert r.returncode == 2 and "bad.yaml: few_shot[0].answer: Field required" in r.stderr
