"""``--batch``: a stage's requests through OpenAI's batch API (the in-repo server's), each
round of requests one batch, recorded before the run waits, never submitted twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import charter
from charter.errors import ConfigError
from charter.testing.server import FakeOpenAIServer
from tests.conftest import ROOT, ids_of, run_cli

FAST = {"batch_poll": 0.05}


def prompts(path: Path, n: int) -> Path:
    path.write_text(
        "".join(json.dumps({"id": f"p{i}", "prompt": f"question {i}"}) + "\n" for i in range(n))
    )
    return path


def records(path: Path) -> dict[str, dict[str, Any]]:
    return {r["id"]: r for r in map(json.loads, path.read_text().splitlines())}


def manifest(out: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(out.with_name(out.stem + ".batches.json").read_text())
    return data


def answers(path: Path, field: str) -> dict[str, Any]:
    return {rid: r[field] for rid, r in records(path).items()}


def test_respond_in_one_batch_answers_as_live_and_sends_nothing_live(
    tmp_path: Path, server: FakeOpenAIServer
) -> None:
    src = prompts(tmp_path / "p.jsonl", 5)
    common = dict(input=str(src), model="openai/fake", base_url=server.base_url, n=2)
    charter.run("respond", output=tmp_path / "live.jsonl", no_cache=True, **common)
    live_requests = len(server.requests)
    server.requests.clear()
    summary = charter.run("respond", output=tmp_path / "b.jsonl", batch=True, **common, **FAST)
    assert summary.written == 5
    assert server.requests == []  # nothing went live
    assert server.batches.created == 1  # one round: every answer of every record
    assert sum(server.batches.submitted.values()) == live_requests
    assert max(server.batches.submitted.values()) == 1
    assert answers(tmp_path / "b.jsonl", "responses") == answers(
        tmp_path / "live.jsonl", "responses"
    )
    [entry] = manifest(tmp_path / "b.jsonl")["batches"]
    assert entry["fetched"] and entry["status"] == "completed"
    assert entry["requests"] == live_requests == len(entry["custom_ids"])


def test_revise_takes_one_batch_per_round(tmp_path: Path, server: FakeOpenAIServer) -> None:
    src = prompts(tmp_path / "p.jsonl", 3)
    common = dict(
        input=str(src),
        model="openai/fake",
        base_url=server.base_url,
        constitution="harmless",
        rounds=2,
        few_shot="none",
    )
    charter.run("revise", output=tmp_path / "live.jsonl", no_cache=True, **common)
    server.requests.clear()
    charter.run("revise", output=tmp_path / "b.jsonl", batch=True, **common, **FAST)
    assert server.requests == []
    # the first answer, then a critique and a revision per round: five requests in a row
    assert server.batches.created == 5
    assert max(server.batches.submitted.values()) == 1
    assert answers(tmp_path / "b.jsonl", "final") == answers(tmp_path / "live.jsonl", "final")
    assert all(b["fetched"] for b in manifest(tmp_path / "b.jsonl")["batches"])


def test_label_in_batches_gives_the_live_labels(tmp_path: Path) -> None:
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        "".join(
            json.dumps({"id": f"q{i}", "prompt": f"q {i}", "chosen": "yes", "rejected": "no"})
            + "\n"
            for i in range(4)
        )
    )
    with FakeOpenAIServer(option_probs={"A": 0.7, "B": 0.3}) as srv:
        common = dict(
            input=str(pairs), judge="openai/fake", base_url=srv.base_url, constitution="harmless"
        )
        charter.run("label", output=tmp_path / "live.jsonl", no_cache=True, **common)
        srv.requests.clear()
        charter.run("label", output=tmp_path / "b.jsonl", batch=True, **common, **FAST)
        assert srv.requests == []
        assert srv.batches.created == 1  # both orders of every pair together
        assert sum(srv.batches.submitted.values()) == 8
    assert answers(tmp_path / "b.jsonl", "p_a") == answers(tmp_path / "live.jsonl", "p_a")


def test_failed_and_expired_requests_go_into_the_next_batch(
    tmp_path: Path, server: FakeOpenAIServer
) -> None:
    src = prompts(tmp_path / "p.jsonl", 4)
    seen: Counter[str] = Counter()

    def first_time_500(body: dict[str, Any]) -> int | None:
        key = json.dumps(body, sort_keys=True)
        seen[key] += 1
        return 500 if seen[key] == 1 and "question 1" in key else None

    server.batches.item_status = first_time_500
    server.batches.expire_after = 2  # each batch answers two requests, then expires
    out = tmp_path / "b.jsonl"
    summary = charter.run(
        "respond",
        input=str(src),
        output=out,
        model="openai/fake",
        base_url=server.base_url,
        batch=True,
        retry_wait=0,
        **FAST,
    )
    assert summary.written == 4 and summary.failed == 0
    assert server.batches.created >= 3
    statuses = [b["status"] for b in manifest(out)["batches"]]
    assert statuses.count("expired") >= 2


def test_retries_are_bounded(tmp_path: Path, server: FakeOpenAIServer) -> None:
    src = prompts(tmp_path / "p.jsonl", 2)
    server.batches.item_status = lambda body: 503
    out = tmp_path / "b.jsonl"
    summary = charter.run(
        "respond",
        input=str(src),
        output=out,
        model="openai/fake",
        base_url=server.base_url,
        batch=True,
        retries=1,
        retry_wait=0,
        **FAST,
    )
    assert summary.written == 0 and summary.failed == 2
    assert server.batches.created == 2  # the first try and one retry
    assert "HTTP 503" in (tmp_path / "b.failed.jsonl").read_text()


def _wait_for(predicate: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.05)


def _batch_run(src: Path, out: Path, base_url: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "charter",
        "respond",
        str(src),
        "-o",
        str(out),
        "--model",
        "openai/fake",
        "--base-url",
        base_url,
        "--n",
        "2",
        "--batch",
        "--batch-poll",
        "0.05",
    ]


def test_kill_9_while_waiting_then_rerun_reattaches_and_submits_nothing_again(
    tmp_path: Path, server: FakeOpenAIServer
) -> None:
    src = prompts(tmp_path / "p.jsonl", 6)
    out = tmp_path / "b.jsonl"
    batches = tmp_path / "b.batches.json"
    server.batches.delay = 3600.0
    proc = subprocess.Popen(
        _batch_run(src, out, server.base_url),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for(lambda: batches.exists() and server.batches.created == 1)
        time.sleep(0.3)  # waiting on the batch
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert ids_of(out) == []
    submitted = dict(server.batches.submitted)
    assert len(submitted) == 12
    # without --batch the same requests would go out again, and be paid for twice: refused
    live = run_cli(*[a for a in _batch_run(src, out, server.base_url)[3:] if a != "--batch"])
    assert live.returncode != 0 and "re-run with --batch" in live.stderr
    assert "Traceback" not in live.stderr and server.requests == []
    server.batches.delay = 0.0
    done = subprocess.run(
        _batch_run(src, out, server.base_url), cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "re-attached to batch batch_1" in done.stderr
    assert sorted(ids_of(out)) == [f"p{i}" for i in range(6)]
    assert server.batches.created == 1
    assert dict(server.batches.submitted) == submitted  # each request submitted once
    assert server.requests == []
    # a third run reads nothing again: every answer is in the cache
    again = run_cli(*_batch_run(src, out, server.base_url)[3:])
    assert again.returncode == 0 and server.batches.created == 1


def test_batch_list_and_cancel(tmp_path: Path, server: FakeOpenAIServer) -> None:
    src = prompts(tmp_path / "p.jsonl", 3)
    out = tmp_path / "b.jsonl"
    server.batches.delay = 3600.0
    proc = subprocess.Popen(
        _batch_run(src, out, server.base_url),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for(lambda: server.batches.created == 1 and (tmp_path / "b.batches.json").exists())
        listed = run_cli("batch", "list", str(out))
        assert listed.returncode == 0, listed.stderr
        assert (
            "batch_1" in listed.stdout + listed.stderr
            and "in_progress" in listed.stdout + listed.stderr
        )
        cancelled = run_cli("batch", "cancel", str(out))
        assert cancelled.returncode == 0, cancelled.stderr
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    # the run stops those records as failed (sent again, they would undo the cancel) ...
    assert proc.returncode == 0, err
    assert ids_of(out) == []
    assert "its batch was cancelled" in (tmp_path / "b.failed.jsonl").read_text()
    assert server.batches.created == 1
    assert manifest(out)["batches"][0]["status"] == "cancelled"
    # ... and a re-run sends them in a new batch
    server.batches.delay = 0.0
    rerun = run_cli(*_batch_run(src, out, server.base_url)[3:])
    assert rerun.returncode == 0, rerun.stderr
    assert sorted(ids_of(out)) == ["p0", "p1", "p2"] and server.batches.created == 2


def test_refusals(tmp_path: Path, server: FakeOpenAIServer) -> None:
    src = prompts(tmp_path / "p.jsonl", 1)
    with pytest.raises(ConfigError, match="no batch API"):
        charter.run(
            "respond", input=str(src), output=tmp_path / "m.jsonl", model="mock/x", batch=True
        )
    with pytest.raises(ConfigError, match="drop --no-cache"):
        charter.run(
            "respond",
            input=str(src),
            output=tmp_path / "n.jsonl",
            model="openai/fake",
            base_url=server.base_url,
            batch=True,
            no_cache=True,
        )
    missing = run_cli("batch", "list", str(tmp_path / "nothing.jsonl"))
    assert missing.returncode != 0 and "no batches recorded" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_batch_true_in_a_recipe(tmp_path: Path) -> None:
    src = prompts(tmp_path / "p.jsonl", 3)
    recipe = tmp_path / "r.yaml"
    with FakeOpenAIServer(
        option_probs={"A": 0.6, "B": 0.4}, responder=lambda m, body: f"answer {body['seed']}"
    ) as srv:
        recipe.write_text(
            f"""
name: batched
defaults: {{batch: true, batch_poll: 0.05, base_url: "{srv.base_url}"}}
stages:
  - {{stage: respond, model: openai/fake, input: {src}, output: {tmp_path}/r.jsonl, n: 2}}
  - {{stage: label, judge: openai/fake, input: "@respond", output: {tmp_path}/l.jsonl,
      constitution: harmless}}
  - {{stage: route, input: "@label", output: {tmp_path}/q.jsonl, budget: 1}}
"""
        )
        done = run_cli("run", str(recipe))
        assert done.returncode == 0, done.stderr
        assert srv.requests == [] and srv.batches.created == 2
    assert len(ids_of(tmp_path / "l.jsonl")) == 3


def test_claude_labels_through_message_batches(tmp_path: Path) -> None:
    from tests.test_anthropic_backend import _judge

    src = tmp_path / "pairs.jsonl"
    rows = [
        {"id": "p1", "prompt": "q1", "response_a": "good answer", "response_b": "meh"},
        {"id": "p2", "prompt": "q2", "response_a": "meh", "response_b": "good one"},
    ]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "labels.jsonl"
    with FakeOpenAIServer(responder=_judge, api_key="sk-ant-batch") as srv:
        args = ["label", str(src), "-o", str(out), "-j", "anthropic/claude-judge"]
        args += ["--base-url", srv.base_url, "--constitution", "harmless"]
        done = run_cli(
            *args, "--batch", "--batch-poll", "0.05", env={"ANTHROPIC_API_KEY": "sk-ant-batch"}
        )
        assert done.returncode == 0, done.stderr
        assert srv.requests == []  # nothing live
        assert sorted(srv.anthropic.submitted.values()) == [1, 1, 1, 1]  # both orders, once each
    recs = records(out)
    assert recs["p1"]["p_a"] == 1.0 and recs["p2"]["p_a"] == 0.0
    assert {r["label_source"] for r in recs.values()} == {"parsed"}
    [entry] = manifest(out)["batches"]
    assert entry["provider"] == "anthropic" and entry["fetched"]
    assert "sk-ant-batch" not in out.with_name("labels.batches.json").read_text() + done.stderr


def test_a_round_over_the_providers_limit_goes_out_as_several_batches(
    tmp_path: Path, server: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from charter.batch.openai import OpenAIBatches

    monkeypatch.setattr(OpenAIBatches, "max_requests", 3)
    src = prompts(tmp_path / "p.jsonl", 4)
    out = tmp_path / "b.jsonl"
    charter.run(
        "respond",
        input=str(src),
        output=out,
        model="openai/fake",
        base_url=server.base_url,
        n=2,
        batch=True,
        **FAST,
    )
    assert [b["requests"] for b in manifest(out)["batches"]] == [3, 3, 2]
    assert len(ids_of(out)) == 4 and max(server.batches.submitted.values()) == 1


def test_batches_are_priced_at_the_discount_and_a_budget_stops_then_resumes_once(
    tmp_path: Path, server: FakeOpenAIServer
) -> None:
    from charter.ledger import read_ledger

    src = prompts(tmp_path / "p.jsonl", 12)
    out = tmp_path / "b.jsonl"
    prices = tmp_path / "prices.yaml"
    prices.write_text("fake: {input: 1000, output: 1000}\n")  # $0.001 a token, half in a batch
    args = [*_batch_run(src, out, server.base_url)[3:], "--prices", str(prices)]
    args += ["--max-tokens", "16"]
    stopped = run_cli(*args, "--max-cost", "0.05")
    assert stopped.returncode == 2 and "--max-cost $0.0500 reached" in stopped.stderr
    assert 0 < len(ids_of(out)) < 12
    first = read_ledger(tmp_path / "b.cost.json")
    assert first is not None and first.cost is not None and first.cost <= 0.05
    submitted = dict(server.batches.submitted)
    done = run_cli(*args, "--max-cost", "10")
    assert done.returncode == 0, done.stderr
    assert sorted(ids_of(out)) == sorted(f"p{i}" for i in range(12))
    assert max(server.batches.submitted.values()) == 1  # nothing submitted twice
    assert set(submitted) <= set(server.batches.submitted)
    ledger = read_ledger(tmp_path / "b.cost.json")
    assert ledger is not None and ledger.cost is not None
    [model] = ledger.models.values()
    tokens = model.usage.prompt_tokens + model.usage.completion_tokens
    assert ledger.cost == pytest.approx(0.5 * tokens * 1000 / 1e6)  # the batch discount
    assert all(kind.startswith("batch_") for kind in model.cost_by_kind)


def test_a_batch_the_provider_no_longer_knows_is_asked_again_in_a_new_one(
    tmp_path: Path, server: FakeOpenAIServer
) -> None:
    src = prompts(tmp_path / "p.jsonl", 3)
    out = tmp_path / "b.jsonl"
    server.batches.delay = 3600.0
    proc = subprocess.Popen(
        _batch_run(src, out, server.base_url),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for(lambda: (tmp_path / "b.batches.json").exists() and server.batches.created == 1)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    server.batches.batches.clear()  # expired and deleted at the provider
    server.batches.delay = 0.0
    done = run_cli(*_batch_run(src, out, server.base_url)[3:])
    assert done.returncode == 0, done.stderr
    assert "does not know batch batch_1" in done.stderr
    assert sorted(ids_of(out)) == ["p0", "p1", "p2"]
    statuses = [b["status"] for b in manifest(out)["batches"]]
    assert statuses == ["unknown to the provider", "completed"]
