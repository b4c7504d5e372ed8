"""Label records as ``evaluate`` reads them: only the fields it measures, read fast.

A million label records as pydantic models take minutes to validate and gigabytes to hold
(the prompts and answers are most of each record). ``evaluate`` needs neither: it reads each
line with orjson, checks the fields it uses and keeps them in a small row (answers as their
lengths). A line that fails a check is read again as a full ``LabelRecord``, so a bad record
gets the same one-line error, naming its file, line and field, as everywhere else."""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import orjson

from charter.io import output_lines, read_record
from charter.judges.records import LabelRecord
from charter.types import Usage

FLAGS = ("topk_truncated", "low_option_mass")
"""Flags a record carries when the charter that wrote it set them."""


class PrincipleVerdict(NamedTuple):
    principle_id: str
    p_a: float


class OrderVerdict(NamedTuple):
    order: Literal["ab", "ba"]
    p_first: float
    source: str


@dataclass(slots=True)
class LabelRow:
    """What ``evaluate`` measures of one label record."""

    id: str
    p_a: float
    human_choice: Literal["a", "b"] | None
    position_consistent: bool | None
    per_principle: tuple[PrincipleVerdict, ...]
    judgements: tuple[OrderVerdict, ...]
    len_a: int
    """Characters of answer A."""
    len_b: int
    words_a: int
    """Words of answer A (split on whitespace), where its source names a model (for
    head-to-head win rates); else 0."""
    words_b: int
    a_source: str
    b_source: str
    label_source: str
    judge: str
    topk_truncated: bool
    low_option_mass: bool
    flags_set: frozenset[str]
    """The FLAGS the record carries (a charter that did not set them wrote none)."""

    @classmethod
    def of(cls, record: LabelRecord) -> LabelRow:
        """The row of a full record."""
        return cls(
            id=record.id,
            p_a=record.p_a,
            human_choice=record.human_choice,
            position_consistent=record.position_consistent,
            per_principle=tuple(
                PrincipleVerdict(p.principle_id, p.p_a) for p in record.per_principle
            ),
            judgements=tuple(OrderVerdict(j.order, j.p_first, j.source) for j in record.judgements),
            len_a=len(record.response_a),
            len_b=len(record.response_b),
            words_a=_words(record.response_a, record.a_source),
            words_b=_words(record.response_b, record.b_source),
            a_source=record.a_source,
            b_source=record.b_source,
            label_source=record.label_source,
            judge=record.judge,
            topk_truncated=record.topk_truncated,
            low_option_mass=record.low_option_mass,
            flags_set=frozenset(f for f in FLAGS if f in record.model_fields_set),
        )


_KNOWN = frozenset(LabelRecord.model_fields) | {"input_hash"}
"""The keys a label record may have: any other is an error (the full record says which)."""


_NAMED = re.compile(r"responses\[\d+\] \((.+)\)")


@functools.cache  # sources are few: "responses[0] (MODEL)" over and over
def model_of(source: str) -> str | None:
    """The model that wrote an answer (``responses[i] (MODEL)``), or None."""
    named = _NAMED.fullmatch(source)
    return named.group(1) if named else None


def _words(text: str, source: Any) -> int:
    """Words of an answer whose source names a model (what head-to-head rates weigh)."""
    return len(text.split()) if type(source) is str and model_of(source) else 0


class _Unchecked(Exception):
    """A line the fast path does not vouch for: read as a full record instead."""


_SAME: dict[str, str] = {}
"""One copy of each repeated string (principle ids, sources, judges): a million rows share
them instead of holding a million copies."""


def _same(value: Any) -> str:
    if type(value) is not str:
        raise _Unchecked
    return _SAME.setdefault(value, value)


def _p(value: Any) -> float:
    """A probability: a number (not a bool) in [0, 1]; NaN fails the comparison."""
    if (type(value) is float or type(value) is int) and 0.0 <= value <= 1.0:
        return float(value)
    raise _Unchecked


_ORDERS: dict[Any, Literal["ab", "ba"]] = {"ab": "ab", "ba": "ba"}

_FLAG_SETS = {
    (t, low): frozenset(f for f, on in zip(FLAGS, (t, low), strict=True) if on)
    for t in (False, True)
    for low in (False, True)
}


def _row(data: Any) -> tuple[LabelRow, dict[str, Any]]:
    """The row of a parsed line, and its usage; _Unchecked when anything is off."""
    if type(data) is not dict or not data.keys() <= _KNOWN:
        raise _Unchecked
    try:
        a, b = data["response_a"], data["response_b"]
        rid = data["id"]
        if type(a) is not str or type(b) is not str or type(rid) is not str:
            raise _Unchecked
        human = data.get("human_choice")
        if human is not None and human != "a" and human != "b":
            raise _Unchecked
        consistent = data.get("position_consistent")
        if consistent is not None and type(consistent) is not bool:
            raise _Unchecked
        principles = []
        for v in data["per_principle"]:
            principles.append(PrincipleVerdict(_same(v["principle_id"]), _p(v["p_a"])))
        orders = []
        for j in data["judgements"]:
            order = _ORDERS.get(j["order"])
            if order is None:
                raise _Unchecked
            orders.append(OrderVerdict(order, _p(j["p_first"]), _same(j["source"])))
        usage = data.get("usage") or {}
        topk, low = data.get("topk_truncated", False), data.get("low_option_mass", False)
        if type(usage) is not dict or type(topk) is not bool or type(low) is not bool:
            raise _Unchecked
        row = LabelRow(
            id=rid,
            p_a=_p(data["p_a"]),
            human_choice=human,
            position_consistent=consistent,
            per_principle=tuple(principles),
            judgements=tuple(orders),
            len_a=len(a),
            len_b=len(b),
            words_a=_words(a, data["a_source"]),
            words_b=_words(b, data["b_source"]),
            a_source=_same(data["a_source"]),
            b_source=_same(data["b_source"]),
            label_source=_same(data["label_source"]),
            judge=_same(data["judge"]),
            topk_truncated=topk,
            low_option_mass=low,
            flags_set=_FLAG_SETS["topk_truncated" in data, "low_option_mass" in data],
        )
    except (KeyError, TypeError):
        raise _Unchecked from None
    return row, usage


def read_label_rows(path: Path, usage: Usage) -> Iterator[LabelRow]:
    """Each record of a label file (or folder of parts) as a row; what the records' requests
    used is added into ``usage``."""
    plain = dict.fromkeys(_PLAIN, 0)
    for where, line in output_lines(path):
        try:
            row, used = _row(orjson.loads(line))
            if used.keys() <= _PLAIN and all(type(v) is int and v >= 0 for v in used.values()):
                for k, v in used.items():
                    plain[k] += v
                yield row
                continue
        except (_Unchecked, ValueError):  # orjson's decode error is a ValueError
            pass
        record = read_record(line, where, LabelRecord, "label record")
        usage.add(record.usage)
        yield LabelRow.of(record)
    usage.add(Usage(**plain))


_PLAIN = frozenset(("requests", "cache_hits", "prompt_tokens", "completion_tokens"))
"""The usage of a record with no prompt caching and no batch: read without validation."""
