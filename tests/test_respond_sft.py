"""``respond --sft FILE``: TRL conversational SFT rows, one per answer, that ``train sft`` reads."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import pytest

import charter
from charter.errors import ConfigError
from charter.stages.respond import write_sft
from charter.train.data import sft_rows
from tests.conftest import run_cli

SHORT, LONG = "short question", "a long question with many words in it"
"""Mock answers are ``Mock answer TAG to: PROMPT``: 5 words for SHORT, 12 for LONG."""


def write_prompts(path: Path, prompts: dict[str, str]) -> Path:
    path.write_text("".join(json.dumps({"id": k, "prompt": v}) + "\n" for k, v in prompts.items()))
    return path


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_one_messages_row_per_answer_that_train_sft_reads(tmp_path: Path) -> None:
    src = write_prompts(tmp_path / "p.jsonl", {"a": SHORT, "b": SHORT + " two"})
    out, sft = tmp_path / "r.jsonl", tmp_path / "sft.jsonl"
    charter.run("respond", input=str(src), output=out, model="mock/t", n=2, sft=sft)
    records = {r["id"]: r for r in lines(out)}
    rows = lines(sft)
    assert sorted(r["id"] for r in rows) == ["a:0", "a:1", "b:0", "b:1"]
    for row in rows:
        rid, k = row["id"].split(":")
        rec = records[rid]
        assert row == {
            "id": row["id"],
            "messages": [
                *rec["messages"],
                {"role": "assistant", "content": rec["responses"][int(k)]},
            ],
            "model": "mock/t",
        }
    trained = sft_rows(str(sft))
    assert len(trained) == 4
    assert trained[0]["prompt"] == records["a"]["messages"]
    assert trained[0]["completion"] == [
        {"role": "assistant", "content": records["a"]["responses"][0]}
    ]
    assert "sft" not in json.loads((tmp_path / "r.settings.json").read_text())


def test_cut_off_answers_are_left_out_unless_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    src = write_prompts(tmp_path / "p.jsonl", {"s": SHORT, "l": LONG})
    out, sft = tmp_path / "r.jsonl", tmp_path / "sft.jsonl"
    with caplog.at_level(logging.INFO, logger="charter"):
        charter.run("respond", input=str(src), output=out, model="mock/t", max_tokens=6, sft=sft)
    assert {r["id"]: r["finish_reasons"] for r in lines(out)} == {"s": ["stop"], "l": ["length"]}
    assert [r["id"] for r in lines(sft)] == ["s:0"]
    assert (
        "SFT rows: 1 written" in caplog.text and "1 cut off at max_tokens left out" in caplog.text
    )
    kept = tmp_path / "kept.jsonl"
    charter.run(
        "respond",
        input=str(src),
        output=out,
        model="mock/t",
        max_tokens=6,
        sft=kept,
        sft_keep_truncated=True,
    )  # a resume with nothing left to do: the flags are not among the recorded settings
    assert sorted(r["id"] for r in lines(kept)) == ["l:0", "s:0"]


def test_several_models_each_row_names_its_model(tmp_path: Path) -> None:
    src = write_prompts(tmp_path / "p.jsonl", {"a": SHORT})
    sft = tmp_path / "sft.jsonl"
    charter.run(
        "respond", input=str(src), output=tmp_path / "r.jsonl", model="mock/A,mock/B", n=2, sft=sft
    )
    rows = lines(sft)
    assert [(r["id"], r["model"]) for r in rows] == [
        ("a:0", "mock/A"),
        ("a:1", "mock/A"),
        ("a:2", "mock/B"),
        ("a:3", "mock/B"),
    ]


def test_a_resumed_run_rewrites_the_whole_file(tmp_path: Path) -> None:
    src = write_prompts(tmp_path / "p.jsonl", {f"q{i}": f"{SHORT} {i}" for i in range(4)})
    out, sft = tmp_path / "r.parquet", tmp_path / "sft.jsonl"
    first = charter.run("respond", input=str(src), output=out, model="mock/t", limit=2, sft=sft)
    assert first.written == 2 and [r["id"] for r in lines(sft)] == ["q0:0", "q1:0"]
    sft.write_text("stale\n")
    second = charter.run("respond", input=str(src), output=out, model="mock/t", sft=sft)
    assert (second.written, second.skipped) == (2, 2)
    assert sorted(r["id"] for r in lines(sft)) == [f"q{i}:0" for i in range(4)]
    assert not list(tmp_path.glob("*.tmp"))


def test_a_folder_of_parts_and_a_parquet_file(tmp_path: Path) -> None:
    """--engine ray writes a folder of parts; the rows come from every part."""
    src = write_prompts(tmp_path / "p.jsonl", {"a": SHORT, "b": SHORT + " b"})
    out = tmp_path / "r.jsonl"
    charter.run("respond", input=str(src), output=out, model="mock/t")
    folder = tmp_path / "parts"
    folder.mkdir()
    for i, line in enumerate(out.read_text().splitlines(), start=1):
        (folder / f"part-{i:05d}.jsonl").write_text(line + "\n")
    assert write_sft(folder, tmp_path / "sft.parquet") == (2, 0, 0)
    assert len(sft_rows(str(tmp_path / "sft.parquet"))) == 2
    assert not (tmp_path / "sft.parquet.partial.jsonl").exists()
    shutil.rmtree(folder)


def test_sft_on_the_runs_own_files_is_refused(tmp_path: Path) -> None:
    src = write_prompts(tmp_path / "p.jsonl", {"a": SHORT})
    out = tmp_path / "r.jsonl"
    for target in (out, src, tmp_path / "r.failed.jsonl"):
        with pytest.raises(ConfigError):
            charter.run("respond", input=str(src), output=out, model="mock/t", sft=target)
    assert not out.exists()
    r = run_cli("respond", str(src), "-o", str(out), "-m", "mock/t", "--sft", str(out))
    err = r.stderr.strip()
    assert r.returncode != 0 and err.startswith("error:") and len(err.splitlines()) == 1, err
    assert "Traceback" not in err and "two of this run's files" in err
    folder = tmp_path / "a-folder"
    folder.mkdir()
    with pytest.raises(ConfigError, match="is a folder"):  # before any answer is asked for
        charter.run("respond", input=str(src), output=out, model="mock/t", sft=folder)
    assert not out.exists()


def test_no_sft_rows_is_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    src = write_prompts(tmp_path / "p.jsonl", {"l": LONG})
    with caplog.at_level(logging.WARNING, logger="charter"):
        charter.run(
            "respond", input=str(src), output=tmp_path / "r.jsonl", model="mock/t", max_tokens=6,
            sft=tmp_path / "sft.jsonl",
        )  # fmt: skip
    assert "no SFT rows written" in caplog.text and "--sft-keep-truncated" in caplog.text


def test_a_recipe_trains_on_the_sft_file_and_never_writes_over_it(tmp_path: Path) -> None:
    from charter.recipe import load_recipe

    src = write_prompts(tmp_path / "p.jsonl", {"a": SHORT})
    respond = (
        f"  - stage: respond\n    input: {src}\n    output: {tmp_path / 'r.jsonl'}\n"
        f"    model: mock/t\n    sft: {tmp_path / 'sft.jsonl'}\n"
    )
    train = (
        "  - stage: train\n    method: sft\n    model: smollm2\n"
        f"    input: {tmp_path / 'sft.jsonl'}\n"
    )
    ok = tmp_path / "ok.yaml"
    ok.write_text(f"stages:\n{respond}{train}    output: {tmp_path / 'model'}\n")
    assert [step.job.name for step in load_recipe(ok)] == ["respond", "train sft"]
    clash = tmp_path / "clash.yaml"
    clash.write_text(
        f"stages:\n{respond}  - stage: respond\n    input: {src}\n"
        f"    output: {tmp_path / 'sft.jsonl'}\n    model: mock/t\n"
    )
    with pytest.raises(ConfigError, match="stages\\[0\\] writes too"):
        load_recipe(clash)
