"""charter constitution from-polis: reading Polis exports, group-informed consensus,
regrouping, selection, provenance, the report, --rewrite-with, and the CLI's errors."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from charter.constitution import load_constitution
from charter.errors import ConstitutionError, InputError
from charter.polis import FromPolisOptions, analyse, consensus, from_polis, read_export
from charter.polis.analysis import Counts
from charter.testing.server import FakeOpenAIServer
from tests.conftest import ROOT, SHARED_DATA, run_cli

POLIS = SHARED_DATA / "polis"
CONVERSATIONS = sorted(p for p in POLIS.glob("*/") if (p / "comments.csv").exists())
EXAMPLE = ROOT / "examples" / "polis" / "london.youth.policing"

COMMENTS = """\
timestamp,datetime,comment-id,author-id,agrees,disagrees,moderated,comment-body
1500000000000,x,10,1,0,0,1,Explain the reasons behind an answer.
1500000000000,x,11,1,0,0,1,Never mock the person asking.
1500000000000,x,12,2,0,0,1,"never MOCK the person asking!"
1500000000000,x,13,2,0,0,0,Use plain words.
1500000000000,x,14,3,0,0,-1,Buy my product.
"""
# Two groups: participants 1-3 in group 0, 4-5 in group 1; 6 is not grouped.
MATRIX = """\
participant,group-id,n-comments,n-votes,n-agree,n-disagree,10,11,12,13,14
1,0,0,5,0,0,1,1,1,1,1
2,0,0,4,0,0,1,-1,1,0,
3,0,0,2,0,0,0,1,,,
4,1,0,3,0,0,1,1,-1,,
5,1,0,2,0,0,-1,,1,,
6,,0,1,0,0,1,,,,
"""


def write_export(folder: Path, *, votes: str | None = None, comments: str = COMMENTS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "comments.csv").write_text(comments)
    (folder / "participants-votes.csv").write_text(MATRIX)
    if votes is not None:
        (folder / "votes.csv").write_text(votes)
    (folder / "summary.csv").write_text(
        "topic,How should an assistant talk?\nurl,https://pol.is/tiny\n"
    )
    return folder


def test_consensus_equals_a_hand_computation(tmp_path: Path) -> None:
    a = analyse(read_export(write_export(tmp_path / "x")), top=10)
    by_id = {s.comment.id: s for s in a.statements}
    # Comment 10: group 0 votes agree, agree, pass (2 agrees of 3 votes: passes count);
    # group 1 agree, disagree (1 of 2); participant 6 has no group and counts only in totals.
    assert math.isclose(by_id["10"].consensus, (1 + 2) / (2 + 3) * (1 + 1) / (2 + 2))
    assert (by_id["10"].total.agrees, by_id["10"].total.disagrees) == (4, 1)
    assert by_id["10"].total.passes == 1
    # Comment 11: group 0 agree, disagree, agree; group 1 agree, (5 did not see it).
    assert math.isclose(by_id["11"].consensus, (1 + 2) / (2 + 3) * (1 + 1) / (2 + 1))
    assert by_id["11"].groups["1"].agree_share == 1.0
    assert by_id["10"].groups["0"].agree_share == pytest.approx(2 / 3)
    assert consensus([Counts(0, 0, 0), Counts(0, 0, 0)]) == 0.25


def test_no_shipped_export_carries_polis_own_consensus() -> None:
    """Newer Polis exports carry group-informed-consensus; none of the shipped ones does, so
    the value is checked against the hand computation above. This test says so, and fails
    when an export with it arrives (then compare with it)."""
    if not CONVERSATIONS:
        pytest.skip(f"shared data not present: {POLIS}")
    headers = [
        (p / name).read_text().splitlines()[0]
        for p in CONVERSATIONS
        for name in ("comments.csv", "summary.csv")
    ]
    assert not any("consensus" in h and "informed" in h for h in headers)


def test_filters_duplicates_and_selection(tmp_path: Path) -> None:
    export = read_export(write_export(tmp_path / "x"))
    a = analyse(export, top=10)
    status = {s.comment.id: s.status for s in a.statements}
    assert status["14"] == "rejected" and status["13"] == "unmoderated"
    # 11 and 12 differ in case and punctuation only: the one with more consensus stays.
    kept = {s.comment.id: s for s in a.kept}
    assert set(kept) == {"10", "11"} and status["12"] == "duplicate"
    assert kept["11"].comment_ids == ("11", "12")
    assert [s.comment.id for s in a.kept] == ["11", "10"]  # by consensus
    assert "13" in {s.comment.id for s in analyse(export, include_unmoderated=True).kept}
    assert [s.comment.id for s in analyse(export, top=1).kept] == ["11"]
    assert [s.comment.id for s in analyse(export, min_consensus=0.35).kept] == ["11"]
    # --exclude 1 and --min-votes 3 leave participants 2 and 4 (and their groups)
    few = analyse(export, exclude={"1"}, min_votes=3)
    assert (few.participants, few.excluded, few.too_few_votes) == (2, 1, 3)
    assert few.groups == {"0": 1, "1": 1}


def test_votes_csv_latest_vote_counts_whatever_the_timestamp_unit(tmp_path: Path) -> None:
    votes = """\
timestamp,datetime,comment-id,voter-id,vote
1500000000000,x,10,7,1
1500000001,x,10,7,-1
1500000000500,x,11,7,1
1500000000500,x,11,7,0
"""
    export = read_export(write_export(tmp_path / "x", votes=votes))
    # 1500000001 s is a second after 1500000000000 ms: the disagree counts; a tie goes to
    # the later row
    assert export.votes == {"7": {"10": -1, "11": 0}}


@pytest.mark.parametrize("conversation", CONVERSATIONS, ids=lambda p: p.name)
def test_votes_csv_and_the_matrix_agree_on_real_exports(conversation: Path) -> None:
    """The latest vote per participant and comment in votes.csv is the export's own matrix
    (participants-votes.csv): read either way, the votes are the same."""
    from_log = read_export([conversation / "comments.csv", conversation / "votes.csv"])
    from_matrix = read_export(
        [conversation / "comments.csv", conversation / "participants-votes.csv"]
    )
    assert from_log.votes == from_matrix.votes


def test_every_shipped_conversation_makes_a_constitution(tmp_path: Path) -> None:
    if not CONVERSATIONS:
        pytest.skip(f"shared data not present: {POLIS}")
    for conversation in CONVERSATIONS:
        out = tmp_path / f"{conversation.name}.yaml"
        result = from_polis(FromPolisOptions(export=[str(conversation)], output=out, top=5))
        c = load_constitution(out)
        assert len(c.principles) == 5 and c.hash == result.constitution.hash
        first = c.principles[0].provenance
        assert first is not None and first.source.startswith("https://pol.is/")
        statements = result.analysis.statements
        assert first.consensus == round(max(s.consensus for s in result.analysis.kept), 6)
        assert all(s.comment.moderated == 1 for s in result.analysis.kept)
        assert len(statements) == len(result.export.comments)
        assert "compdemocracy.org/polis" in c.description


def test_regrouping_is_deterministic() -> None:
    export = read_export(EXAMPLE)
    runs = [analyse(export, regroup_votes=True, seed=3, top=3) for _ in range(2)]
    assert runs[0].regrouped and 2 <= len(runs[0].groups) <= 5
    assert sum(runs[0].groups.values()) == runs[0].participants
    assert runs[0].groups == runs[1].groups and runs[0].silhouette == runs[1].silhouette
    assert [s.consensus for s in runs[0].statements] == [s.consensus for s in runs[1].statements]
    # the groups are recomputed, not the export's (3 groups of 3, 18 and 3)
    assert runs[0].groups != analyse(export).groups


def test_an_export_without_groups_is_regrouped(tmp_path: Path) -> None:
    folder = tmp_path / "x"
    folder.mkdir()
    (folder / "comments.csv").write_text((EXAMPLE / "comments.csv").read_text())
    (folder / "votes.csv").write_text((EXAMPLE / "votes.csv").read_text())
    a = analyse(read_export(folder), seed=0)
    assert a.regrouped and len(a.groups) >= 2


MALFORMED = [
    (
        "votes.csv",
        "timestamp,datetime,comment-id,voter-id,vote\n1,x,10,1,1\n2,x,10,2,yes\n",
        3,
        "vote",
    ),
    ("votes.csv", "timestamp,datetime,comment-id,voter-id,vote\n1,x,99,1,1\n", 2, "comment-id"),
    ("votes.csv", "timestamp,datetime,comment-id,vote\n", 1, "voter-id"),
    ("votes.csv", "timestamp,datetime,comment-id,voter-id,vote\nsoon,x,10,1,1\n", 2, "timestamp"),
    ("comments.csv", COMMENTS + "1,x,15,1,0,0,1\n", 7, "fields"),
    ("comments.csv", COMMENTS.replace(",10,1,0,0,1,", ",ten,1,0,0,1,"), 2, "comment-id"),
    ("comments.csv", COMMENTS.replace(",0,0,-1,", ",0,0,2,"), 6, "moderated"),
    ("comments.csv", COMMENTS + '1,x,15,1,0,0,1,"unterminated\n', 7, "CSV"),
    (
        "participants-votes.csv",
        MATRIX.replace("1,0,0,5,0,0,1,1,1,1,1", "1,0,0,5,0,0,1,1,2,1,1"),
        2,
        "column 12",
    ),
    ("participants-votes.csv", MATRIX.replace(",14\n", ",14,99\n", 1), 1, "99"),
]


@pytest.mark.parametrize(("name", "text", "line", "field"), MALFORMED)
def test_a_malformed_export_names_file_line_and_field(
    tmp_path: Path, name: str, text: str, line: int, field: str
) -> None:
    folder = write_export(tmp_path / "x", votes="timestamp,datetime,comment-id,voter-id,vote\n")
    (folder / name).write_text(text)
    with pytest.raises(InputError) as e:
        read_export(folder)
    message = str(e.value)
    assert message.startswith(f"{folder / name}:{line}:"), message
    assert field in message and "\n" not in message


def test_cli_error_is_one_line_without_traceback(tmp_path: Path) -> None:
    folder = write_export(tmp_path / "x")
    (folder / "participants-votes.csv").write_text(MATRIX.replace("3,0,0,2", "3,0,0,2,0"))
    r = run_cli("constitution", "from-polis", str(folder), "-o", str(tmp_path / "c.yaml"))
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert r.stderr.strip() == (
        f"error: {folder / 'participants-votes.csv'}:4: 12 fields, the header has 11"
    )
    from typer.testing import CliRunner

    from charter.cli import app

    missing = CliRunner().invoke(
        app, ["constitution", "from-polis", str(tmp_path), "-o", str(tmp_path / "c.yaml")]
    )
    assert missing.exit_code != 0 and "no comments.csv" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1 and not (tmp_path / "c.yaml").exists()
    assert missing.exception is None or isinstance(missing.exception, SystemExit)


def test_cli_output_validates_and_labels_with_the_mock_judge(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from charter.cli import app

    runner = CliRunner()
    out = tmp_path / "policing.yaml"
    r = runner.invoke(
        app,
        [
            "constitution", "from-polis", str(EXAMPLE), "-o", str(out), "--top", "3",
            "--exclude", "5,6", "--attribution", "CC BY 4.0, The Computational Democracy Project.",
        ],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "3 principles" in r.stderr and "excluded 2" in r.stderr
    text = out.read_text()
    assert text.startswith("# Made by charter constitution from-polis")
    assert "CC BY 4.0, The Computational Democracy Project." in yaml.safe_load(text)["description"]
    ok = runner.invoke(app, ["constitution", "validate", str(out)])
    assert ok.exit_code == 0 and "3 principles" in ok.stdout, ok.output
    shown = runner.invoke(app, ["constitution", "show", str(out)])
    # participants 5 and 6 excluded: of the rest, 19 agree with statement 17 and 1 passes
    assert "statement 17: 19 agree, 0 disagree, 1 pass; group-informed consensus" in shown.stdout
    labels = tmp_path / "labels.jsonl"
    lab = runner.invoke(
        app,
        [
            "label", str(ROOT / "examples" / "preference-pairs.jsonl"), "-o", str(labels),
            "-j", "mock/x", "--constitution", str(out), "-q",
        ],
    )  # fmt: skip
    assert lab.exit_code == 0, lab.output
    rows = [json.loads(line) for line in labels.read_text().splitlines()]
    used = {pid for row in rows for pid in row["principles"]}
    assert len(rows) == 16 and used and used <= {p.id for p in load_constitution(out).principles}
    assert (tmp_path / "policing.report" / "report.html").exists()


def test_the_report_escapes_statements_and_shows_group_support(tmp_path: Path) -> None:
    hostile = COMMENTS.replace(
        "Explain the reasons behind an answer.", "<script>alert(1)</script> Explain reasons."
    )
    folder = write_export(tmp_path / "x", comments=hostile)
    result = from_polis(FromPolisOptions(export=[str(folder)], output=tmp_path / "c.yaml"))
    html = result.report.read_text()
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    left_out = html.split('id="left-out"')[1]
    assert "rejected in moderation" in left_out and "near-duplicate" in left_out
    assert "Buy my product." in left_out
    assert "67% <span" in html.split('id="kept"')[1]  # group 0's agree share on comment 10


def _rewriter(messages: list[dict[str, Any]], body: dict[str, Any]) -> str:
    prompt = messages[-1]["content"]
    statement = re.search(r'Statement: "(.*)"', prompt)
    assert statement is not None
    if "mock" in statement.group(1):
        return "I would rather not."  # unreadable: the template is used, and the report says
    s = statement.group(1)
    return json.dumps(
        {
            "critique_request": f"Where does the answer fail to {s.lower()}",
            "revision_request": f"Revise the answer to {s.lower()}",
            "comparison_question": f"Which answer does better at this: {s}",
        }
    )


def test_rewrite_with_a_model_is_cached_and_resumable(tmp_path: Path) -> None:
    folder = write_export(tmp_path / "x")
    with FakeOpenAIServer(responder=_rewriter) as srv:
        opts = FromPolisOptions(
            export=[str(folder)],
            output=tmp_path / "c.yaml",
            rewrite_with="openai/fake",
            base_url=srv.base_url,
            retries=0,
        )
        first = from_polis(opts)
        assert first.requests == 2 and len(srv.requests) == 2
        again = from_polis(opts)
        assert len(srv.requests) == 2 and again.cache_hits == 2  # all from the cache
    assert srv.requests[0]["seed"] == 0 and srv.requests[0]["temperature"] == 0
    c = load_constitution(tmp_path / "c.yaml")
    by_id = {p.id: p for p in c.principles}
    assert by_id["polis-10"].revision_request == (
        "Revise the answer to explain the reasons behind an answer."
    )
    assert by_id["polis-10"].statement == "Explain the reasons behind an answer."
    # the unreadable reply: the template, with the reason in the report
    assert by_id["polis-11"].comparison_question.startswith("Which answer is more in keeping")
    assert "rewrite failed" in first.report.read_text()
    assert first.rewrites["11"].error == "no JSON object in the reply"


def test_old_constitutions_keep_their_hash_and_provenance_is_optional(tmp_path: Path) -> None:
    plain = load_constitution("harmless")
    data = plain.model_dump(mode="json", exclude={"principles": {"__all__": {"provenance"}}})
    (tmp_path / "h.json").write_text(json.dumps(data))
    assert load_constitution(tmp_path / "h.json").hash == plain.hash
    assert "provenance" not in json.dumps(plain.model_dump(mode="json", exclude_none=True))
    data["principles"][0]["provenance"] = {
        "comment_ids": ["1"],
        "text": "t",
        "agrees": 1,
        "disagrees": 0,
        "passes": 0,
        "consensus": 2,
    }
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(ConstitutionError, match=r"principles\[0\]\.provenance\.consensus"):
        load_constitution(tmp_path / "bad.json")


def test_the_docs_walkthrough_shows_real_output(tmp_path: Path) -> None:
    """docs/constitutions.md shows an excerpt of the command's output on the shipped example:
    the excerpt must be what the command writes."""
    page = (ROOT / "docs" / "constitutions.md").read_text()
    section = page.split("## From public input: Polis", 1)[1]
    shown = yaml.safe_load(re.findall(r"```yaml\n(.*?)```", section, re.S)[0])
    from typer.testing import CliRunner

    from charter.cli import app

    out = tmp_path / "policing.yaml"
    attribution = shown["description"].rsplit("compdemocracy.org/polis). ", 1)[1]
    command = ["constitution", "from-polis", str(EXAMPLE), "-o", str(out), "--top", "5"]
    r = CliRunner().invoke(app, [*command, "--attribution", attribution])
    assert r.exit_code == 0, r.output
    made = yaml.safe_load(out.read_text())
    assert shown["name"] == made["name"] and shown["description"] == made["description"]
    assert shown["principles"][0] == made["principles"][0]


def _same_as(messages: list[dict[str, Any]], body: dict[str, Any]) -> str:
    """A judge of restatements: 'Use plain words.' restates the first chosen statement."""
    prompt = messages[-1]["content"]
    new = re.search(r'New statement: "(.*)"', prompt)
    assert new is not None and '1. "' in prompt
    return {"Use plain words.": "1", "Explain the reasons behind an answer.": "maybe"}.get(
        new.group(1), "0"
    )


def test_dedupe_model_merges_restatements_and_keeps_unreadable_replies_apart(
    tmp_path: Path,
) -> None:
    folder = write_export(tmp_path / "x")
    with FakeOpenAIServer(responder=_same_as) as srv:
        opts = FromPolisOptions(
            export=[str(folder)],
            output=tmp_path / "c.yaml",
            include_unmoderated=True,
            dedupe_model="openai/fake",
            base_url=srv.base_url,
            retries=0,
        )
        result = from_polis(opts)
        # 11 is first (nothing to compare); 10 and 13 are each asked about what is kept
        assert len(srv.requests) == 2 and result.requests == 2
        assert from_polis(opts).cache_hits == 2 and len(srv.requests) == 2
    status = {s.comment.id: s for s in result.analysis.statements}
    assert status["13"].status == "duplicate" and status["13"].duplicate_of == "11"
    assert status["11"].comment_ids == ("11", "12", "13")  # by text, then by the model
    assert status["10"].status == "kept"  # "maybe": unreadable, kept apart, and noted
    assert result.notes == ("statement 10: not a number: 'maybe'",)
    assert "(kept apart)" in result.report.read_text()
    c = load_constitution(tmp_path / "c.yaml")
    assert [p.id for p in c.principles] == ["polis-11", "polis-10"]
    provenance = c.principles[0].provenance
    assert provenance is not None and provenance.comment_ids == ("11", "12", "13")


def test_a_model_that_echoes_the_prompt_changes_nothing(tmp_path: Path) -> None:
    """The mock backend answers by quoting the prompt: neither prompt may read as an answer
    (a parser that matched its own template would take the echo for one)."""
    folder = write_export(tmp_path / "x")
    plain = from_polis(FromPolisOptions(export=[str(folder)], output=tmp_path / "plain.yaml"))
    opts = FromPolisOptions(
        export=[str(folder)],
        output=tmp_path / "echo.yaml",
        include_unmoderated=True,
        rewrite_with="mock/echo",
        dedupe_model="mock/echo",
    )
    echoed = from_polis(opts)
    assert echoed.requests == 5  # 10 and 13 compared with what is kept, 3 rewrites
    assert len(echoed.notes) == 2 and all(r.error for r in echoed.rewrites.values())
    kept = {p.id: p for p in echoed.constitution.principles}
    assert set(kept) == {"polis-10", "polis-11", "polis-13"}
    for p in plain.constitution.principles:
        assert kept[p.id].critique_request == p.critique_request
