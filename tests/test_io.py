from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from charter.errors import InputError
from charter.io import (
    JsonlWriter,
    iter_rows,
    parse_transcript,
    read_ids,
    read_prompts,
    split_pair,
)


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_hh_transcripts_parse_whole_shared_file(hh_file: Path) -> None:
    n = 0
    with gzip.open(hh_file, "rt", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            prompt, chosen, rejected = split_pair(row["chosen"], row["rejected"])
            assert prompt[0].role == "user" and prompt[-1].role == "user"
            assert isinstance(chosen, str) and isinstance(rejected, str)
            n += 1
    assert n == 2312
    records = list(read_prompts(hh_file))
    assert len(records) == 2312
    assert len({r.id for r in records}) == 2312


def test_transcript_parser_exact() -> None:
    msgs = parse_transcript(
        "\n\nHuman: hi there\n\nAssistant: hello\n\nHuman: how?\n\nAssistant: like so"
    )
    assert [(m.role, m.content) for m in msgs] == [
        ("user", "hi there"),
        ("assistant", "hello"),
        ("user", "how?"),
        ("assistant", "like so"),
    ]
    with pytest.raises(ValueError):
        parse_transcript("no speakers here")


def test_prompt_forms(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "in.jsonl",
        [
            {"id": "s", "prompt": "plain"},
            {"id": "t", "prompt": "\n\nHuman: a\n\nAssistant: b\n\nHuman: c\n\nAssistant:"},
            {
                "id": "m",
                "messages": [
                    {"role": "system", "content": "be brief"},
                    {"role": "user", "content": "q"},
                ],
            },
            {"id": "p", "prompt": [{"role": "user", "content": "trl style"}]},
            {
                "id": 5,
                "chosen": "\n\nHuman: x\n\nAssistant: good",
                "rejected": "\n\nHuman: x\n\nAssistant: bad",
            },
        ],
    )
    recs = {r.id: r for r in read_prompts(path)}
    assert recs["s"].messages[0].content == "plain"
    assert [m.content for m in recs["t"].messages] == ["a", "b", "c"]
    assert recs["m"].messages[0].role == "system"
    assert recs["p"].messages[0].content == "trl style"
    assert [m.content for m in recs["5"].messages] == ["x"]


def test_ids_are_stable_and_unique(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "in.jsonl", [{"prompt": "same"}, {"prompt": "other"}, {"prompt": "same"}]
    )
    first = [r.id for r in read_prompts(path)]
    assert first == [r.id for r in read_prompts(path)]
    assert first[2] == first[0] + "-2"
    assert len(set(first)) == 3
    dup = write_jsonl(
        tmp_path / "dup.jsonl", [{"id": "a", "prompt": "x"}, {"id": "a", "prompt": "y"}]
    )
    with pytest.raises(InputError, match=r"dup\.jsonl:2: duplicate id 'a'"):
        list(read_prompts(dup))


def test_bad_input_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "ok"}\n\n{"prompt": "broken"\n')
    with pytest.raises(InputError, match=r"bad\.jsonl:3: malformed JSON"):
        list(read_prompts(path))
    path.write_text('{"prompt": "ok"}\n{"question": "where"}\n')
    with pytest.raises(
        InputError,
        match=r"bad\.jsonl:2: row has no 'prompt' or 'messages' field \(fields: question\)",
    ):
        list(read_prompts(path))
    path.write_text('{"messages": [{"role": "robot", "content": "x"}]}\n')
    with pytest.raises(
        InputError, match=r"bad\.jsonl:1: field 'messages'\[0\]\.role: Input should be 'system'"
    ):
        list(read_prompts(path))
    with pytest.raises(InputError, match="input not found"):
        list(read_prompts(tmp_path / "missing.jsonl"))


def test_parquet_and_dataset_folder_inputs(tmp_path: Path) -> None:
    import datasets

    ds = datasets.Dataset.from_list([{"id": "a", "prompt": "one"}, {"id": "b", "prompt": "two"}])
    ds.to_parquet(str(tmp_path / "in.parquet"))
    ds.save_to_disk(str(tmp_path / "folder"))
    for source in (tmp_path / "in.parquet", tmp_path / "folder"):
        assert [(r.id, r.messages[0].content) for r in read_prompts(source)] == [
            ("a", "one"),
            ("b", "two"),
        ]
    assert next(iter_rows(tmp_path / "in.parquet"))[0].endswith("in.parquet:row 1")


def test_writer_repairs_torn_tail_and_output_loads_with_datasets(tmp_path: Path) -> None:
    import datasets

    out = tmp_path / "out.jsonl"
    out.write_text('{"id": "a", "x": 1}\n{"id": "b", "x"')  # a kill mid-write
    assert read_ids(out) == {"a"}
    w = JsonlWriter(out)
    w.write({"id": "c", "x": 3})
    w.close()
    assert out.read_text() == '{"id": "a", "x": 1}\n{"id": "c", "x": 3}\n'
    loaded = datasets.load_dataset("json", data_files=str(out), split="train")
    assert loaded["id"] == ["a", "c"]
