"""Reading a Polis conversation export: ``comments.csv`` and the votes, from
``participants-votes.csv`` (the vote matrix, with each participant's opinion group) and/or
``votes.csv`` (every vote cast, the latest per participant and comment counting).

Anything malformed is one :class:`~charter.errors.InputError` naming ``file:line`` and the
field, so the command line can print it as one line.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from charter.errors import InputError

VOTES = {"1": 1, "-1": -1, "0": 0}
"""A vote as exported: 1 agree, -1 disagree, 0 pass (blank: not seen)."""
MODERATION = {"1": 1, "0": 0, "-1": -1}
"""A comment's moderation: 1 accepted, 0 not yet moderated, -1 rejected."""
MATRIX_FIXED = ("participant", "xid", "group-id", "n-comments", "n-votes", "n-agree", "n-disagree")
"""The columns of ``participants-votes.csv`` before one column per comment id."""
MS_FROM = 1e11
"""A timestamp at or above this is in milliseconds (1e11 s is the year 5138), else seconds."""


@dataclass(frozen=True)
class Comment:
    """One statement submitted to the conversation."""

    id: str
    text: str
    moderated: int
    """1 accepted, 0 not yet moderated, -1 rejected."""
    author: str = ""


@dataclass
class PolisExport:
    """A conversation: its statements, its votes and the opinion groups Polis found."""

    comments: dict[str, Comment]
    """By comment id, in file order."""
    votes: dict[str, dict[str, int]]
    """participant id -> comment id -> the participant's vote (1, -1 or 0)."""
    groups: dict[str, str] = field(default_factory=dict)
    """participant id -> the export's opinion group (participants Polis did not group are
    absent)."""
    xids: dict[str, str] = field(default_factory=dict)
    """participant id -> the external id the conversation's owner gave them, where one was."""
    summary: dict[str, str] = field(default_factory=dict)
    """``summary.csv``'s rows (topic, url, ...), where the export has one."""
    files: tuple[Path, ...] = ()
    """The files read."""

    @property
    def topic(self) -> str:
        return self.summary.get("topic", "").strip()

    @property
    def url(self) -> str:
        return self.summary.get("url", "").strip()


@dataclass
class _Files:
    comments: Path | None = None
    matrix: Path | None = None
    votes: Path | None = None
    summary: Path | None = None


def _identify(paths: Sequence[Path]) -> _Files:
    found = _Files()
    for path in paths:
        if path.is_dir():
            for name, attr in (
                ("comments.csv", "comments"),
                ("participants-votes.csv", "matrix"),
                ("votes.csv", "votes"),
                ("summary.csv", "summary"),
            ):
                if (path / name).is_file() and getattr(found, attr) is None:
                    setattr(found, attr, path / name)
            continue
        if not path.exists():
            raise InputError(f"Polis export not found: {path}")
        name = path.name.lower()
        # Exports downloaded one by one are often prefixed (``2demo-comments.csv``).
        kind = next(
            (
                attr
                for suffix, attr in (
                    ("participants-votes.csv", "matrix"),
                    ("comments.csv", "comments"),
                    ("votes.csv", "votes"),
                    ("summary.csv", "summary"),
                )
                if name.endswith(suffix)
            ),
            None,
        )
        if kind is None:
            raise InputError(
                f"{path}: not a Polis export file (expected comments.csv, votes.csv, "
                "participants-votes.csv or summary.csv)"
            )
        setattr(found, kind, path)
    if found.comments is None:
        raise InputError(f"{', '.join(map(str, paths))}: no comments.csv in the Polis export")
    if found.matrix is None and found.votes is None:
        raise InputError(
            f"{', '.join(map(str, paths))}: no votes in the Polis export "
            "(participants-votes.csv or votes.csv)"
        )
    return found


def _rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(line where the row starts, its cells) for each non-empty row; the header first."""
    try:
        with path.open(encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f, strict=True)
            start = 1
            try:
                for row in reader:
                    if any(cell.strip() for cell in row):
                        yield start, row
                    start = reader.line_num + 1
            except csv.Error as e:
                raise InputError(f"{path}:{start}: not valid CSV: {e}") from e
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text ({e.reason})") from e


def _header(path: Path, rows: Iterator[tuple[int, list[str]]], needed: Sequence[str]) -> list[str]:
    first = next(rows, None)
    if first is None:
        raise InputError(f"{path}:1: empty file, expected a header with {', '.join(needed)}")
    header = [h.strip() for h in first[1]]
    seen: set[str] = set()
    for h in header:
        if h in seen:
            raise InputError(f"{path}:1: column {h!r} appears twice")
        seen.add(h)
    missing = [n for n in needed if n not in header]
    if missing:
        raise InputError(f"{path}:1: missing column {', '.join(map(repr, missing))}")
    return header


def _cells(path: Path, line: int, header: list[str], row: list[str]) -> dict[str, str]:
    if len(row) != len(header):
        raise InputError(f"{path}:{line}: {len(row)} fields, the header has {len(header)}")
    return {h: c.strip() for h, c in zip(header, row, strict=True)}


def _id(path: Path, line: int, column: str, value: str) -> str:
    """An id as Polis writes them: a non-negative integer (``12``, or ``12.0`` from a
    spreadsheet), normalised to ``12``."""
    text = value[:-2] if value.endswith(".0") else value
    if not text.isdigit():
        raise InputError(f"{path}:{line}: {column}: expected an integer id, got {value!r}")
    return str(int(text))


def _coded(path: Path, line: int, column: str, value: str, codes: dict[str, int]) -> int:
    text = value[:-2] if value.endswith(".0") else value
    if text not in codes:
        allowed = ", ".join(codes)
        raise InputError(f"{path}:{line}: {column}: expected one of {allowed}, got {value!r}")
    return codes[text]


def _comments(path: Path) -> dict[str, Comment]:
    rows = _rows(path)
    header = _header(path, rows, ("comment-id", "comment-body"))
    comments: dict[str, Comment] = {}
    for line, row in rows:
        cells = _cells(path, line, header, row)
        cid = _id(path, line, "comment-id", cells["comment-id"])
        if cid in comments:
            raise InputError(f"{path}:{line}: comment-id: {cid} appears twice")
        text = " ".join(cells["comment-body"].split())
        if not text:
            raise InputError(f"{path}:{line}: comment-body: empty")
        # An export without moderation has no column: nothing was rejected.
        moderated = (
            _coded(path, line, "moderated", cells["moderated"], MODERATION)
            if "moderated" in cells
            else 1
        )
        comments[cid] = Comment(cid, text, moderated, cells.get("author-id", ""))
    if not comments:
        raise InputError(f"{path}:2: no comments")
    return comments


def _matrix(
    path: Path, comments: dict[str, Comment]
) -> tuple[dict[str, dict[str, int]], dict[str, str], dict[str, str]]:
    rows = _rows(path)
    header = _header(path, rows, ("participant",))
    columns = [h for h in header if h not in MATRIX_FIXED]
    for h in columns:
        if not h.isdigit():
            raise InputError(f"{path}:1: column {h!r} is neither a known column nor a comment id")
        if str(int(h)) not in comments:
            raise InputError(f"{path}:1: column {h!r}: no such comment in comments.csv")
    votes: dict[str, dict[str, int]] = {}
    groups: dict[str, str] = {}
    xids: dict[str, str] = {}
    for line, row in rows:
        cells = _cells(path, line, header, row)
        pid = _id(path, line, "participant", cells["participant"])
        if pid in votes:
            raise InputError(f"{path}:{line}: participant: {pid} appears twice")
        if cells.get("group-id"):
            groups[pid] = _id(path, line, "group-id", cells["group-id"])
        if cells.get("xid"):
            xids[pid] = cells["xid"]
        votes[pid] = {
            str(int(h)): _coded(path, line, f"column {h}", cells[h], VOTES)
            for h in columns
            if cells[h] != ""
        }
    return votes, groups, xids


def _timestamp(path: Path, line: int, value: str) -> float:
    try:
        t = float(value)
    except ValueError:
        raise InputError(f"{path}:{line}: timestamp: expected a number, got {value!r}") from None
    return t if t >= MS_FROM else t * 1000.0


def _vote_log(path: Path, comments: dict[str, Comment]) -> dict[str, dict[str, int]]:
    """The latest vote of each participant on each comment (by timestamp; a tie, or a file
    without timestamps, goes to the later row)."""
    rows = _rows(path)
    header = _header(path, rows, ("comment-id", "voter-id", "vote"))
    latest: dict[tuple[str, str], tuple[float, int]] = {}
    for line, row in rows:
        cells = _cells(path, line, header, row)
        cid = _id(path, line, "comment-id", cells["comment-id"])
        if cid not in comments:
            raise InputError(f"{path}:{line}: comment-id: {cid} is not in comments.csv")
        pid = _id(path, line, "voter-id", cells["voter-id"])
        vote = _coded(path, line, "vote", cells["vote"], VOTES)
        when = _timestamp(path, line, cells["timestamp"]) if cells.get("timestamp") else 0.0
        key = (pid, cid)
        if key not in latest or when >= latest[key][0]:
            latest[key] = (when, vote)
    votes: dict[str, dict[str, int]] = {}
    for (pid, cid), (_, vote) in latest.items():
        votes.setdefault(pid, {})[cid] = vote
    return votes


def _summary(path: Path) -> dict[str, str]:
    """``summary.csv``: ``key,value`` rows (a value may span lines)."""
    summary: dict[str, str] = {}
    for _, row in _rows(path):
        if len(row) >= 2 and row[0].strip():
            summary.setdefault(row[0].strip(), row[1])
    return summary


def read_export(paths: Path | str | Sequence[Path | str]) -> PolisExport:
    """A Polis export, from its folder or its files. Votes come from ``votes.csv`` where
    there is one (the latest vote per participant and comment), else from the matrix;
    opinion groups from the matrix's ``group-id``."""
    if isinstance(paths, str | Path):
        paths = [paths]
    files = _identify([Path(p) for p in paths])
    assert files.comments is not None
    comments = _comments(files.comments)
    votes: dict[str, dict[str, int]] = {}
    groups: dict[str, str] = {}
    xids: dict[str, str] = {}
    if files.matrix is not None:
        votes, groups, xids = _matrix(files.matrix, comments)
    if files.votes is not None:
        votes = _vote_log(files.votes, comments)
    read = [p for p in (files.comments, files.matrix, files.votes, files.summary) if p]
    return PolisExport(
        comments=comments,
        votes=votes,
        groups=groups,
        xids=xids,
        summary=_summary(files.summary) if files.summary else {},
        files=tuple(read),
    )
