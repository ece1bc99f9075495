"""`pbtune store upgrade`: versioned schema steps, transactional, over SQLite and PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from pbtune.cli import app
from pbtune.errors import SchemaVersionError, StoreError
from pbtune.scaleout.migrations import current_version, upgrade
from pbtune.store import SQLStore
from pbtune.store._schema import SCHEMA_VERSION


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/pbt.db"
    return str(request.getfixturevalue("pg_url"))


def _add_note_column(conn: sa.Connection) -> None:
    conn.execute(sa.text("ALTER TABLE pbtune_runs ADD COLUMN note TEXT"))


def _columns(url: str, table: str) -> set[str]:
    engine = sa.create_engine(url)
    try:
        return {c["name"] for c in sa.inspect(engine).get_columns(table)}
    finally:
        engine.dispose()


def test_upgrade_creates_an_empty_database_then_has_nothing_to_do(url: str) -> None:
    assert current_version(url) is None
    first = upgrade(url)
    assert (first.found, first.now, first.changed) == (None, SCHEMA_VERSION, True)
    assert current_version(url) == SCHEMA_VERSION
    SQLStore(url, create=False).create_run("after-upgrade", {})  # the store accepts it
    again = upgrade(url)
    assert (again.found, again.now, again.changed) == (SCHEMA_VERSION, SCHEMA_VERSION, False)


def test_steps_run_in_order_and_record_the_new_version(url: str) -> None:
    SQLStore(url).create_run("kept", {"x": 1})
    done = upgrade(url, target=SCHEMA_VERSION + 1, steps={SCHEMA_VERSION: _add_note_column})
    assert (done.found, done.now) == (SCHEMA_VERSION, SCHEMA_VERSION + 1)
    assert "note" in _columns(url, "pbtune_runs")
    assert current_version(url) == SCHEMA_VERSION + 1
    # this pbtune is now older than the database: a clear error, not a crash later
    with pytest.raises(SchemaVersionError, match=f"version {SCHEMA_VERSION + 1}"):
        SQLStore(url)
    with pytest.raises(SchemaVersionError, match="newer"):
        upgrade(url)


def test_a_failing_step_changes_nothing(url: str) -> None:
    SQLStore(url).create_run("kept", {})

    def broken(conn: sa.Connection) -> None:
        _add_note_column(conn)
        conn.execute(sa.text("SELECT no_such_column FROM pbtune_runs"))

    with pytest.raises(StoreError, match="nothing was changed"):
        upgrade(url, target=SCHEMA_VERSION + 1, steps={SCHEMA_VERSION: broken})
    assert current_version(url) == SCHEMA_VERSION
    assert "note" not in _columns(url, "pbtune_runs")  # the DDL was rolled back too
    assert [r.name for r in SQLStore(url).list_runs()] == ["kept"]


def test_a_missing_step_is_named(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/pbt.db"
    upgrade(url)
    with pytest.raises(SchemaVersionError, match=f"no migration from pbtune schema version {SCHEMA_VERSION}"):
        upgrade(url, target=SCHEMA_VERSION + 2, steps={})


def test_store_commands(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/cli.db"
    runner = CliRunner()
    created = runner.invoke(app, ["store", "upgrade", url])
    assert created.exit_code == 0, created.output
    assert f"created pbtune schema version {SCHEMA_VERSION}" in created.output
    again = runner.invoke(app, ["store", "upgrade", url])
    assert "already at version" in again.output
    version = runner.invoke(app, ["store", "version", url])
    assert json.loads(version.output) == {"database": SCHEMA_VERSION, "pbtune": SCHEMA_VERSION}
    with sa.create_engine(url).begin() as conn:  # a database from a newer pbtune
        conn.exec_driver_sql("UPDATE pbtune_meta SET value = '99' WHERE key = 'schema_version'")
    refused = runner.invoke(app, ["store", "upgrade", url])
    assert refused.exit_code == 2 and "newer" in refused.output


def _downgrade(url: str, version: int) -> None:
    """Turn a fresh database into what pbtune's schema ``version`` wrote."""
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        if version < 4:
            conn.exec_driver_sql("ALTER TABLE pbtune_members DROP COLUMN lineage")
        if version < 3:
            conn.exec_driver_sql("DROP INDEX ix_pbtune_checkpoints_run_member")
            conn.exec_driver_sql("ALTER TABLE pbtune_members DROP COLUMN recent")
        if version < 2:
            conn.exec_driver_sql("ALTER TABLE pbtune_events DROP COLUMN donor_checkpoint")
            conn.exec_driver_sql("ALTER TABLE pbtune_events DROP COLUMN checkpoint")
        conn.exec_driver_sql(f"UPDATE pbtune_meta SET value = '{version}' WHERE key = 'schema_version'")
    engine.dispose()


@pytest.mark.parametrize("version", [1, 2, 3])
def test_an_older_database_is_upgraded_to_the_current_version(tmp_path: Path, version: int) -> None:
    url = f"sqlite:///{tmp_path}/v{version}.db"
    store = SQLStore(url)
    store.create_run("r", {})
    store.add_member("r", 0, {"lr": 0.1})
    store.close()
    _downgrade(url, version)
    with pytest.raises(SchemaVersionError, match="pbtune store upgrade"):
        SQLStore(url)
    assert (upgrade(url).found, current_version(url)) == (version, SCHEMA_VERSION)
    reopened = SQLStore(url)
    (init,) = reopened.events("r")
    assert init.kind == "init" and init.donor_checkpoint is None and init.checkpoint is None
    assert reopened.get_member("r", 0).recent == ()  # members from before v3 start with no recent scores
    assert reopened.report("r", 0, 1, 0.5).recent == ((1, 0.5),)
    assert "recent" in _columns(url, "pbtune_members")
    assert reopened.get_member("r", 0).lineage == 0


def test_v3_members_get_the_lineage_their_exploit_events_lead_to(url: str) -> None:
    store = SQLStore(url)
    store.create_run("r", {})
    store.create_run("other", {})
    for i in range(4):
        store.add_member("r", i, {"lr": 0.1})
    store.add_member("other", 0, {})
    for i in range(3):
        store.report("r", i, 2, 0.5)

    def copy(member: int, donor: int, step: int) -> None:
        done = store.apply_exploit("r", member, expected_version=store.get_member("r", member).version,
                                   donor_id=donor, donor_step=step, hparams={"lr": 0.1}, checkpoint=None, summary="")
        assert done is not None

    copy(1, 0, 2)  # 1 joins 0's lineage
    copy(2, 1, 2)  # 2 copies 1 after that: 0's lineage too
    copy(0, 3, 2)  # then 0 copies 3: 0 is of 3's lineage, while 1 and 2 keep 0's
    expected = [m.lineage for m in store.list_members("r")]
    assert expected == [3, 0, 0, 3]
    store.close()
    _downgrade(url, 3)
    assert "lineage" not in _columns(url, "pbtune_members")
    assert upgrade(url).found == 3
    reopened = SQLStore(url)
    assert [m.lineage for m in reopened.list_members("r")] == expected  # what the store had kept
    assert reopened.get_member("other", 0).lineage == 0
    reopened.close()