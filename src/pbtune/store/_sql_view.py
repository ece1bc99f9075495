"""A strategy's view of the population answered in SQL: a rank COUNT and a top-k SELECT.

A ready point then reads one aggregate row (and, for a member in the bottom tail, the top
few rows) instead of decoding every member. The order is :func:`pbtune.ranking.ranked`'s:
scored members (``score_step`` set), finite scores first by score, then non-finite ones
(NaN is stored as NULL), ties by member id. Failed members are not in the view.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from pbtune.store import _schema as s
from pbtune.types import MemberRecord, MemberState

if TYPE_CHECKING:
    from pbtune.store._sql_base import SQLBase

__all__ = ["SQLView"]

_c = s.members.c
_BIG = sys.float_info.max
_in_view = sa.and_(_c.run == sa.bindparam("run"), _c.state != MemberState.FAILED.value)
_scored = sa.and_(_in_view, _c.score_step.is_not(None))
_finite = sa.and_(_c.score.is_not(None), _c.score >= -_BIG, _c.score <= _BIG)  # not NaN (NULL) nor +-inf
_sort_score = sa.case((_finite, _c.score), else_=0.0)  # non-finite scores tie, then go by member id


def _before(mode: str) -> Any:
    """Rows ranked ahead of the subject (bound as :score, :finite, :member_id)."""
    score, subject = sa.bindparam("score", type_=sa.Float), sa.bindparam("member_id", type_=sa.Integer)
    better = _c.score > score if mode == "max" else _c.score < score
    ahead_of_finite = sa.and_(_finite, sa.or_(better, sa.and_(_c.score == score, _c.member_id < subject)))
    ahead_of_non_finite = sa.or_(_finite, _c.member_id < subject)
    return sa.case((sa.bindparam("finite", type_=sa.Boolean), ahead_of_finite), else_=ahead_of_non_finite)


def _rank(mode: str) -> Any:
    ahead = sa.func.coalesce(sa.func.sum(sa.case((_before(mode), 1), else_=0)), 0)
    return sa.select(sa.func.count(), ahead).where(_scored)


def _top(mode: str) -> Any:
    by_score = _sort_score.desc() if mode == "max" else _sort_score.asc()
    order = (sa.case((_finite, 0), else_=1), by_score, _c.member_id)
    return sa.select(s.members).where(_scored).order_by(*order).limit(sa.bindparam("k"))


# Built once: constructing SQLAlchemy expressions costs more than running them on SQLite.
_RANK = {mode: _rank(mode) for mode in ("max", "min")}
_TOP = {mode: _top(mode) for mode in ("max", "min")}
_IDS = sa.select(_c.member_id).where(_in_view).order_by(_c.member_id)
_ONE = sa.select(s.members).where(_in_view, _c.member_id == sa.bindparam("member_id"))
_root = sa.func.coalesce(_c.lineage, _c.member_id)  # NULL: the member's own id
_LINEAGES = sa.select(_root, sa.func.count()).where(_in_view).group_by(_root).order_by(_root)


class SQLView:
    """A :class:`~pbtune.strategies.PopulationView` over one run of a SQL store.

    Each question is one statement through the store's transaction (inside ``store.batch``,
    the batch's own), so a ready point decides and writes in one transaction. ``known``
    records (the deciding member, just written) are not read again.
    """

    def __init__(self, store: SQLBase, run: str, mode: str, known: tuple[MemberRecord, ...] = ()) -> None:
        self.mode = mode
        self._store = store
        self._run = run
        self._known = {m.member_id: m for m in known if m.state is not MemberState.FAILED}
        self._ranks: dict[int, tuple[int, int | None]] = {}
        self._count: int | None = None

    def _read(self, body: Any) -> Any:
        return self._store._transaction(body, read_only=True)

    def member(self, member_id: int) -> MemberRecord:
        if member_id not in self._known:
            row = self._read(lambda conn: conn.execute(_ONE, {"run": self._run, "member_id": member_id}).first())
            if row is None:
                raise KeyError(f"member {member_id} is not in the population of run {self._run!r}")
            self._known[member_id] = self._store._member_from_row(row)
        return self._known[member_id]

    def scored_count(self) -> int:
        if self._count is None:
            if self._known:  # one statement answers the count and a known member's place
                self.position(next(iter(self._known)))
            else:
                self._count = self._read(lambda conn: conn.execute(_RANK[self.mode], self._bind(None)).one()[0])
        assert self._count is not None
        return self._count

    def position(self, member_id: int) -> int | None:
        if member_id not in self._ranks:
            me = self.member(member_id)

            def body(conn: Connection) -> tuple[int, int]:
                count, ahead = conn.execute(_RANK[self.mode], self._bind(me)).one()
                return int(count), int(ahead)

            count, ahead = self._read(body)
            self._count = count
            self._ranks[member_id] = (count, ahead if me.score is not None else None)
        return self._ranks[member_id][1]

    def top(self, k: int) -> list[MemberRecord]:
        def body(conn: Connection) -> list[MemberRecord]:
            rows = conn.execute(_TOP[self.mode], {"run": self._run, "k": k})
            return [self._store._member_from_row(r) for r in rows]

        found: list[MemberRecord] = self._read(body)
        self._known.update((m.member_id, m) for m in found)
        return found

    def ids(self) -> list[int]:
        return list(self._read(lambda conn: list(conn.execute(_IDS, {"run": self._run}).scalars())))

    def lineage_sizes(self) -> dict[int, int]:
        rows = self._read(lambda conn: list(conn.execute(_LINEAGES, {"run": self._run})))
        return {int(lineage): int(count) for lineage, count in rows}

    def _bind(self, me: MemberRecord | None) -> dict[str, Any]:
        score = me.score if me is not None else None
        finite = score is not None and -_BIG <= score <= _BIG
        return {"run": self._run, "score": score if finite else 0.0, "finite": finite,
                "member_id": me.member_id if me is not None else -1}
