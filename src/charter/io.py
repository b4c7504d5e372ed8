"""Reading inputs and writing outputs.

Inputs: JSONL (optionally gzipped) or Parquet rows with ``prompt`` (a string, an HH-RLHF
transcript, or a chat list) or ``messages``; HH-RLHF ``chosen``/``rejected`` rows; a local
HF dataset folder; ``hf:NAME`` for a hub dataset when online. Outputs are JSONL written a
whole line at a time, so a killed run leaves only complete records behind, or Parquet, which
is produced from the JSONL when the run completes.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError

from charter.errors import ConfigError, InputError
from charter.records import AnswerRecord, PromptRecord
from charter.types import Message
from charter.validation import describe_validation

T = TypeVar("T")

_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):[ \t]?")
_ROLE = {"Human": "user", "Assistant": "assistant"}


def _loads(text: str | bytes) -> Any:
    """``json.loads``, through orjson when the result is the same: text with a run of 20
    digits (orjson reads integers beyond 64 bits as floats) and what orjson refuses (NaN,
    lone surrogates, bad JSON) go to the json module, which parses it or raises its own
    JSONDecodeError as before."""
    long = _LONG_DIGITS_B if isinstance(text, bytes) else _LONG_DIGITS
    if long.search(text) is None:  # type: ignore[arg-type]
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            pass
    return json.loads(text)


_LONG_DIGITS = re.compile(r"[0-9]{20}")
_LONG_DIGITS_B = re.compile(rb"[0-9]{20}")


# -- HH-RLHF transcripts -----------------------------------------------------------------
def is_transcript(text: str) -> bool:
    return text.lstrip("\n").startswith("Human:")


def parse_transcript(text: str) -> list[Message]:
    """``\\n\\nHuman: … \\n\\nAssistant: …`` -> chat messages."""
    parts = _TURN.split(text)
    if len(parts) < 3 or parts[0].strip():
        raise ValueError("not an HH-RLHF transcript (expected it to start with 'Human:')")
    messages = []
    for speaker, content in zip(parts[1::2], parts[2::2], strict=True):
        messages.append(Message(role=_ROLE[speaker], content=content.strip()))  # type: ignore[arg-type]
    return messages


def split_pair(chosen: str, rejected: str) -> tuple[list[Message], str, str]:
    """An HH-RLHF pair -> (shared prompt conversation, chosen reply, rejected reply).

    The prompt is the longest shared text that ends at an ``Assistant:`` marker; what follows
    in each transcript is its reply. A few real rows diverge earlier than the final turn
    (e.g. a turn marker written inline), so splitting on shared text, not on parsed turns,
    keeps those rows instead of rejecting them.
    """
    shared = os.path.commonprefix([chosen, rejected])  # noqa: RUF071 (text, not paths)
    cut = shared.rfind("\n\nAssistant:")
    if cut < 0:
        raise ValueError("chosen and rejected share no conversation ending in 'Assistant:'")
    end = cut + len("\n\nAssistant:")
    prompt = parse_transcript(chosen[:cut])
    if not prompt or prompt[-1].role != "user":
        raise ValueError("the shared conversation must end with a Human turn")
    return prompt, chosen[end:].strip(), rejected[end:].strip()


# -- rows --------------------------------------------------------------------------------
def _open_binary(path: Path) -> IO[bytes]:
    if path.suffix == ".gz":
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return path.open("rb")


def _check_exists(path: Path) -> None:
    if not path.exists():
        raise InputError(f"input not found: {path}")


OnInvalid = Callable[[InputError, object], None]
"""Called with the error and the offending row (or raw line) when invalid rows are skipped."""


def iter_rows(
    source: str | Path, on_invalid: OnInvalid | None = None
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield (where, row) pairs; ``where`` names the file and line for error messages. A row
    that cannot be read raises InputError, or goes to ``on_invalid`` when one is given."""
    text = str(source)
    if text.startswith("hf:"):
        yield from _iter_hub(text[3:])
        return
    path = Path(source)
    _check_exists(path)
    if path.is_dir():
        parts = part_files(path)
        if parts:  # a charter output written as parts (--engine ray)
            for part in parts:
                yield from iter_rows(part, on_invalid)
            return
        yield from _iter_dataset_dir(path)
        return
    name = path.name.lower()
    if name.endswith(".parquet"):
        yield from _iter_parquet(path)
    elif name.endswith((".jsonl", ".jsonl.gz", ".json", ".json.gz", ".ndjson")):
        yield from _iter_jsonl(path, on_invalid)
    else:
        raise InputError(
            f"{path}: unsupported input type (use .jsonl, .jsonl.gz, .parquet or a dataset folder)"
        )


def _iter_jsonl(path: Path, on_invalid: OnInvalid | None) -> Iterator[tuple[str, dict[str, Any]]]:
    try:
        with _open_binary(path) as f:
            for lineno, raw in enumerate(f, start=1):
                where = f"{path}:{lineno}"
                try:
                    row = _parse_line(raw, where)
                except InputError as e:
                    if on_invalid is None:
                        raise
                    on_invalid(e, raw.decode("utf-8", "replace").rstrip("\n"))
                    continue
                if row is not None:
                    yield where, row
    except (OSError, EOFError) as e:
        raise InputError(f"{path}: cannot read ({e})") from e


def _parse_line(raw: bytes, where: str) -> dict[str, Any] | None:
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(
            f"{where}: not valid UTF-8 (byte {raw[e.start]:#04x} at column {e.start + 1})"
        ) from e
    if not line.strip():
        return None
    try:
        row = _loads(line)
    except json.JSONDecodeError as e:
        raise InputError(f"{where}: malformed JSON ({e.msg} at column {e.colno})") from e
    if not isinstance(row, dict):
        raise InputError(f"{where}: expected a JSON object, got {type(row).__name__}")
    if _LONE_SURROGATE.search(line):
        _check_text(row, where)
    return row


# A JSON escape of a UTF-16 surrogate: only a lone one (not half of a pair) is invalid text.
_LONE_SURROGATE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def _check_text(value: Any, where: str, field: str = "") -> None:
    """Reject strings holding a lone UTF-16 surrogate (``"\\ud800"``): valid JSON, but not
    text that can be sent to a server or written as UTF-8."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            name = f"field {field!r}" if field else "a field"
            raise InputError(
                f"{where}: {name} holds a lone surrogate (\\u{ord(value[e.start]):04x}), "
                "which is not valid Unicode text"
            ) from None
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_text(v, where, field or str(k))
    elif isinstance(value, list):
        for v in value:
            _check_text(v, where, field)


def _iter_parquet(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
        index = 0
        for batch in pf.iter_batches(batch_size=1024):
            for row in batch.to_pylist():
                index += 1
                yield f"{path}:row {index}", row
    except (pa.ArrowException, OSError) as e:
        raise InputError(f"{path}: cannot read Parquet ({e})") from e


def _iter_dataset_dir(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    try:
        import datasets
    except ImportError as e:
        raise InputError(
            f"{path}: reading a dataset folder needs: pip install 'charter[datasets]'"
        ) from e
    try:
        ds = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as e:
        raise InputError(f"{path}: not a saved HF dataset ({e})") from e
    if isinstance(ds, datasets.DatasetDict):
        split = "train" if "train" in ds else next(iter(ds))
        ds = ds[split]
    for index, row in enumerate(ds, start=1):
        yield f"{path}:row {index}", dict(row)


def _iter_hub(name: str) -> Iterator[tuple[str, dict[str, Any]]]:
    try:
        import datasets
    except ImportError as e:
        raise InputError(f"hf:{name}: needs: pip install 'charter[datasets]'") from e
    dataset, _, split = name.partition("@")
    try:
        ds = datasets.load_dataset(dataset, split=split or "train", streaming=True)
    except Exception as e:  # the hub raises many kinds; all mean "cannot get it"
        raise InputError(
            f"hf:{name}: cannot load dataset ({' '.join(str(e).split())[:200]})"
        ) from e
    for index, row in enumerate(ds, start=1):
        yield f"hf:{name}:row {index}", dict(row)


def row_prompt(row: dict[str, Any], where: str) -> tuple[list[Message], str | None]:
    """(prompt conversation, answer given with it) of a row, from whichever fields it uses.

    The prompt comes from ``prompt`` (string, HH-RLHF transcript or chat list), else
    ``messages``, else the shared part of an HH-RLHF ``chosen``/``rejected`` pair. An answer
    comes from ``response``, ``responses[0]`` (charter respond output) or ``completion``
    (TRL prompt-completion), or is the final assistant turn of a conversation that ends with one.
    """
    try:
        if row.get("prompt") is not None:
            messages = _prompt_field(row["prompt"], where)
        elif row.get("messages") is not None:
            messages = chat_messages(row["messages"], where, "messages")
        elif isinstance(row.get("chosen"), str) and isinstance(row.get("rejected"), str):
            return split_pair(row["chosen"], row["rejected"])[0], None
        else:
            raise InputError(
                f"{where}: row has no 'prompt' or 'messages' field "
                f"(fields: {', '.join(row) or 'none'})"
            )
    except ValueError as e:
        raise InputError(f"{where}: {e}") from e
    response = _given_response(row, where)
    if messages[-1].role == "assistant":
        trailing = messages.pop().content
        if response is None and trailing.strip():
            response = trailing
    if not messages or messages[-1].role != "user":
        raise InputError(f"{where}: the conversation must end with a user turn")
    return messages, response


def _prompt_field(prompt: Any, where: str) -> list[Message]:
    if isinstance(prompt, list):
        return chat_messages(prompt, where, "prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise InputError(f"{where}: field 'prompt' must be a non-empty string or a chat list")
    if is_transcript(prompt):
        return parse_transcript(prompt)
    return [Message(role="user", content=prompt)]


def _given_response(row: dict[str, Any], where: str) -> str | None:
    value = row.get("response")
    if value is None and isinstance(row.get("responses"), list) and row["responses"]:
        value = row["responses"][0]
    if value is None and row.get("completion") is not None:
        value = row["completion"]
        if isinstance(value, list):  # TRL conversational completion
            value = " ".join(str(m.get("content", "")) for m in value if isinstance(m, dict))
    if value is None:
        return None
    if not isinstance(value, str):
        raise InputError(f"{where}: the given answer must be a string, got {type(value).__name__}")
    return value


def chat_messages(raw: Any, where: str, field: str) -> list[Message]:
    if not isinstance(raw, list) or not raw:
        raise InputError(f"{where}: field {field!r} must be a non-empty list of messages")
    messages = []
    for i, m in enumerate(raw):
        try:
            messages.append(Message.model_validate(m))
        except ValidationError as e:
            err = e.errors()[0]
            loc = "".join(f".{p}" for p in err["loc"])
            raise InputError(f"{where}: field {field!r}[{i}]{loc}: {err['msg']}") from e
    return messages


def content_id(messages: list[Message], *extra: str) -> str:
    blob = json.dumps(
        [[m.model_dump() for m in messages], *extra], ensure_ascii=False, sort_keys=True
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class RowIds:
    """Stable ids for rows: the row's own ``id``, else a hash of its content; repeated content
    gets ``-2``, ``-3``... in file order, and a repeated explicit id is an error."""

    def __init__(self) -> None:
        self._seen: set[int] = set()
        self._repeats: dict[str, int] = {}

    @staticmethod
    def _key(text: str) -> int:
        # 64-bit digests rather than the strings: far less memory per id on long inputs.
        return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")

    def __call__(
        self, row: dict[str, Any], where: str, messages: list[Message], *extra: str
    ) -> str:
        raw_id = row.get("id")
        explicit = raw_id not in (None, "")
        base = str(raw_id) if explicit else content_id(messages, *extra)
        key = self._key(base)
        if key not in self._seen:
            self._seen.add(key)
            return base
        if explicit:
            raise InputError(f"{where}: duplicate id {base!r}")
        count = self._repeats.get(base, 1) + 1
        self._repeats[base] = count
        return f"{base}-{count}"


def valid_rows(
    source: str | Path, on_invalid: OnInvalid | None, convert: Callable[[str, dict[str, Any]], T]
) -> Iterator[T]:
    """``convert`` each row; rows it rejects raise, or go to ``on_invalid`` when given."""
    for where, row in iter_rows(source, on_invalid):
        try:
            item = convert(where, row)
        except InputError as e:
            if on_invalid is None:
                raise
            on_invalid(e, row)
            continue
        yield item


def read_prompts(source: str | Path, on_invalid: OnInvalid | None = None) -> Iterator[PromptRecord]:
    """Stream prompt records with stable ids (see :class:`RowIds`)."""
    ids = RowIds()

    def convert(where: str, row: dict[str, Any]) -> PromptRecord:
        messages, response = row_prompt(row, where)
        return PromptRecord(id=ids(row, where, messages), messages=messages, response=response)

    yield from valid_rows(source, on_invalid, convert)


def read_answers(
    source: str | Path,
    reference_field: str | None = None,
    on_invalid: OnInvalid | None = None,
) -> Iterator[AnswerRecord]:
    """Answers to grade: ``response``/``completion``/final assistant turn, every entry of
    ``responses`` (ids ``ID:k``), or ``final`` from ``charter revise`` output."""
    ids = RowIds()

    def convert(where: str, row: dict[str, Any]) -> list[AnswerRecord]:
        messages, given = row_prompt(row, where)
        reference = None
        if reference_field is not None:
            value = row.get(reference_field)
            if not isinstance(value, str) or not value.strip():
                raise InputError(
                    f"{where}: reference field {reference_field!r} is missing or empty"
                )
            reference = value
        answers: list[tuple[str, Any]]
        if isinstance(row.get("responses"), list) and row["responses"]:
            answers = [(str(i), a) for i, a in enumerate(row["responses"])]
        elif isinstance(row.get("final"), str):
            answers = [("", row["final"])]
        elif given is not None:
            answers = [("", given)]
        else:
            raise InputError(f"{where}: row has no answer to grade (response, responses or final)")
        if not all(isinstance(a, str) for _, a in answers):
            raise InputError(f"{where}: answers to grade must be strings")
        base = ids(row, where, messages, *(str(a) for _, a in answers))
        return [
            AnswerRecord(
                id=base if key == "" else f"{base}:{key}",
                messages=messages,
                response=answer,
                reference=reference,
            )
            for key, answer in answers
        ]

    for items in valid_rows(source, on_invalid, convert):
        yield from items


def count_rows(source: str | Path) -> int | None:
    """Row count when cheap to know (for progress bars); None otherwise."""
    path = Path(source)
    if not path.is_file():
        return None
    if path.name.endswith(".parquet"):
        import pyarrow.parquet as pq

        try:
            return int(pq.ParquetFile(path).metadata.num_rows)
        except Exception:
            return None
    if path.suffix == ".gz":
        return None
    n = 0
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            n += chunk.count(b"\n")
    return n


# -- outputs -----------------------------------------------------------------------------
def _repair_tail(path: Path) -> None:
    """Drop a partial last line left by a killed writer, so appends start on a fresh line."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with path.open("rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return
        size = f.seek(0, os.SEEK_END)
        pos = size
        step = 1 << 16
        while pos > 0:
            start = max(0, pos - step)
            f.seek(start)
            chunk = f.read(pos - start)
            nl = chunk.rfind(b"\n")
            if nl >= 0:
                f.truncate(start + nl + 1)
                return
            pos = start
        f.truncate(0)


def part_files(folder: Path) -> list[Path]:
    """The part files of an output written as a folder (``part-00001.jsonl``, ...), in
    order; hidden and temporary files are not parts."""
    return sorted(p for p in folder.glob("part-*") if p.suffix in (".jsonl", ".parquet"))


def output_lines(path: Path) -> Iterator[tuple[str, str]]:
    """(where, JSON line) of each record of an output file, or of each part of a folder of
    parts (``where`` names the file and line, for errors)."""
    files = part_files(path) if path.is_dir() else [path]
    for file in files:
        if file.suffix == ".parquet":
            import pyarrow.parquet as pq

            for row, record in enumerate(pq.read_table(file).to_pylist(), start=1):
                yield f"{file}:row {row}", json.dumps(record, ensure_ascii=False)
            continue
        with file.open("r", encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                if line.strip():
                    yield f"{file}:{lineno}", line


def iter_records(path: Path) -> Iterator[dict[str, Any]]:
    """The complete records of a JSONL output (or of a folder of part files), skipping any
    line that is not one (a torn last line, or text someone added by hand)."""
    if path.is_dir():
        for part in part_files(path):
            if part.suffix == ".parquet":
                import pyarrow.parquet as pq

                yield from pq.read_table(part).to_pylist()
            else:
                yield from iter_records(part)
        return
    with path.open("rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                break
            try:
                rec = _loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict):
                yield rec


M = TypeVar("M", bound=BaseModel)


def read_record(line: str | bytes, where: str, model: type[M], what: str) -> M:
    """One line of a charter output as its record model; one InputError naming ``where`` and
    the field otherwise. The ``input_hash`` the engine appends is not part of the record."""
    try:
        data = _loads(line)
    except ValueError as e:
        raise InputError(f"{where}: not JSON ({e})") from e
    if not isinstance(data, dict):
        raise InputError(f"{where}: not a {what} (expected a JSON object)")
    data.pop("input_hash", None)
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise InputError(f"{where}: not a {what}: {describe_validation(e)}") from e


def read_output(path: Path, model: type[M]) -> Iterator[M]:
    """The records of a charter output as their model, skipping any line that is not one
    (for summaries, which must not fail a finished run). A line as ``JsonlWriter`` wrote it
    is validated straight from its text; any other goes through ``json`` first. A folder of
    parts (--engine ray) is read part after part."""
    if path.is_dir():
        for part in part_files(path):
            if part.suffix == ".jsonl":
                yield from read_output(part, model)
                continue
            for raw in iter_records(part):
                raw.pop("input_hash", None)
                with contextlib.suppress(ValidationError):
                    yield model.model_validate(raw)
        return
    with path.open("rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                break
            try:
                yield model.model_validate_json(_INPUT_HASH.sub(b"}", line))
                continue
            except ValidationError:
                pass
            try:
                raw = _loads(line)
            except ValueError:
                continue
            if not isinstance(raw, dict):
                continue
            raw.pop("input_hash", None)
            try:
                yield model.model_validate(raw)
            except ValidationError:
                continue


# The field JsonlWriter appends last: ,"input_hash":"<hex>"}
_INPUT_HASH = re.compile(rb',"input_hash":"[0-9a-f]*"\}\r?\n?$')


def read_done(path: Path) -> dict[str, str | None]:
    """Id -> ``input_hash`` of the complete records already in a JSONL output (None for
    records written before charter stored input hashes)."""
    done: dict[str, str | None] = {}
    if path.exists():
        for rec in iter_records(path):
            if rec.get("id") is not None:
                digest = rec.get("input_hash")
                done[str(rec["id"])] = digest if isinstance(digest, str) else None
    return done


def read_ids(path: Path) -> set[str]:
    """Ids of the complete records already in a JSONL output."""
    return set(read_done(path))


class JsonlWriter:
    """Appends records one whole line at a time, flushed, so a kill leaves no torn record.

    ``exclusive`` takes an advisory lock on the file for as long as the writer is open, so a
    second process started on the same output refuses instead of interleaving lines.
    """

    def __init__(self, path: Path, *, exclusive: bool = False) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._f = path.open("a", encoding="utf-8")
        except OSError as e:
            raise ConfigError(f"cannot write {path}: {e.strerror or e}") from e
        if exclusive:
            self._lock()
        _repair_tail(path)

    def _lock(self) -> None:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not on POSIX: no advisory locks
            return
        try:
            fcntl.flock(self._f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            self._f.close()
            raise ConfigError(
                f"{self.path} is being written by another charter process; "
                "wait for it to finish or choose another output"
            ) from e

    def write(self, record: BaseModel | dict[str, Any], *, input_hash: str | None = None) -> None:
        """Append one record; ``input_hash`` is added as the record's last field."""
        if isinstance(record, BaseModel):
            line = record.model_dump_json()
        else:
            line = json.dumps(record, ensure_ascii=False)
        if input_hash is not None:
            line = line[:-1] + f',"input_hash":{json.dumps(input_hash)}}}'
        self._f.write(line + "\n")
        self._f.flush()

    def sync(self) -> None:
        """Force what was written to the disk (a kill -9 spares flushed lines already; this
        also survives a power cut)."""
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()


def write_jsonl_atomic(path: Path, lines: list[str]) -> None:
    """Write a whole JSONL file at once: a reader (or a kill) sees the old file or the new,
    never half of one."""
    if path.is_dir():
        raise ConfigError(f"{path} is a folder: name a file to write")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with tmp.open("w", encoding="utf-8") as f:
            f.writelines(line + "\n" for line in lines)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_rows(dest: Path, lines: list[str]) -> None:
    """A whole file of JSON rows, atomically: Parquet when ``dest`` ends in ``.parquet``,
    else JSONL."""
    if dest.suffix != ".parquet":
        write_jsonl_atomic(dest, lines)
        return
    work = dest.with_name(dest.name + ".partial.jsonl")
    write_jsonl_atomic(work, lines)
    try:
        jsonl_to_parquet(work, dest)
    finally:
        work.unlink(missing_ok=True)


def jsonl_to_parquet(src: Path, dest: Path) -> None:
    """Convert a finished JSONL output to Parquet (atomically replacing ``dest``)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    with src.open("r", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    table = pa.Table.from_pylist(rows)
    tmp = dest.with_name(dest.name + ".tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, dest)
