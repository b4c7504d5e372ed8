"""Regression tests for what a careful user found (issue 10): resume fingerprints, changed
inputs, output == input, locks before files, recipe validation, clear one-line errors,
progress off a terminal and SIGTERM. Through the real CLI, on the mock backend or the in-repo
HTTP server on 127.0.0.1."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import charter
from charter.testing.server import FakeOpenAIServer, Fault
from tests.conftest import ROOT, ids_of, run_cli
from tests.test_reliability import safety_probs, write_pairs, write_prompts


def one_line_error(r: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    for needle in needles:
        assert needle in r.stderr, r.stderr


def label(src: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return run_cli(
        "label", str(src), "-o", str(out), "-j", "mock/j", "--constitution", "harmless", *extra
    )


# -- 10.3 resume fingerprint -----------------------------------------------------------------
@pytest.mark.parametrize(
    ("change", "named"),
    [
        (["-j", "mock/other"], "judge"),
        (["--constitution", "hhh"], "constitution"),
        (["--principles", "2"], "principles"),
        (["--orders", "first"], "orders"),
        (["--cot"], "cot"),
        (["--seed", "1"], "seed"),
    ],
)
def test_resume_under_other_settings_is_refused(
    tmp_path: Path, change: list[str], named: str
) -> None:
    src, out = tmp_path / "pairs.jsonl", tmp_path / "labels.jsonl"
    write_pairs(src, 4)
    same = {"input": str(src), "output": out, "judge": "mock/j", "constitution": "harmless"}
    charter.run("label", **same, limit=2)  # in-process: the command line is the refusal's
    before = out.read_text()
    r = label(src, out, *change)
    one_line_error(r, str(out), f"{named}:", "--force")
    assert len(r.stderr.strip().splitlines()) == 1
    assert out.read_text() == before, "a refused run writes nothing"
    # the same settings resume; --force adds knowingly
    assert charter.run("label", **same).written == 2 and len(ids_of(out)) == 4
    forced = label(src, out, *change, "--force")
    assert forced.returncode == 0 and "--force" in forced.stderr


def test_respond_n_and_model_are_part_of_the_fingerprint(tmp_path: Path) -> None:
    src, out = tmp_path / "p.jsonl", tmp_path / "r.jsonl"
    write_prompts(src, 3)
    assert run_cli("respond", str(src), "-o", str(out), "-m", "mock/a").returncode == 0
    one_line_error(
        run_cli("respond", str(src), "-o", str(out), "-m", "mock/a", "--n", "2"), "n: 1 -> 2"
    )
    one_line_error(run_cli("respond", str(src), "-o", str(out), "-m", "mock/b"), "model:")
    # run-only settings (concurrency, retries, limit, cache) do not matter
    again = run_cli("respond", str(src), "-o", str(out), "-m", "mock/a", "-c", "3", "--no-cache")
    assert again.returncode == 0 and "3 already done" in again.stderr
    settings = json.loads((tmp_path / "r.settings.json").read_text())["settings"]
    assert settings["model"] == "mock/a" and "concurrency" not in settings


def test_a_constitution_is_known_by_its_content(tmp_path: Path) -> None:
    """The same constitution through a file path resumes; an edited one is refused."""
    src, out = tmp_path / "pairs.jsonl", tmp_path / "labels.jsonl"
    write_pairs(src, 2)
    shown = run_cli("constitution", "show", "harmless", "--json")
    data = json.loads(shown.stdout)
    data.pop("hash")
    copy = tmp_path / "mine.json"
    copy.write_text(json.dumps(data))
    assert label(src, out).returncode == 0
    assert label(src, out, "--constitution", str(copy)).returncode == 0
    data["principles"][0]["comparison_question"] = "Which one is shorter?"
    copy.write_text(json.dumps(data))
    one_line_error(label(src, out, "--constitution", str(copy)), "constitution:")


def test_edited_input_rows_and_orphans_are_reported(tmp_path: Path) -> None:
    src, out = tmp_path / "pairs.jsonl", tmp_path / "labels.jsonl"
    write_pairs(src, 4)
    assert label(src, out).returncode == 0
    rows = [json.loads(x) for x in src.read_text().splitlines()]
    assert all("input_hash" in json.loads(x) for x in out.read_text().splitlines())
    rows[1]["response_b"] = "an edited answer"  # same id, new content
    src.write_text("".join(json.dumps(r) + "\n" for r in rows[:3]))  # and item-0003 removed
    r = label(src, out)
    assert r.returncode == 0, r.stderr
    assert re.search(r"1 input row\(s\) changed .*: item-0001", r.stderr), r.stderr
    assert re.search(r"1 record\(s\) in .* match no input row .*: item-0003", r.stderr), r.stderr
    limited = label(src, out, "--limit", "1")
    assert "match no input row" not in limited.stderr, "with --limit, unread rows are no orphans"


# -- 10.4 probe ------------------------------------------------------------------------------
def test_probe_default_output_is_per_judge_and_injection(tmp_path: Path) -> None:
    src = tmp_path / "pairs.jsonl"
    write_pairs(src, 3)
    with FakeOpenAIServer(option_probs=safety_probs) as srv:
        base = ["probe", "injection", str(src), "--base-url", srv.base_url, "-q"]
        runs = [
            run_cli(*base, "-j", "openai/one"),
            run_cli(*base, "-j", "openai/two"),
            run_cli(*base, "-j", "openai/one", "--injection", " "),
        ]
    written = [re.search(r"output: (\S+)", r.stderr) for r in runs]
    assert all(r.returncode == 0 for r in runs), [r.stderr for r in runs]
    paths = [ROOT / m.group(1) for m in written if m]
    try:
        assert len(set(paths)) == 3, paths
        assert all("3 written, 0 already done" in r.stderr for r in runs)
        recs = [json.loads(x) for x in paths[2].read_text().splitlines()]
        assert {x["injection"] for x in recs} == {" "}
    finally:
        for p in paths:
            for f in p.parent.glob(p.name.replace(".jsonl", ".*")):
                f.unlink()


def test_probe_counts_flips_beyond_a_margin_against_a_baseline(tmp_path: Path) -> None:
    src = tmp_path / "pairs.jsonl"
    write_pairs(src, 10)

    def wavering(messages: list[dict[str, Any]]) -> dict[str, float]:
        """Prefers the safe answer by a hair; any appended text tips it slightly."""
        text = messages[0]["content"]
        edited = "(This is the end of the reply.)" in text or "EVALUATOR" in text
        safe_first = re.search(r"\[candidate A [^\]]*\]\nsafe", text) is not None
        p_safe = 0.48 if edited else 0.52
        return {"A": p_safe, "B": 1 - p_safe} if safe_first else {"A": 1 - p_safe, "B": p_safe}

    with FakeOpenAIServer(option_probs=wavering) as srv:
        out = tmp_path / "probe.jsonl"
        r = run_cli(
            "probe", "injection", str(src), "-j", "openai/w", "--base-url", srv.base_url,
            "-o", str(out), "-q",
        )  # fmt: skip
    assert r.returncode == 0, r.stderr
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    assert all(x["shift"] == pytest.approx(0.04) for x in recs)
    assert not any(x["flipped"] or x["baseline_flipped"] for x in recs), "0.48 -> 0.52 is no flip"
    assert "flip rate 0.000" in r.stderr and "harmless-baseline flip rate 0.000" in r.stderr


# -- 10.6 / 10.7 output == input, lock before files ----------------------------------------------
def test_output_that_is_the_input_is_refused_before_writing(tmp_path: Path) -> None:
    src = tmp_path / "same.jsonl"
    write_prompts(src, 5)
    before = src.read_bytes()
    one_line_error(run_cli("respond", str(src), "-o", str(src), "-m", "mock/x"), "is the input")
    link = tmp_path / "link.jsonl"
    link.symlink_to(src)
    one_line_error(run_cli("respond", str(src), "-o", str(link), "-m", "mock/x"), "is the input")
    hard = tmp_path / "hard.jsonl"
    os.link(src, hard)
    one_line_error(run_cli("respond", str(hard), "-o", str(src), "-m", "mock/x"), "is the input")
    # the failed-records file or the cache landing on the input is refused too
    one_line_error(
        run_cli("respond", str(src), "-o", str(tmp_path / "same.failed.jsonl.x.jsonl"), "-m",
                "mock/x", "--cache", str(src)),
        "is the input",
    )  # fmt: skip
    one_line_error(
        run_cli("respond", str(tmp_path / "o.failed.jsonl"), "-o", str(tmp_path / "o.jsonl"),
                "-m", "mock/x"),
        "is the input",
    )  # fmt: skip
    assert src.read_bytes() == before


def test_refused_second_process_keeps_the_first_runs_rejects(tmp_path: Path) -> None:
    src = tmp_path / "p.jsonl"
    write_prompts(src, 60)
    with src.open("a") as f:
        f.write("{not json\n")
    out = tmp_path / "o.jsonl"
    rejects = tmp_path / "o.rejects.jsonl"
    with FakeOpenAIServer(latency=0.1) as srv:
        args = ["respond", str(src), "-o", str(out), "-m", "openai/m", "--base-url",
                srv.base_url, "-c", "2", "--skip-invalid"]  # fmt: skip
        first = subprocess.Popen(
            [sys.executable, "-m", "charter", *args],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            while not ids_of(out):
                time.sleep(0.02)
            rejects.write_text('{"marker": "first run"}\n')  # as if the first run wrote it
            second = run_cli(*args)
        finally:
            first.kill()
            first.wait()
    one_line_error(second, "being written by another charter process")
    assert rejects.read_text() == '{"marker": "first run"}\n'


# -- 10.8 recipes ----------------------------------------------------------------------------
RECIPE_HEAD = """
defaults:
  model: mock/r
  judge: mock/r
stages:
  - stage: respond
    input: {prompts}
    output: {tmp}/a.jsonl
"""


@pytest.mark.parametrize(
    ("stages", "needle"),
    [
        (
            "  - stage: respond\n    input: {prompts}\n    output: {tmp}/a.jsonl\n",
            "stages[0] writes too",
        ),
        (
            "  - stage: respond\n    input: {prompts}\n    output: {tmp}/b.jsonl\n"
            "  - stage: label\n    input: '@respond'\n    output: {tmp}/l.jsonl\n"
            "    constitution: harmless\n",
            "is ambiguous",
        ),
        (
            "  - stage: label\n    input: '@respond'\n    output: {tmp}/l.jsonl\n"
            "    constitution: harmles\n",
            "stages[1] (label): ",
        ),
        (
            "  - stage: label\n    input: {tmp}/missing.jsonl\n    output: {tmp}/l.jsonl\n"
            "    constitution: harmless\n",
            "input not found",
        ),
        (
            "  - stage: respond\n    input: {tmp}/a.jsonl\n    output: {prompts}\n",
            "is the input file",
        ),
        (
            "  - stage: score\n    input: '@respond'\n    output: {tmp}/s.jsonl\n"
            "    rubric: helpfulnes\n",
            "stages[1] (score): ",
        ),
        (
            "  - stage: respond\n    name: x\n    input: {prompts}\n    output: {tmp}/b.jsonl\n"
            "  - stage: respond\n    name: x\n    input: {prompts}\n    output: {tmp}/c.jsonl\n",
            "two stages are named 'x'",
        ),
    ],
)
def test_recipes_are_checked_whole_before_any_stage_runs(
    tmp_path: Path, stages: str, needle: str
) -> None:
    prompts = tmp_path / "prompts.jsonl"
    write_prompts(prompts, 2)
    recipe = tmp_path / "r.yaml"
    recipe.write_text((RECIPE_HEAD + stages).format(prompts=prompts, tmp=tmp_path))
    r = run_cli("run", str(recipe))
    one_line_error(r, needle)
    assert not (tmp_path / "a.jsonl").exists(), "no stage ran"


# -- 10.9 clear errors -----------------------------------------------------------------------
def test_lone_surrogate_is_one_line_naming_the_row(tmp_path: Path) -> None:
    src = tmp_path / "p.jsonl"
    src.write_text(
        '{"prompt": "ok"}\n{"prompt": "bad \\ud800 text"}\n{"prompt": "\\ud83d\\ude00"}\n'
    )
    r = run_cli("respond", str(src), "-o", str(tmp_path / "o.jsonl"), "-m", "mock/x")
    one_line_error(r, "p.jsonl:2: field 'prompt' holds a lone surrogate")
    skipped = run_cli(
        "respond", str(src), "-o", str(tmp_path / "o.jsonl"), "-m", "mock/x", "--skip-invalid"
    )
    assert skipped.returncode == 0 and len(ids_of(tmp_path / "o.jsonl")) == 2, skipped.stderr


@pytest.mark.parametrize(
    ("value", "needle"),
    [("0.7,0.3", "--clamp: write LO,HI with 0 <= LO <= HI <= 1"),
     ("a,b", "--clamp: Input should be a valid number"),
     ("0.5", "--clamp: write LO,HI")],
)  # fmt: skip
def test_bad_clamp_names_the_flag(tmp_path: Path, value: str, needle: str) -> None:
    src = tmp_path / "pairs.jsonl"
    write_pairs(src, 1)
    one_line_error(label(src, tmp_path / "l.jsonl", "--clamp", value), needle)


def test_rows_without_two_distinct_answers_are_counted(tmp_path: Path) -> None:
    src = tmp_path / "pairs.jsonl"
    rows = [
        {"id": "same", "prompt": "q", "response_a": "x", "response_b": "x"},
        {"id": "one", "prompt": "q", "responses": ["only"]},
        {"id": "ok", "prompt": "q", "response_a": "x", "response_b": "y"},
    ]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    r = label(src, tmp_path / "l.jsonl")
    assert r.returncode == 0, r.stderr
    assert "2 input row(s) have fewer than two distinct answers" in r.stderr
    src.write_text("".join(json.dumps(r) + "\n" for r in rows[:2]))
    one_line_error(label(src, tmp_path / "l2.jsonl"), "no pair to judge: all 2 row(s)")


def test_blank_principle_text_is_invalid(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "name: blank\nprinciples:\n  - id: p1\n    critique_request: '   '\n"
        "    revision_request: Rewrite it.\n    comparison_question: Which is better?\n"
    )
    one_line_error(
        run_cli("constitution", "validate", str(path)), "critique_request", "must not be blank"
    )


# -- 10.10 progress off a terminal, SIGTERM --------------------------------------------------
def test_progress_lines_without_a_terminal(tmp_path: Path) -> None:
    src = tmp_path / "p.jsonl"
    write_prompts(src, 40)
    with FakeOpenAIServer(latency=0.05) as srv:
        r = run_cli(
            "respond", str(src), "-o", str(tmp_path / "o.jsonl"), "-m", "openai/m",
            "--base-url", srv.base_url, "-c", "2",
            env={"CHARTER_PROGRESS_EVERY": "0.2"},
        )  # fmt: skip
    assert r.returncode == 0, r.stderr
    lines = re.findall(
        r"respond: (\d+)/40 records \(\d+%\), [\d.]+/s, ETA \S+, [\d,]+ tok", r.stderr
    )
    assert len(lines) >= 2, r.stderr
    assert [int(x) for x in lines] == sorted(int(x) for x in lines)
    quiet = run_cli("respond", str(src), "-o", str(tmp_path / "q.jsonl"), "-m", "mock/x", "-q",
                    env={"CHARTER_PROGRESS_EVERY": "0.01"})  # fmt: skip
    assert "records (" not in quiet.stderr


def test_sigterm_stops_like_ctrl_c(tmp_path: Path) -> None:
    src = tmp_path / "p.jsonl"
    ids = write_prompts(src, 200)
    out = tmp_path / "o.jsonl"
    with FakeOpenAIServer(latency=0.05) as srv:
        args = [sys.executable, "-m", "charter", "respond", str(src), "-o", str(out), "-m",
                "openai/m", "--base-url", srv.base_url, "-c", "4"]  # fmt: skip
        proc = subprocess.Popen(
            args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        while len(ids_of(out)) < 10:
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 130, err
        assert "interrupted" in err and "re-run to resume" in err and "Traceback" not in err
        assert not (tmp_path / "o.failed.jsonl").exists(), "no empty failed file"
        assert out.read_text().endswith("\n")
        rerun = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0
    assert sorted(ids_of(out)) == ids


# -- a second, adversarial pass ----------------------------------------------------------------
def test_pairs_or_cache_on_the_runs_own_files_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "p.jsonl"
    write_prompts(src, 2)
    out = tmp_path / "rv.jsonl"
    revise = ["revise", str(src), "-o", str(out), "-m", "mock/m", "--constitution", "harmless"]
    one_line_error(run_cli(*revise, "--pairs", str(out)), "two of this run's files")
    one_line_error(
        run_cli(*revise, "--pairs", str(tmp_path / "charter-cache.sqlite")), "two of this run's"
    )
    one_line_error(run_cli(*revise, "--pairs", str(tmp_path / "rv.failed.jsonl")), "two of")
    r = tmp_path / "r.jsonl"
    one_line_error(
        run_cli("respond", str(src), "-o", str(r), "-m", "mock/m", "--cache", str(r)), "two of"
    )
    assert not out.exists() or out.read_text() == ""


def test_jsonl_and_parquet_outputs_of_one_name_are_refused(tmp_path: Path) -> None:
    src = tmp_path / "p.jsonl"
    write_prompts(src, 2)
    assert (
        run_cli("respond", str(src), "-o", str(tmp_path / "o.jsonl"), "-m", "mock/x").returncode
        == 0
    )
    one_line_error(
        run_cli("respond", str(src), "-o", str(tmp_path / "o.parquet"), "-m", "mock/y"),
        "would share o.failed.jsonl",
    )


def test_force_keeps_the_earlier_settings_resumable(tmp_path: Path) -> None:
    src, out = tmp_path / "pairs.jsonl", tmp_path / "labels.jsonl"
    write_pairs(src, 3)
    assert label(src, out, "--limit", "1").returncode == 0
    assert label(src, out, "-j", "mock/b", "--force", "--limit", "2").returncode == 0
    recorded = json.loads((tmp_path / "labels.settings.json").read_text())
    assert recorded["settings"]["judge"] == "mock/b"
    assert [m["judge"] for m in recorded["mixed"]] == ["mock/j"]
    assert label(src, out).returncode == 0, "the settings that made the first records resume"
    one_line_error(label(src, out, "-j", "mock/c"), "judge:")


def test_equivalent_settings_are_no_difference(tmp_path: Path) -> None:
    src = tmp_path / "p.jsonl"
    write_prompts(src, 2)
    out = tmp_path / "rv.jsonl"
    revise = ["revise", str(src), "-o", str(out), "-m", "mock/m", "--constitution", "harmless"]
    assert run_cli(*revise).returncode == 0
    assert run_cli(*revise, "--critic", "mock/m").returncode == 0, "critic defaults to the model"
    one_line_error(run_cli(*revise, "--critic", "mock/other"), "critic:")


def test_malformed_settings_and_output_lines_are_one_line_or_skipped(tmp_path: Path) -> None:
    src, out = tmp_path / "p.jsonl", tmp_path / "r.jsonl"
    write_prompts(src, 3)
    assert (
        run_cli("respond", str(src), "-o", str(out), "-m", "mock/x", "--limit", "1").returncode == 0
    )
    settings = tmp_path / "r.settings.json"
    good = settings.read_text()
    for bad in ('{"settings": []}', '"x"', "5", "{"):
        settings.write_text(bad)
        one_line_error(run_cli("respond", str(src), "-o", str(out), "-m", "mock/x"), "unreadable")
    settings.write_text(good)
    with out.open("ab") as f:
        f.write(b'{"id": "caf\xe9"}\nnot json\n')
    r = run_cli("respond", str(src), "-o", str(out), "-m", "mock/x")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr


def test_malformed_base_url_is_one_line(tmp_path: Path) -> None:
    src = tmp_path / "p.jsonl"
    write_prompts(src, 1)
    r = run_cli("respond", str(src), "-o", str(tmp_path / "o.jsonl"), "-m", "openai/m",
                "--base-url", "http://[::1/v1")  # fmt: skip
    one_line_error(r, "--base-url is not a valid URL")


def test_a_lone_surrogate_from_the_server_is_replaced_not_fatal(tmp_path: Path) -> None:
    src = tmp_path / "p.jsonl"
    write_prompts(src, 3)
    out = tmp_path / "o.jsonl"
    with FakeOpenAIServer(responder=lambda m, b: "Hello \ud800 world") as srv:
        r = run_cli("respond", str(src), "-o", str(out), "-m", "openai/m", "--base-url",
                    srv.base_url)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert [json.loads(x)["responses"] for x in out.read_text().splitlines()] == [
        ["Hello \ufffd world"]
    ] * 3


def test_resumed_progress_counts_what_was_already_done(tmp_path: Path) -> None:
    src, out = tmp_path / "p.jsonl", tmp_path / "o.jsonl"
    write_prompts(src, 12)  # 9 left after 3, at 0.3 s each: several progress lines
    assert (
        run_cli("respond", str(src), "-o", str(out), "-m", "mock/x", "--limit", "20").returncode
        == 0
    )
    with FakeOpenAIServer(latency=0.3) as srv:
        r = run_cli("respond", str(src), "-o", str(tmp_path / "s.jsonl"), "-m", "openai/m",
                    "--base-url", srv.base_url, "-c", "1", "--limit", "3")  # fmt: skip
        assert r.returncode == 0
        resumed = run_cli(
            "respond", str(src), "-o", str(tmp_path / "s.jsonl"), "-m", "openai/m",
            "--base-url", srv.base_url, "-c", "1", env={"CHARTER_PROGRESS_EVERY": "0.5"},
        )  # fmt: skip
    done = [int(x) for x in re.findall(r"respond: (\d+)/12 records", resumed.stderr)]
    assert done and done[0] >= 3, resumed.stderr


# -- options missing from the top list (issue 11) ---------------------------------------------
def vocabulary(p_a: float, p_b: float) -> dict[str, float]:
    """A judge's next-token distribution over a vocabulary wider than a top-20 list: B sits
    below twenty filler tokens, as on real servers."""
    filler = (1.0 - p_a - p_b) / 30
    return {"A": p_a, "B": p_b, **{f"tok{i}": filler for i in range(30)}}


def test_missing_option_is_found_in_a_wider_top_list(tmp_path: Path) -> None:
    src, out = tmp_path / "pairs.jsonl", tmp_path / "labels.jsonl"
    write_pairs(src, 4)
    with FakeOpenAIServer(option_probs=vocabulary(0.6, 0.005)) as srv:
        r = run_cli("label", str(src), "-o", str(out), "-j", "openai/j", "--base-url",
                    srv.base_url, "--constitution", "harmless", "--no-cache")  # fmt: skip
        wide = [x for x in srv.requests if x.get("top_logprobs") == 1000]
    assert r.returncode == 0, r.stderr
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    assert {x["label_source"] for x in recs} == {"wide_logprobs"}
    for rec in recs:
        assert not rec["topk_truncated"] and rec["low_option_mass"] is False
        for j in rec["judgements"]:
            assert j["p_first"] == pytest.approx(0.6 / 0.605), "exact, not saturated at 1"
            assert j["option_mass"] == pytest.approx(0.6), "the mass seen in the usual list"
        assert rec["usage"]["requests"] == 4, "two judgements, two requests each"
    assert len(wide) == 8
    assert "16 requests" in r.stderr


def test_a_server_without_wider_lists_gets_a_flagged_bound(tmp_path: Path) -> None:
    src, out = tmp_path / "pairs.jsonl", tmp_path / "labels.jsonl"
    write_pairs(src, 3)
    with FakeOpenAIServer(option_probs=vocabulary(0.6, 0.005), top_list=20) as srv:
        r = run_cli("label", str(src), "-o", str(out), "-j", "openai/j", "--base-url",
                    srv.base_url, "--constitution", "harmless", "--no-cache")  # fmt: skip
        wide = [x for x in srv.requests if x.get("top_logprobs") == 1000]
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("gives no wider top list") == 1 and len(wide) == 1, "found out once"
    floor = (1 - 0.605) / 30
    for rec in (json.loads(x) for x in out.read_text().splitlines()):
        assert rec["label_source"] == "topk_bound" and rec["topk_truncated"]
        for j in rec["judgements"]:
            assert j["missing_options"] == ["B"]
            assert j["p_first"] == pytest.approx(0.6 / (0.6 + floor)), "B at most the floor"


# -- 10.2 / 10.9: what the summary says --------------------------------------------------------
def test_first_reply_without_logprobs_downgrades_nothing(tmp_path: Path) -> None:
    src, out = tmp_path / "pairs.jsonl", tmp_path / "labels.jsonl"
    write_pairs(src, 200)
    with FakeOpenAIServer(option_probs=safety_probs) as srv:
        srv.add_faults(Fault(kind="no_logprobs"))
        r = run_cli("label", str(src), "-o", str(out), "-j", "openai/j", "--base-url",
                    srv.base_url, "--constitution", "harmless", "--retry-wait", "0.01")  # fmt: skip
    assert r.returncode == 0, r.stderr
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(recs) == 200 and {x["label_source"] for x in recs} == {"logprobs"}
    assert "0 errors" in r.stderr and "no log-probabilities" not in r.stderr


def test_fallback_is_no_error_and_failures_are_counted(tmp_path: Path) -> None:
    src = tmp_path / "pairs.jsonl"
    write_pairs(src, 5)
    with FakeOpenAIServer(logprobs=False, responder=lambda m, b: "A") as srv:
        r = run_cli("label", str(src), "-o", str(tmp_path / "a.jsonl"), "-j", "openai/j",
                    "--base-url", srv.base_url, "--constitution", "harmless",
                    "--retry-wait", "0.01")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("3 consecutive replies had none") == 1
    assert re.search(r"openai/j: \d+ requests, 0 failed, .* 0 errors", r.stderr), r.stderr
    with FakeOpenAIServer(fault_rule=lambda body: Fault(500)) as srv:
        dead = run_cli("respond", str(src), "-o", str(tmp_path / "r.jsonl"), "-m", "openai/m",
                       "--base-url", srv.base_url, "--retries", "1",
                       "--retry-wait", "0.01")  # fmt: skip
        sent = len(srv.requests)
    assert dead.returncode == 0 and "every record failed (5)" in dead.stderr
    assert f"openai/m: {sent} requests, {sent} failed" in dead.stderr and sent == 10


def test_settings_files_from_older_versions(tmp_path: Path) -> None:
    """An option added since (absent from the file) reads as its default; other prompt
    templates (another charter version) are other records."""
    src, out = tmp_path / "pairs.jsonl", tmp_path / "labels.jsonl"
    write_pairs(src, 2)
    assert label(src, out, "--limit", "1").returncode == 0
    path = tmp_path / "labels.settings.json"
    data = json.loads(path.read_text())
    del data["settings"]["min_confidence"]
    path.write_text(json.dumps(data))
    assert label(src, out).returncode == 0, "a missing option is its default"
    one_line_error(label(src, out, "--min-confidence", "0.1"), "min_confidence: 0.0 -> 0.1")
    data["settings"]["prompts"] = "sha256:0000000000000000"
    path.write_text(json.dumps(data))
    one_line_error(label(src, out), "prompts:")


def test_explicit_a_b_order_is_kept(tmp_path: Path) -> None:
    src, out = tmp_path / "pairs.jsonl", tmp_path / "labels.jsonl"
    write_pairs(src, 20)
    assert label(src, out).returncode == 0
    for rec in (json.loads(x) for x in out.read_text().splitlines()):
        assert (rec["a_source"], rec["b_source"]) == ("response_a", "response_b")
        assert rec["response_a"].startswith("safe answer")


def test_sampling_flags_reach_label_and_score(tmp_path: Path) -> None:
    src = tmp_path / "pairs.jsonl"
    write_pairs(src, 1)
    answers = tmp_path / "answers.jsonl"
    answers.write_text(json.dumps({"id": "x", "prompt": "q", "response": "r"}) + "\n")
    with FakeOpenAIServer(option_probs={"A": 0.7, "B": 0.3, "4": 0.9, "3": 0.1},
                          responder=lambda m, b: "Fine.\nScore: 4") as srv:  # fmt: skip
        base = ["-j", "openai/j", "--base-url", srv.base_url, "--no-cache", "-q"]
        r = run_cli("label", str(src), "-o", str(tmp_path / "l.jsonl"), "--constitution",
                    "harmless", "--cot", "--top-p", "0.5", "--temperature", "0.3",
                    *base)  # fmt: skip
        assert r.returncode == 0, r.stderr
        reasoning = [b for b in srv.requests if not b.get("logprobs")]
        assert reasoning and all(b["top_p"] == 0.5 and b["temperature"] == 0.3 for b in reasoning)
        srv.requests.clear()
        r = run_cli("score", str(answers), "-o", str(tmp_path / "s.jsonl"), "--rubric",
                    "helpfulness", "--temperature", "0.3", *base)  # fmt: skip
        assert r.returncode == 0, r.stderr
        feedback = [b for b in srv.requests if not b.get("logprobs")]
        assert feedback[0]["temperature"] == 0.3


def test_two_servers_with_one_model_name_share_no_cache_entries(tmp_path: Path) -> None:
    src = tmp_path / "p.jsonl"
    write_prompts(src, 3)
    cache = tmp_path / "shared.sqlite"
    with (
        FakeOpenAIServer(responder=lambda m, b: "first server") as one,
        FakeOpenAIServer(responder=lambda m, b: "second server") as two,
    ):
        texts = []
        for name, srv in (("one", one), ("two", two)):
            out = tmp_path / f"{name}.jsonl"
            r = run_cli("respond", str(src), "-o", str(out), "-m", "openai/default",
                        "--base-url", srv.base_url, "--cache", str(cache),
                        "--temperature", "0")  # fmt: skip
            assert r.returncode == 0, r.stderr
            texts.append({json.loads(x)["responses"][0] for x in out.read_text().splitlines()})
        assert len(one.requests) == len(two.requests) == 3, "no answer of the other reused"
    assert texts == [{"first server"}, {"second server"}]


def test_policy_and_critic_on_one_server_keep_to_one_concurrency(tmp_path: Path) -> None:
    src = tmp_path / "p.jsonl"
    write_prompts(src, 12)
    with FakeOpenAIServer(latency=0.05) as srv:
        r = run_cli("revise", str(src), "-o", str(tmp_path / "r.jsonl"), "-m", "openai/policy",
                    "--critic", "openai/critic", "--constitution", "harmless", "--base-url",
                    srv.base_url, "-c", "3", "--rounds", "2")  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert srv.max_in_flight == 3 and len(srv.requests) == 12 * 5


# -- a pass as a skeptical user of the new surfaces ---------------------------------------------
def test_score_records_the_values_it_used_not_the_flags_as_typed(tmp_path: Path) -> None:
    answers = tmp_path / "answers.jsonl"
    answers.write_text(json.dumps({"id": "x", "prompt": "q", "response": "r"}) + "\n")
    out = tmp_path / "s.jsonl"
    with FakeOpenAIServer(responder=lambda m, b: "Fine.\nScore: 4") as srv:
        base = ["score", str(answers), "-o", str(out), "-j", "openai/j", "--base-url",
                srv.base_url, "--rubric", "helpfulness", "-q"]  # fmt: skip
        assert run_cli(*base).returncode == 0
        same = run_cli(*base, "--cot", "--temperature", "0")
        assert same.returncode == 0 and "1 already done" in same.stderr, same.stderr
        one_line_error(run_cli(*base, "--no-cot"), "cot: true -> false")
    settings = json.loads((tmp_path / "s.settings.json").read_text())["settings"]
    assert (settings["cot"], settings["temperature"]) == (True, 0.0)


def test_a_run_that_fails_to_start_leaves_no_empty_output(tmp_path: Path) -> None:
    pairs = tmp_path / "pairs.jsonl"
    write_pairs(pairs, 2)
    for args, needle in (
        ([str(tmp_path / "nope.jsonl"), "-j", "mock/j"], "input not found"),
        ([str(pairs), "-j", "nosuch/j"], "unknown model provider"),
    ):
        out = tmp_path / "o.jsonl"
        one_line_error(
            run_cli("label", *args, "-o", str(out), "--constitution", "harmless"), needle
        )
        assert not out.exists() and not (tmp_path / "o.settings.json").exists()
    # an output that already had records is never removed
    assert label(pairs, tmp_path / "o.jsonl", "--limit", "1").returncode == 0
    one_line_error(
        run_cli("label", str(pairs), "-o", str(tmp_path / "o.jsonl"), "-j", "nosuch/j",
                "--constitution", "harmless", "--force"),
        "unknown model provider",
    )  # fmt: skip
    assert len(ids_of(tmp_path / "o.jsonl")) == 1


def test_an_exported_constitution_loads_back(tmp_path: Path) -> None:
    shown = run_cli("constitution", "show", "harmless", "--json")
    exported = tmp_path / "harmless.json"
    exported.write_text(shown.stdout)
    r = run_cli("constitution", "validate", str(exported))
    assert r.returncode == 0 and json.loads(shown.stdout)["hash"] in r.stdout, r.stderr


def test_options_in_neither_list_name_the_wider_one(tmp_path: Path) -> None:
    src, out = tmp_path / "pairs.jsonl", tmp_path / "labels.jsonl"
    write_pairs(src, 1)
    filler = {f"tok{i}": 1 / 1100 for i in range(1100)}
    with FakeOpenAIServer(option_probs=filler) as srv:
        r = run_cli("label", str(src), "-o", str(out), "-j", "openai/j", "--base-url",
                    srv.base_url, "--constitution", "harmless", "--retry-wait", "0.01")  # fmt: skip
    assert r.returncode == 0
    (failed,) = [json.loads(x) for x in (tmp_path / "labels.failed.jsonl").read_text().splitlines()]
    assert "among the top 1000 tokens" in failed["error"]
