"""Reliability and security: nothing lost under server faults, kill -9, Ctrl-C and bad input;
no secret leaks; judges probed with injected instructions. All through the real CLI against a
real HTTP server on 127.0.0.1."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from charter.testing.server import FakeOpenAIServer, Fault
from tests.conftest import ROOT, candidates, ids_of, run_cli

FAST = ["--retry-wait", "0.01", "--timeout", "2", "-q"]
ID_IN_TEXT = re.compile(r"\b(item-\d{4})\b")


def write_pairs(path: Path, n: int) -> list[str]:
    with path.open("w") as f:
        for i in range(n):
            f.write(
                json.dumps(
                    {
                        "id": f"item-{i:04d}",
                        "prompt": f"question item-{i:04d}",
                        "response_a": f"safe answer {i}",
                        "response_b": f"risky answer {i}",
                    }
                )
                + "\n"
            )
    return [f"item-{i:04d}" for i in range(n)]


def write_prompts(path: Path, n: int) -> list[str]:
    with path.open("w") as f:
        for i in range(n):
            f.write(json.dumps({"id": f"item-{i:04d}", "prompt": f"question item-{i:04d}"}) + "\n")
    return [f"item-{i:04d}" for i in range(n)]


def request_id(body: Mapping[str, Any]) -> str | None:
    m = ID_IN_TEXT.search(body["messages"][0]["content"])
    return m.group(1) if m else None


class FlakyRule:
    """Faults about `rate` of requests with a mix of every failure a real server shows, and
    always fails the `poison` ids."""

    KINDS: tuple[Fault, ...] = (
        Fault(429, retry_after=0.01),
        Fault(429),
        Fault(500),
        Fault(502),
        Fault(503),
        Fault(kind="reset"),
        Fault(kind="bad_json"),
        Fault(kind="no_choices"),
        Fault(200, hang=3.0),
        Fault(kind="no_logprobs"),
    )

    def __init__(self, rate: float, poison: set[str], seed: int = 0) -> None:
        self.rate = rate
        self.poison = poison
        self.rng = random.Random(seed)
        self.faulted = 0

    def __call__(self, body: dict[str, Any]) -> Fault | None:
        rid = request_id(body)
        if rid in self.poison:
            return Fault(500, message=f"worker crashed on {rid}")
        if self.rng.random() < self.rate:
            self.faulted += 1
            return self.rng.choice(self.KINDS)
        return None


def safety_probs(messages: list[dict[str, Any]]) -> Mapping[str, float]:
    shown = candidates(messages[0]["content"])
    if "A" not in shown:
        return {"A": 0.5, "B": 0.5}
    return {"A": 0.8, "B": 0.2} if "safe" in shown["A"] else {"A": 0.2, "B": 0.8}


def test_label_2000_pairs_with_20_percent_faults(tmp_path: Path) -> None:
    src = tmp_path / "pairs.jsonl"
    ids = write_pairs(src, 2000)
    poison = {"item-0007", "item-1234"}
    out = tmp_path / "labels.jsonl"
    rule = FlakyRule(0.2, poison)
    label = [
        "label",
        str(src),
        "-o",
        str(out),
        "-j",
        "openai/judge",
        "--constitution",
        "harmless",
        *FAST,
    ]
    with FakeOpenAIServer(option_probs=safety_probs, fault_rule=rule, record_requests=False) as srv:
        r = run_cli(*label, "--base-url", srv.base_url, "-c", "64", timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    written, failed = ids_of(out), ids_of(tmp_path / "labels.failed.jsonl")
    assert len(written) == len(set(written)) and set(written).isdisjoint(failed)
    assert sorted(written + failed) == ids
    assert poison <= set(failed) and len(failed) <= len(poison) + 3
    reasons = {
        json.loads(x)["id"]: json.loads(x)["error"]
        for x in (tmp_path / "labels.failed.jsonl").read_text().splitlines()
    }
    assert all("HTTP 500" in reasons[i] and "worker crashed" in reasons[i] for i in poison)
    summary = re.search(
        r"openai/judge: ([\d,]+) requests, .* ([\d,]+) retries, ([\d,]+) errors", r.stderr
    )
    assert summary, r.stderr[-1000:]
    retries = int(summary.group(2).replace(",", ""))
    assert retries >= rule.faulted, "every injected fault was retried"
    assert f"{len(written):,} written" in r.stderr and f"{len(failed)} failed" in r.stderr
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    assert all(x["label_source"] == "logprobs" for x in recs), (
        "a missing-logprobs glitch is retried"
    )
    assert all(x["chosen"][0]["content"].startswith("safe") for x in recs)
    # Unlucky pairs that ran out of retries are retried by a re-run; the poisoned ones stay.
    with FakeOpenAIServer(option_probs=safety_probs, fault_rule=FlakyRule(0.0, poison)) as srv:
        again = run_cli(*label, "--base-url", srv.base_url)
    assert again.returncode == 0
    assert set(ids_of(tmp_path / "labels.failed.jsonl")) == poison
    assert sorted(ids_of(out) + sorted(poison)) == ids


def test_revise_500_prompts_with_20_percent_faults(tmp_path: Path) -> None:
    src = tmp_path / "prompts.jsonl"
    ids = write_prompts(src, 500)
    poison = {"item-0042"}
    out = tmp_path / "rev.jsonl"
    with FakeOpenAIServer(fault_rule=FlakyRule(0.2, poison, seed=1), record_requests=False) as srv:
        r = run_cli(
            "revise",
            str(src),
            "-o",
            str(out),
            "-m",
            "openai/policy",
            "--base-url",
            srv.base_url,
            "--constitution",
            "harmless",
            "--rounds",
            "1",
            "-c",
            "64",
            "--max-tokens",
            "30",
            *FAST,
            timeout=600,
        )
    assert r.returncode == 0, r.stderr[-2000:]
    written, failed = ids_of(out), ids_of(tmp_path / "rev.failed.jsonl")
    assert len(written) == len(set(written)) and sorted(written + failed) == ids
    assert "item-0042" in failed and len(failed) <= 3
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    truncated = [x for x in recs if "truncated" in x["rounds"][0]["flags"]]
    assert all(not x["rounds"][0]["accepted"] for x in truncated), (
        "cut-off revisions never accepted"
    )


@pytest.mark.parametrize(
    ("server_kwargs", "needle"),
    [
        ({"api_key": "sk-other"}, "authentication failed"),
        (
            {"fault_rule": lambda body: Fault(404, message="model 'nope' does not exist")},
            "HTTP 404",
        ),
    ],
)
def test_permanently_failing_server_stops_early(
    tmp_path: Path, server_kwargs: dict[str, Any], needle: str
) -> None:
    src = tmp_path / "p.jsonl"
    write_prompts(src, 300)
    with FakeOpenAIServer(**server_kwargs) as srv:
        start = time.monotonic()
        r = run_cli(
            "respond",
            str(src),
            "-o",
            str(tmp_path / "o.jsonl"),
            "-m",
            "openai/nope",
            "--base-url",
            srv.base_url,
            "-c",
            "4",
            *FAST,
        )
        elapsed = time.monotonic() - start
        sent = len(srv.requests)
    assert r.returncode == 2 and needle in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert sent <= 8, "stopped at the first answers, did not try every record"
    assert elapsed < 30


def test_refused_connection_stops_with_the_url(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    src = tmp_path / "p.jsonl"
    write_pairs(src, 50)
    r = run_cli(
        "label",
        str(src),
        "-o",
        str(tmp_path / "o.jsonl"),
        "-j",
        "openai/x",
        "--base-url",
        f"http://127.0.0.1:{port}/v1",
        "--constitution",
        "harmless",
        "--retries",
        "2",
        *FAST,
    )
    assert (
        r.returncode == 2 and f"cannot reach the server at http://127.0.0.1:{port}/v1" in r.stderr
    )


def _kill_loop(
    args: list[str],
    out: Path,
    kills: int,
    srv: FakeOpenAIServer,
    seen_after_kill: list[tuple[set[str], int]],
) -> None:
    rng = random.Random(3)
    env = {**os.environ, "NO_COLOR": "1"}
    for _ in range(kills):
        proc = subprocess.Popen(
            [sys.executable, "-m", "charter", *args],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        target = len(ids_of(out)) + rng.randint(3, 15)
        deadline = time.time() + 30
        while len(ids_of(out)) < target and proc.poll() is None and time.time() < deadline:
            time.sleep(rng.uniform(0.005, 0.03))
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        seen_after_kill.append((set(ids_of(out)), len(srv.requests)))


@pytest.mark.parametrize("stage", ["revise", "label"])
def test_repeated_kill_9_then_resume(tmp_path: Path, stage: str) -> None:
    n = 120
    src = tmp_path / "in.jsonl"
    ids = write_pairs(src, n) if stage == "label" else write_prompts(src, n)
    out = tmp_path / "out.jsonl"
    extra = (
        ["-j", "openai/judge", "--principles", "2"]
        if stage == "label"
        else ["-m", "openai/policy", "--rounds", "2", "--max-tokens", "20"]
    )
    with FakeOpenAIServer(latency=0.02, option_probs=safety_probs) as srv:
        args = [
            stage,
            str(src),
            "-o",
            str(out),
            "--base-url",
            srv.base_url,
            "--constitution",
            "harmless",
            "-c",
            "8",
            *extra,
            *FAST,
        ]
        checkpoints: list[tuple[set[str], int]] = []
        _kill_loop(args, out, 5, srv, checkpoints)
        final = subprocess.run(
            [sys.executable, "-m", "charter", *args],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=300,
        )
        assert final.returncode == 0, final.stderr
        bodies = list(srv.requests)
        again = subprocess.run(
            [sys.executable, "-m", "charter", *args],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=300,
        )
        assert len(srv.requests) == len(bodies), "a finished run sends nothing more"
    lines = out.read_text().splitlines()
    assert all(json.loads(x)["id"] for x in lines), "no partial or corrupt line"
    assert sorted(json.loads(x)["id"] for x in lines) == ids, "every id exactly once"
    assert f"{n} already done" in again.stderr
    for done, upto in checkpoints:
        later = {request_id(b) for b in bodies[upto:]}
        assert not (later & done), "records already written were never requested again"
    check = sqlite3.connect(tmp_path / "charter-cache.sqlite").execute("PRAGMA integrity_check")
    assert check.fetchone() == ("ok",)
    assert len(checkpoints) == 5 and 0 < len(checkpoints[0][0]) < n


def test_ctrl_c_stops_cleanly_and_says_how_to_resume(tmp_path: Path) -> None:
    src = tmp_path / "p.jsonl"
    ids = write_prompts(src, 200)
    out = tmp_path / "o.jsonl"
    # 200 prompts at 4 in flight take 5 s: the interrupt lands mid-run even on a busy machine.
    with FakeOpenAIServer(latency=0.1) as srv:
        args = [
            sys.executable,
            "-m",
            "charter",
            "respond",
            str(src),
            "-o",
            str(out),
            "-m",
            "openai/m",
            "--base-url",
            srv.base_url,
            "-c",
            "4",
        ]
        proc = subprocess.Popen(
            args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        while len(ids_of(out)) < 10:
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 130, err
        assert "interrupted" in err and "re-run to resume" in err and "Traceback" not in err
        partial = out.read_text()
        assert partial.endswith("\n") and 10 <= len(partial.splitlines()) < 200
        rerun = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0
    assert sorted(ids_of(out)) == ids


def test_second_process_on_the_same_output_refuses(tmp_path: Path) -> None:
    src = tmp_path / "p.jsonl"
    write_prompts(src, 100)
    out = tmp_path / "o.jsonl"
    with FakeOpenAIServer(latency=0.1) as srv:
        args = [
            "respond",
            str(src),
            "-o",
            str(out),
            "-m",
            "openai/m",
            "--base-url",
            srv.base_url,
            "-c",
            "2",
        ]
        first = subprocess.Popen(
            [sys.executable, "-m", "charter", *args],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        while not ids_of(out):
            time.sleep(0.02)
        second = run_cli(*args)
        first.kill()
        first.wait()
    assert second.returncode == 2
    assert "being written by another charter process" in second.stderr


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b'{"prompt": "ok"}\n{"prompt": "caf\xe9"}\n', "p.jsonl:2: not valid UTF-8 (byte 0xe9"),
        (
            b'{"prompt": "ok"}\n{"prompt": ""}\n',
            "p.jsonl:2: field 'prompt' must be a non-empty string",
        ),
        (b'{"prompt": 5}\n', "p.jsonl:1: field 'prompt' must be a non-empty string"),
        (
            b'{"messages": [{"role": "user"}]}\n',
            "p.jsonl:1: field 'messages'[0].content: Field required",
        ),
        (b"[1, 2]\n", "p.jsonl:1: expected a JSON object, got list"),
    ],
)
def test_bad_input_rows(tmp_path: Path, content: bytes, needle: str) -> None:
    src = tmp_path / "p.jsonl"
    src.write_bytes(content)
    r = run_cli("respond", str(src), "-o", str(tmp_path / "o.jsonl"), "-m", "mock/x")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert needle in r.stderr, r.stderr


def test_skip_invalid_writes_rejects_and_goes_on(tmp_path: Path) -> None:
    src = tmp_path / "p.jsonl"
    src.write_bytes(
        b'{"id": "1", "prompt": "a"}\n{"prompt": \n{"id": "2", "prompt": "\xff"}\n'
        b'{"id": "3", "nope": 1}\n{"id": "4", "prompt": "b"}\n'
    )
    out = tmp_path / "o.jsonl"
    for _ in range(2):  # a re-run rebuilds the rejects file instead of appending to it
        r = run_cli("respond", str(src), "-o", str(out), "-m", "mock/x", "--skip-invalid")
        assert r.returncode == 0, r.stderr
    assert sorted(ids_of(out)) == ["1", "4"]
    rejects = [json.loads(x) for x in (tmp_path / "o.rejects.jsonl").read_text().splitlines()]
    assert [x["error"].split(": ", 1)[0].rsplit(":", 1)[1] for x in rejects] == ["2", "3", "4"]
    assert "invalid input rows skipped: 3" in r.stderr


def test_over_long_prompt_is_a_per_record_failure(tmp_path: Path) -> None:
    src = tmp_path / "p.jsonl"
    src.write_text(
        json.dumps({"id": "long", "prompt": "word " * 5000})
        + "\n"
        + json.dumps({"id": "short", "prompt": "hi"})
        + "\n"
    )

    def context_limit(body: dict[str, Any]) -> Fault | None:
        if len(body["messages"][0]["content"]) > 10_000:
            return Fault(400, message="This model's maximum context length is 4096 tokens")
        return None

    with FakeOpenAIServer(fault_rule=context_limit) as srv:
        r = run_cli(
            "respond",
            str(src),
            "-o",
            str(tmp_path / "o.jsonl"),
            "-m",
            "openai/m",
            "--base-url",
            srv.base_url,
        )
    assert r.returncode == 0 and ids_of(tmp_path / "o.jsonl") == ["short"]
    failed = json.loads((tmp_path / "o.failed.jsonl").read_text())
    assert failed["id"] == "long" and "maximum context length" in failed["error"]


def test_unwritable_output_and_unknown_names(tmp_path: Path) -> None:
    src = tmp_path / "p.jsonl"
    write_prompts(src, 1)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = run_cli("respond", str(src), "-o", str(blocker / "o.jsonl"), "-m", "mock/x")
    assert r.returncode == 2 and "Traceback" not in r.stderr and str(blocker) in r.stderr
    r = run_cli(
        "revise",
        str(src),
        "-o",
        str(tmp_path / "o.jsonl"),
        "-m",
        "mock/x",
        "--constitution",
        "nope",
    )
    assert r.returncode == 2 and "constitution not found: nope" in r.stderr
    r = run_cli(
        "score", str(src), "-o", str(tmp_path / "o.jsonl"), "-j", "mock/x", "--rubric", "nope"
    )
    assert r.returncode == 2 and "rubric not found: nope" in r.stderr


def test_keys_in_env_and_url_never_leak(tmp_path: Path) -> None:
    key, password = "sk-proj-LEAKCHECK-0123456789", "pw-LEAKCHECK-987"
    src = tmp_path / "p.jsonl"
    write_pairs(src, 5)
    out_dir = tmp_path / "run"
    outputs = []
    with FakeOpenAIServer(api_key=key) as srv:  # the key from the environment is checked
        ok = run_cli(
            "respond",
            str(src),
            "-o",
            str(out_dir / "k.jsonl"),
            "-m",
            "openai/m",
            "--base-url",
            srv.base_url,
            "-v",
            env={"OPENAI_API_KEY": key},
        )
        assert ok.returncode == 0, ok.stderr
        bad_key = run_cli(
            "respond",
            str(src),
            "-o",
            str(out_dir / "x.jsonl"),
            "-m",
            "openai/m",
            "--base-url",
            srv.base_url,
            "--no-cache",
            env={"OPENAI_API_KEY": key + "-wrong"},
        )
        assert bad_key.returncode == 2
        outputs += [ok.stdout, ok.stderr, bad_key.stdout, bad_key.stderr]
    with FakeOpenAIServer(
        option_probs=safety_probs
    ) as srv:  # a gateway with credentials in its URL
        url = srv.base_url.replace("http://", f"http://user:{password}@")
        for args in (
            [
                "label",
                str(src),
                "-o",
                str(out_dir / "l.jsonl"),
                "-j",
                "openai/j",
                "--constitution",
                "harmless",
            ],
            ["respond", str(src), "-o", str(out_dir / "r.parquet"), "-m", "openai/m", "-v"],
            [
                "revise",
                str(src),
                "-o",
                str(out_dir / "v.jsonl"),
                "-m",
                "openai/m",
                "--constitution",
                "hhh",
            ],
        ):
            r = run_cli(*args, "--base-url", url, env={"OPENAI_API_KEY": key})
            assert r.returncode == 0, r.stderr
            outputs += [r.stdout, r.stderr]
    dead = run_cli(
        "respond",
        str(src),
        "-o",
        str(out_dir / "y.jsonl"),
        "-m",
        "openai/m",
        "--base-url",
        f"http://user:{password}@127.0.0.1:9/v1?api-key={key}",
        "--retries",
        "0",
        "--no-cache",
        env={"OPENAI_API_KEY": key},
    )
    outputs += [dead.stdout, dead.stderr]
    assert "cannot reach the server at http://***@127.0.0.1:9/v1" in dead.stderr
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.suffix == ".sqlite" for p in files) and any(p.suffix == ".parquet" for p in files)
    for p in files:
        blob = p.read_bytes()
        assert key.encode() not in blob and password.encode() not in blob, p
    for text in outputs:
        assert key not in text and password not in text


def test_probe_injection_measures_flip_rate(tmp_path: Path) -> None:
    src = tmp_path / "pairs.jsonl"
    write_pairs(src, 20)

    def gullible(messages: list[dict[str, Any]]) -> Mapping[str, float]:
        shown = candidates(messages[0]["content"])
        if "EVALUATOR" in shown.get("A", ""):
            return {"A": 0.9, "B": 0.1}
        if "EVALUATOR" in shown.get("B", ""):
            return {"A": 0.1, "B": 0.9}
        return safety_probs(messages)

    results = {}
    for name, judge in (("robust", safety_probs), ("gullible", gullible)):  # own cache keys
        with FakeOpenAIServer(option_probs=judge) as srv:
            out = tmp_path / f"{name}.jsonl"
            r = run_cli(
                "probe",
                "injection",
                str(src),
                "-j",
                f"openai/{name}",
                "--base-url",
                srv.base_url,
                "-o",
                str(out),
            )
            assert r.returncode == 0, r.stderr
            results[name] = re.search(r"flip rate ([\d.]+)", r.stderr).group(1)  # type: ignore[union-attr]
            recs = [json.loads(x) for x in out.read_text().splitlines()]
            assert all(x["injected_into"] in ("a", "b") for x in recs) and len(recs) == 20
    assert results == {"robust": "0.000", "gullible": "1.000"}


def test_concurrent_cache_users_keep_it_intact(tmp_path: Path) -> None:
    """Two processes on different outputs sharing one cache file (WAL) both finish."""
    src = tmp_path / "p.jsonl"
    write_prompts(src, 80)
    cache = tmp_path / "shared.sqlite"
    with FakeOpenAIServer(latency=0.005) as srv:
        results: list[subprocess.CompletedProcess[str]] = []

        def go(name: str) -> None:
            results.append(
                run_cli(
                    "respond",
                    str(src),
                    "-o",
                    str(tmp_path / f"{name}.jsonl"),
                    "-m",
                    "openai/m",
                    "--base-url",
                    srv.base_url,
                    "--cache",
                    str(cache),
                    "--temperature",
                    "0",
                )
            )

        threads = [threading.Thread(target=go, args=(n,)) for n in ("a", "b")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert all(r.returncode == 0 for r in results)
    assert sqlite3.connect(cache).execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert sqlite3.connect(cache).execute("SELECT COUNT(*) FROM entries").fetchone() == (80,)
