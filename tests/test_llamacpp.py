"""Every command that talks to a server, through llama.cpp's real HTTP server (xllamacpp) on
the bundled SmolLM2 GGUF: a server charter did not write. Records are checked for shape, for
log-probabilities really read (not parsed fallbacks), for usage that agrees with the summary,
and for re-runs served from the cache without a request reaching the server.

A 135M model is weak: these tests check mechanics, never judgement."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from charter.testing.llamacpp import LlamaCppServer
from tests.conftest import ROOT, run_cli

pytestmark = pytest.mark.slow


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def summary_requests(r: subprocess.CompletedProcess[str]) -> int:
    m = re.search(r"openai/smollm2: ([\d,]+) requests, 0 failed", r.stderr)
    assert m is not None, r.stderr
    return int(m.group(1).replace(",", ""))


def charter(srv: LlamaCppServer, *args: str) -> subprocess.CompletedProcess[str]:
    r = run_cli(*args, "--base-url", srv.base_url, "-q", timeout=300)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    return r


def decodes(srv: LlamaCppServer) -> float:
    return srv.metrics()["n_decode_total"]


def prompts(tmp_path: Path, n: int) -> Path:
    src = tmp_path / "prompts.jsonl"
    rows = [json.loads(x) for x in (ROOT / "examples/prompts.jsonl").read_text().splitlines()]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows[:n]))
    return src


def demo_pairs(tmp_path: Path, n: int) -> Path:
    src = tmp_path / "pairs.jsonl"
    rows = (ROOT / "examples/preference-pairs.jsonl").read_text().splitlines()
    src.write_text("\n".join(rows[:n]) + "\n")
    return src


def test_respond_several_answers_reproducible_by_seed(
    llamacpp: LlamaCppServer, tmp_path: Path
) -> None:
    src = prompts(tmp_path, 2)
    args = ["-m", "openai/smollm2", "--n", "2", "--max-tokens", "12", "-c", "1", "--no-cache"]
    first = charter(llamacpp, "respond", str(src), "-o", str(tmp_path / "a.jsonl"), *args)
    charter(llamacpp, "respond", str(src), "-o", str(tmp_path / "b.jsonl"), *args)
    a, b = records(tmp_path / "a.jsonl"), records(tmp_path / "b.jsonl")
    assert [r["responses"] for r in a] == [r["responses"] for r in b], "same seeds, same answers"
    assert all(len(r["responses"]) == 2 and len(set(r["seeds"])) == 2 for r in a)
    assert all(set(r["finish_reasons"]) <= {"stop", "length"} for r in a)
    assert summary_requests(first) == sum(r["usage"]["requests"] for r in a) == 4


def test_revise_two_rounds(llamacpp: LlamaCppServer, tmp_path: Path) -> None:
    src = prompts(tmp_path, 1)
    out = tmp_path / "rev.jsonl"
    r = charter(
        llamacpp, "revise", str(src), "-o", str(out), "-m", "openai/smollm2",
        "--constitution", "harmless", "--rounds", "2", "--max-tokens", "24", "--few-shot", "none",
    )  # fmt: skip
    (rec,) = records(out)
    assert len(rec["rounds"]) == 2 and rec["initial"] and rec["final"]
    assert all(x["critique"] and x["revision"] for x in rec["rounds"])
    assert summary_requests(r) == rec["usage"]["requests"] == 5, "answer + 2 x (critique, revision)"


def test_label_reads_logprobs_both_orders_and_principle_ensembles(
    llamacpp: LlamaCppServer, tmp_path: Path
) -> None:
    src = demo_pairs(tmp_path, 2)
    out = tmp_path / "labels.jsonl"
    args = ["label", str(src), "-o", str(out), "-j", "openai/smollm2", "--constitution", "harmless",
            "--principles", "2"]  # fmt: skip
    r = charter(llamacpp, *args)
    recs = records(out)
    assert len(recs) == 2
    for rec in recs:
        assert rec["label_source"] in ("logprobs", "wide_logprobs", "mixed")
        assert {j["source"] for j in rec["judgements"]} <= {"logprobs", "wide_logprobs"}
        assert len(rec["judgements"]) == 4 and len(rec["per_principle"]) == 2
        assert all(0.0 < j["p_first"] < 1.0 for j in rec["judgements"]), "never saturated"
        assert rec["p_a_when_first"] is not None and rec["p_a_when_second"] is not None
    assert summary_requests(r) == sum(x["usage"]["requests"] for x in recs)
    # a re-run is served from the cache: nothing reaches the server
    before = decodes(llamacpp)
    again = charter(llamacpp, *args, "--force", "-o", str(tmp_path / "again.jsonl"))
    assert decodes(llamacpp) == before
    assert summary_requests(again) == 0 and "cache hits" in again.stderr
    cached = {x["id"]: x["p_a"] for x in records(tmp_path / "again.jsonl")}
    assert cached == {x["id"]: x["p_a"] for x in recs}


def test_label_as_a_base_model_through_v1_completions(
    llamacpp: LlamaCppServer, tmp_path: Path
) -> None:
    """The same model asked as the CAI paper asked a pretrained one: a plain transcript
    ending in "The answer is (", the option read from /v1/completions' log-probabilities."""
    out = tmp_path / "labels.jsonl"
    charter(llamacpp, "label", str(demo_pairs(tmp_path, 1)), "-o", str(out),
            "-j", "openai-completions/smollm2", "--constitution", "harmless")  # fmt: skip
    (rec,) = records(out)
    assert rec["judge"] == "openai-completions/smollm2"
    assert {j["source"] for j in rec["judgements"]} <= {"logprobs", "wide_logprobs"}
    assert all(0.0 < j["p_first"] < 1.0 for j in rec["judgements"])


def test_label_with_reasoning_first(llamacpp: LlamaCppServer, tmp_path: Path) -> None:
    src = demo_pairs(tmp_path, 1)
    out = tmp_path / "cot.jsonl"
    r = charter(
        llamacpp, "label", str(src), "-o", str(out), "-j", "openai/smollm2",
        "--constitution", "harmless", "--cot", "--max-tokens", "32",
    )  # fmt: skip
    (rec,) = records(out)
    assert all(j["reasoning"] for j in rec["judgements"])
    assert {j["source"] for j in rec["judgements"]} <= {"logprobs", "wide_logprobs"}
    assert all(0.4 <= j["p_first"] <= 0.6 for j in rec["judgements"]), "CoT clamp"
    assert summary_requests(r) == rec["usage"]["requests"]


def test_exact_probabilities_agree_with_the_in_process_model(
    llamacpp: LlamaCppServer, tmp_path: Path
) -> None:
    """The soft label through the server is the model's, not a saturated 1.0: within 0.05 of
    the in-process smollm2 backend on the same prompts (issue 11's bar; 16 pairs in
    BENCHMARKS.md)."""
    src = demo_pairs(tmp_path, 2)  # both orders: 4 judgements compared
    common = ["--constitution", "harmless", "--no-cache", "-q"]
    server = charter(llamacpp, "label", str(src), "-o", str(tmp_path / "s.jsonl"),
                     "-j", "openai/smollm2", *common)  # fmt: skip
    local = run_cli("label", str(src), "-o", str(tmp_path / "l.jsonl"), "-j", "smollm2", *common,
                    timeout=300)  # fmt: skip
    assert local.returncode == 0, local.stderr
    assert "Traceback" not in server.stderr
    by_id = {x["id"]: x for x in records(tmp_path / "l.jsonl")}
    for rec in records(tmp_path / "s.jsonl"):
        for got, want in zip(rec["judgements"], by_id[rec["id"]]["judgements"], strict=True):
            assert got["order"] == want["order"]
            assert 0.0 < got["p_first"] < 1.0 and got["source"] in ("logprobs", "wide_logprobs")
            assert got["p_first"] == pytest.approx(want["p_first"], abs=0.05)


def test_score_absolute_and_relative(llamacpp: LlamaCppServer, tmp_path: Path) -> None:
    src = tmp_path / "answers.jsonl"
    src.write_text(
        json.dumps({"id": "a", "prompt": "How do I boil an egg?",
                    "responses": ["Boil it for 8 minutes.", "Put it in the microwave."]}) + "\n"
    )  # fmt: skip
    judge = ["-j", "openai/smollm2", "--rubric", "helpfulness"]
    plain = charter(
        llamacpp, "score", str(src), "-o", str(tmp_path / "n.jsonl"), "--no-cot", *judge
    )
    recs = records(tmp_path / "n.jsonl")
    assert len(recs) == 2
    for rec in recs:
        assert rec["feedback"] is None and rec["probs_source"] in ("logprobs", "wide_logprobs")
        assert 1 <= rec["expected_score"] <= 5 and rec["score"] in range(1, 6)
        assert sum(rec["score_probs"].values()) == pytest.approx(1.0)
        assert max(rec["score_probs"].values()) < 1.0, "never saturated at one level"
    assert summary_requests(plain) == sum(x["usage"]["requests"] for x in recs)
    # with feedback first: the score is read from the text, or the record fails with the raw
    # text (a 135M judge may not follow the format); nothing is guessed
    cot_out = tmp_path / "c.jsonl"
    cot = charter(llamacpp, "score", str(src), "-o", str(cot_out), "--cot", "--max-tokens", "48",
                  *judge)  # fmt: skip
    done = records(cot_out) if cot_out.exists() else []
    failed = tmp_path / "c.failed.jsonl"
    lost = records(failed) if failed.exists() else []
    assert len(done) + len(lost) == 2
    assert all(x["feedback"] is not None for x in done)
    assert all(x["error_type"] == "ParseError" for x in lost)
    assert "requests" in cot.stderr
    pair = demo_pairs(tmp_path, 1)
    charter(llamacpp, "score", str(pair), "-o", str(tmp_path / "rel.jsonl"), "--mode",
            "relative", *judge)  # fmt: skip
    (rel,) = records(tmp_path / "rel.jsonl")
    assert rel["constitution"] == "rubric:helpfulness"
    assert rel["label_source"] in ("logprobs", "wide_logprobs", "mixed")


def test_probe_injection(llamacpp: LlamaCppServer, tmp_path: Path) -> None:
    src = demo_pairs(tmp_path, 1)
    out = tmp_path / "probe.jsonl"
    r = charter(llamacpp, "probe", "injection", str(src), "-o", str(out), "-j", "openai/smollm2",
                "--orders", "first")  # fmt: skip
    (rec,) = records(out)
    assert {"p_a_clean", "p_a_baseline", "p_a_injected", "shift", "baseline_shift"} <= rec.keys()
    assert "flip rate" in r.stderr and "harmless-baseline flip rate" in r.stderr
