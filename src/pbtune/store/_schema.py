"""The SQL schema of the population store. Bump SCHEMA_VERSION with every change."""

from __future__ import annotations

import math
from typing import Any

from sqlalchemy import (
    JSON,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
)

SCHEMA_VERSION = 4  # 2: exploit events record the donor checkpoint copied and the copy made
# 3: members keep their recent scores (smoothed ranking, PB2); checkpoints indexed by member
# 4: members keep their lineage (root ancestor), for the lineage-share guard

_NON_FINITE_IN = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def _finite_json(value: Any) -> Any:
    """Non-finite floats as the strings of the wire format: JSON has no NaN/Infinity
    (PostgreSQL rejects them; SQLite's json functions would too)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {k: _finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_json(v) for v in value]
    return value


def _floats_back(value: Any) -> Any:
    if isinstance(value, str):
        return _NON_FINITE_IN.get(value, value)
    if isinstance(value, dict):
        return {k: _floats_back(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_floats_back(v) for v in value]
    return value


class JSONFloats(TypeDecorator[Any]):
    """JSON that keeps NaN and infinities (stored as ``"NaN"``, ``"Infinity"``, ``"-Infinity"``,
    read back as floats). The column is plain JSON: no schema change."""

    impl = JSON
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> Any:
        return None if value is None else _finite_json(value)

    def process_result_value(self, value: Any, dialect: Any) -> Any:
        return None if value is None else _floats_back(value)


metadata = MetaData()

meta = Table(
    "pbtune_meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", String(256), nullable=False),
)

runs = Table(
    "pbtune_runs",
    metadata,
    Column("name", String(200), primary_key=True),
    Column("config", JSONFloats, nullable=False),
    Column("created", Float, nullable=False),
)

members = Table(
    "pbtune_members",
    metadata,
    Column("run", String(200), primary_key=True),
    Column("member_id", Integer, primary_key=True, autoincrement=False),
    Column("state", String(16), nullable=False),
    Column("step", Integer, nullable=False, default=0),
    Column("hparams", JSONFloats, nullable=False),
    Column("score", Float),  # SQLite stores NaN as NULL: score_step tells NaN from "no score"
    Column("score_step", Integer),
    Column("checkpoint", String(500)),
    Column("checkpoint_step", Integer),
    Column("checkpoint_sha256", String(64)),
    Column("last_ready_step", Integer, nullable=False, default=0),
    Column("version", Integer, nullable=False, default=0),
    Column("lease_owner", String(200)),
    Column("lease_expires", Float),
    Column("error", Text),
    Column("updated", Float, nullable=False),
    Column("recent", JSON),  # the last RECENT_SCORES [step, score] reports, non-finite scores as null (v3)
    Column("lineage", Integer),  # the root ancestor's member_id (v4); NULL reads as the member's own id
)

scores = Table(
    "pbtune_scores",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run", String(200), nullable=False),
    Column("member_id", Integer, nullable=False),
    Column("step", Integer, nullable=False),
    Column("score", Float),
    Column("metrics", JSONFloats),
    Column("time", Float, nullable=False),
    Index("ix_pbtune_scores_run_member", "run", "member_id"),
)

events = Table(
    "pbtune_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run", String(200), nullable=False),
    Column("member_id", Integer, nullable=False),
    Column("step", Integer, nullable=False),
    Column("kind", String(16), nullable=False),
    Column("donor_id", Integer),
    Column("donor_step", Integer),
    Column("donor_checkpoint", String(500)),  # the key copied (v2)
    Column("checkpoint", String(500)),  # the copy this member made of it (v2)
    Column("old_hparams", JSONFloats),
    Column("new_hparams", JSONFloats),
    Column("summary", Text, nullable=False, default=""),
    Column("time", Float, nullable=False),
    Index("ix_pbtune_events_run_member", "run", "member_id"),
)

checkpoints = Table(
    "pbtune_checkpoints",
    metadata,
    Column("run", String(200), primary_key=True),
    Column("key", String(500), primary_key=True),
    Column("member_id", Integer, nullable=False),
    Column("step", Integer, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("size", Integer, nullable=False),
    Column("created", Float, nullable=False),
    Index("ix_pbtune_checkpoints_run_member", "run", "member_id"),  # v3
)

pins = Table(
    "pbtune_pins",
    metadata,
    Column("run", String(200), primary_key=True),
    Column("key", String(500), primary_key=True),
    Column("holder", String(200), primary_key=True),
    Column("expires", Float, nullable=False),
)
