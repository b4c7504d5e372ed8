"""From a Polis export to ranked statements: who counts (moderation, vote counts, an
exclusion list), the opinion groups (the export's, or recomputed), each statement's
group-informed consensus, near-duplicates merged, and which statements are kept."""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Literal

from charter.errors import ConfigError, InputError
from charter.polis.export import Comment, PolisExport

MAX_GROUPS = 5
"""Regrouping tries 2 to this many groups (Polis shows at most 5)."""


@dataclass
class Counts:
    """Votes on one statement."""

    agrees: int = 0
    disagrees: int = 0
    passes: int = 0

    @property
    def votes(self) -> int:
        return self.agrees + self.disagrees + self.passes

    @property
    def agree_share(self) -> float | None:
        """Agrees among all votes, passes included (None without votes)."""
        return self.agrees / self.votes if self.votes else None

    def add(self, vote: int) -> None:
        if vote > 0:
            self.agrees += 1
        elif vote < 0:
            self.disagrees += 1
        else:
            self.passes += 1


Status = Literal["kept", "rejected", "unmoderated", "duplicate", "below-consensus", "beyond-top"]


@dataclass
class Statement:
    """One statement with its support, and whether it was kept (else why not)."""

    comment: Comment
    total: Counts
    groups: dict[str, Counts]
    consensus: float
    status: Status = "kept"
    duplicates: list[str] = field(default_factory=list)
    """Ids of near-duplicates merged into this statement."""
    duplicate_of: str | None = None

    @property
    def comment_ids(self) -> tuple[str, ...]:
        return (self.comment.id, *self.duplicates)


@dataclass
class Analysis:
    """What from-polis found in an export."""

    statements: list[Statement]
    """Every statement, the kept ones first, by consensus."""
    participants: int
    """Participants whose votes count (after --min-votes and --exclude)."""
    excluded: int
    """Participants dropped by --exclude."""
    too_few_votes: int
    """Participants dropped by --min-votes."""
    groups: dict[str, int]
    """Group id -> participants in it (among those who count)."""
    regrouped: bool
    """Whether the groups were recomputed (else: the export's)."""
    silhouette: float | None = None
    """The chosen grouping's silhouette score, when recomputed."""

    @property
    def kept(self) -> list[Statement]:
        return [s for s in self.statements if s.status == "kept"]


def consensus(groups: Collection[Counts]) -> float:
    """Group-informed consensus as Polis computes it: the product over opinion groups of
    (1 + agrees) / (2 + votes), passes counted as votes. High only when every group agrees."""
    value = 1.0
    for g in groups:
        value *= (1 + g.agrees) / (2 + g.votes)
    return value


def normalised(text: str) -> str:
    """The text compared for near-duplicates: case, punctuation and spacing ignored."""
    return " ".join(re.sub(r"[\W_]+", " ", text.casefold()).split())


def participants_kept(
    export: PolisExport, *, min_votes: int, exclude: Collection[str]
) -> tuple[list[str], int, int]:
    """(participants whose votes count, in id order; how many --exclude dropped; how many
    had fewer than ``min_votes`` votes). ``exclude`` matches participant ids or xids."""
    wanted = set(exclude)
    kept: list[str] = []
    excluded = too_few = 0
    for pid in sorted(export.votes, key=int):
        if pid in wanted or export.xids.get(pid, "\0") in wanted:
            excluded += 1
        elif len(export.votes[pid]) < min_votes:
            too_few += 1
        else:
            kept.append(pid)
    return kept, excluded, too_few


def regroup(
    export: PolisExport, participants: list[str], comment_ids: list[str], seed: int
) -> tuple[dict[str, str], float]:
    """Opinion groups recomputed as Polis does, in outline: the participants' votes (a
    statement someone did not see counts as the statement's mean vote) projected on two
    principal components, then k-means for k from 2 to 5, keeping the k with the best
    silhouette. Groups are numbered by size, largest first. Returns (participant -> group,
    silhouette)."""
    try:
        import numpy as np
        from sklearn.cluster import KMeans
        from sklearn.decomposition import PCA
        from sklearn.metrics import silhouette_score
        from threadpoolctl import threadpool_limits
    except ImportError as e:
        raise ConfigError(
            "regrouping (--regroup, or an export without group-id) needs scikit-learn: "
            "pip install 'charter[polis]'"
        ) from e
    if len(participants) < 3 or not comment_ids:
        raise InputError(
            f"cannot regroup {len(participants)} participants on {len(comment_ids)} "
            "statements: at least 3 participants and 1 statement are needed"
        )
    column = {cid: j for j, cid in enumerate(comment_ids)}
    matrix = np.full((len(participants), len(comment_ids)), np.nan)
    for i, pid in enumerate(participants):
        for cid, vote in export.votes[pid].items():
            if cid in column:
                matrix[i, column[cid]] = vote
    seen = ~np.isnan(matrix)
    sums = np.where(seen, matrix, 0.0).sum(axis=0)
    means = np.divide(sums, seen.sum(axis=0), out=np.zeros(len(comment_ids)), where=seen.any(0))
    matrix = np.where(seen, matrix, means)
    components = min(2, *matrix.shape)
    best: tuple[float, list[int]] | None = None
    # One thread: on points this few, OpenMP's threads cost seconds on a busy machine, and
    # the result cannot depend on how many there were.
    with threadpool_limits(1):
        points = PCA(n_components=components, svd_solver="full").fit_transform(matrix)
        distinct = len(np.unique(points.round(12), axis=0))
        for k in range(2, min(MAX_GROUPS, distinct - 1) + 1):
            labels = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(points)
            score = float(silhouette_score(points, labels))
            if best is None or score > best[0] + 1e-12:
                best = (score, [int(x) for x in labels])
    if best is None:
        raise InputError(
            f"cannot regroup: the {len(participants)} participants voted too alike to form 2 groups"
        )
    score, labels = best
    members: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        members.setdefault(label, []).append(i)
    order = sorted(members, key=lambda lab: (-len(members[lab]), members[lab][0]))
    number = {label: str(n) for n, label in enumerate(order)}
    return {pid: number[labels[i]] for i, pid in enumerate(participants)}, score


def rank(s: Statement) -> tuple[float, int]:
    """Highest consensus first; equal consensus in comment id order."""
    return (-s.consensus, int(s.comment.id))


CANDIDATE: tuple[Status, ...] = ("kept", "below-consensus", "beyond-top")
"""Statuses of the statements that are eligible and not merged into another."""


def choose(statements: list[Statement], *, min_consensus: float | None, top: int | None) -> None:
    """Mark the candidates kept, in rank order, while they have at least ``min_consensus``
    and ``top`` is not reached; then sort the kept ones first."""
    statements.sort(key=rank)
    kept = 0
    for s in statements:
        if s.status not in CANDIDATE:
            continue
        if min_consensus is not None and s.consensus < min_consensus:
            s.status = "below-consensus"
        elif top is not None and kept >= top:
            s.status = "beyond-top"
        else:
            s.status = "kept"
            kept += 1
    statements.sort(key=lambda s: (s.status != "kept", *rank(s)))


def analyse(
    export: PolisExport,
    *,
    include_unmoderated: bool = False,
    min_votes: int = 0,
    exclude: Collection[str] = (),
    regroup_votes: bool = False,
    seed: int = 0,
    min_consensus: float | None = None,
    top: int | None = None,
) -> Analysis:
    """Rank the export's statements by group-informed consensus and choose those kept:
    accepted (and, with ``include_unmoderated``, unmoderated) statements, near-duplicates
    merged, at least ``min_consensus``, at most ``top``. Without groups in the export the
    groups are recomputed (``regroup_votes`` forces it)."""
    participants, excluded, too_few = participants_kept(
        export, min_votes=min_votes, exclude=exclude
    )
    allowed = {1, 0} if include_unmoderated else {1}
    eligible = [c.id for c in export.comments.values() if c.moderated in allowed]
    groups_of = {p: export.groups[p] for p in participants if p in export.groups}
    silhouette = None
    regrouped = regroup_votes or not groups_of
    if regrouped:
        groups_of, silhouette = regroup(export, participants, eligible, seed)
    group_ids = sorted(set(groups_of.values()), key=int)

    statements: list[Statement] = []
    for comment in export.comments.values():
        total = Counts()
        by_group = {g: Counts() for g in group_ids}
        for pid in participants:
            vote = export.votes[pid].get(comment.id)
            if vote is None:
                continue
            total.add(vote)
            if pid in groups_of:
                by_group[groups_of[pid]].add(vote)
        status: Status = (
            "kept"
            if comment.moderated in allowed
            else ("rejected" if comment.moderated < 0 else "unmoderated")
        )
        statements.append(Statement(comment, total, by_group, consensus(by_group.values()), status))

    statements.sort(key=rank)
    first: dict[str, Statement] = {}
    for s in statements:
        if s.status != "kept":
            continue
        key = normalised(s.comment.text)
        if key in first:
            s.status, s.duplicate_of = "duplicate", first[key].comment.id
            first[key].duplicates.append(s.comment.id)
        else:
            first[key] = s
    choose(statements, min_consensus=min_consensus, top=top)
    sizes = {g: 0 for g in group_ids}
    for g in groups_of.values():
        sizes[g] += 1
    return Analysis(
        statements=statements,
        participants=len(participants),
        excluded=excluded,
        too_few_votes=too_few,
        groups=sizes,
        regrouped=regrouped,
        silhouette=silhouette,
    )
