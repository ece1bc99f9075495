"""Member ids: assigned free members, rejoining after a restart, a full population, space checks."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pbtune.errors import InvalidConfigError, LeaseLostError
from pbtune.server.client import PBTClient
from pbtune.server.errors import PopulationFullError, ServerError
from pbtune.server.runner import PBTServer
from pbtune.store import SQLStore


@pytest.fixture
def space_csv(tmp_path: Path) -> str:
    path = tmp_path / "space.csv"
    path.write_text("name,min,max,scale\nlr,1e-4,1e-1,log\nmomentum,0.5,0.99,linear\n")
    return str(path)


def test_clients_get_distinct_free_members_and_one_too_many_is_a_clear_error(
    start_server: Callable[..., PBTServer], connect: Callable[..., PBTClient], space_csv: str
) -> None:
    server = start_server(population=3)
    ids = {connect(server, space_csv).member_id for _ in range(3)}
    assert ids == {0, 1, 2}
    with pytest.raises(PopulationFullError, match="3 members") as caught:
        connect(server, space_csv)
    assert caught.value.status == 409


def test_first_client_creates_the_run_from_its_csv_space(
    start_server: Callable[..., PBTServer], connect: Callable[..., PBTClient], space_csv: str
) -> None:
    server = start_server(population=2, maximize_metric=False)
    client = connect(server, space_csv)
    assert set(client.hparams) == {"lr", "momentum"}
    assert 1e-4 <= client.hparams["lr"] <= 1e-1
    assert client.info["mode"] == "min"
    assert client.info["space"]["lr"] == {"type": "float", "low": 1e-4, "high": 1e-1, "log": True}


def test_a_different_space_is_refused_with_the_difference(
    start_server: Callable[..., PBTServer], connect: Callable[..., PBTClient], space_csv: str, tmp_path: Path
) -> None:
    server = start_server(population=2)
    connect(server, space_csv)
    other = tmp_path / "other.csv"
    other.write_text("lr,1e-4,1e-2,log\nmomentum,0.5,0.99,linear\n")
    with pytest.raises(ServerError, match="lr: run has") as caught:
        connect(server, str(other))
    assert caught.value.code == "space_mismatch"


def test_joining_a_run_that_has_no_space_yet_needs_one(
    start_server: Callable[..., PBTServer], connect: Callable[..., PBTClient]
) -> None:
    server = start_server(population=2)
    with pytest.raises(ServerError, match="config_path") as caught:
        connect(server)
    assert caught.value.code == "run_not_created"


def test_invalid_space_from_a_client_names_the_field(
    start_server: Callable[..., PBTServer], connect: Callable[..., PBTClient], tmp_path: Path
) -> None:
    server = start_server(population=2)
    bad = tmp_path / "bad.json"
    bad.write_text('{"lr": {"type": "float", "low": 1, "high": 0}}')
    with pytest.raises(InvalidConfigError, match="low"):
        connect(server, str(bad))


def test_identity_file_rejoins_the_same_member_after_a_client_restart(
    start_server: Callable[..., PBTServer], connect: Callable[..., PBTClient], space_csv: str, tmp_path: Path
) -> None:
    server = start_server(population=2)
    identity = str(tmp_path / "me.json")
    first = connect(server, space_csv, identity_file=identity)
    (tmp_path / "w.pt").write_bytes(b"weights")
    first.save(str(tmp_path / "w.pt"), 0.3)
    first.close()  # the process "dies"; its lease is still live
    other = connect(server, space_csv)
    assert other.member_id != first.member_id
    again = connect(server, space_csv, identity_file=identity)
    assert again.member_id == first.member_id
    assert again.step == 1 and again.hparams == first.hparams
    path = again.parameters_path()
    assert path is not None and Path(path).read_bytes() == b"weights"


def test_a_dead_clients_member_goes_to_the_next_client_from_its_last_checkpoint(
    start_server: Callable[..., PBTServer], connect: Callable[..., PBTClient], space_csv: str, tmp_path: Path
) -> None:
    server = start_server(population=1 + 1, lease_seconds=0.5)
    keeper = connect(server, space_csv)  # stays alive: heartbeats keep its member
    dead = connect(server, space_csv)
    (tmp_path / "w.pt").write_bytes(b"step 1")
    dead.save(str(tmp_path / "w.pt"), 0.1)
    dead.report(2, 0.2)  # no checkpoint at step 2
    dead.close()  # stops heartbeating
    with pytest.raises(PopulationFullError):
        connect(server, space_csv)  # its lease has not expired yet
    time.sleep(1.0)
    heir = connect(server, space_csv)
    assert heir.member_id == dead.member_id != keeper.member_id
    assert heir.step == 1  # resumed from the checkpoint of step 1
    assert Path(heir.parameters_path() or "").read_bytes() == b"step 1"
    store = SQLStore(server.template["storage"])
    kinds = [e.kind for e in store.events(server.template["name"], heir.member_id)]
    store.close()
    assert kinds[-1] == "resume"
    keeper.report(1, 0.5)  # heartbeats kept its lease through all this


def test_rejoining_a_member_held_by_a_live_client_is_refused(
    start_server: Callable[..., PBTServer], connect: Callable[..., PBTClient], space_csv: str
) -> None:
    server = start_server(population=2)
    holder = connect(server, space_csv)
    with pytest.raises(ServerError, match="held by the live client") as caught:
        connect(server, space_csv, member_id=holder.member_id, identity_file=None)
    assert caught.value.code == "member_held"


def test_a_member_taken_over_refuses_its_old_client(
    start_server: Callable[..., PBTServer], connect: Callable[..., PBTClient], space_csv: str, tmp_path: Path
) -> None:
    server = start_server(population=2, lease_seconds=0.5)
    old = connect(server, space_csv)
    old._stop_heartbeat.set()  # a client frozen (e.g. swapped out) past its lease
    time.sleep(1.0)
    connect(server, space_csv)  # takes the member over
    connect(server, space_csv)
    with pytest.raises(LeaseLostError):
        old.report(1, 0.5)


def test_explicit_member_ids_are_reserved(
    start_server: Callable[..., PBTServer], connect: Callable[..., PBTClient], space_csv: str
) -> None:
    server = start_server(population=2)
    named = connect(server, space_csv, member_id=0)
    assert named.member_id == 0
    assert connect(server, space_csv).member_id == 1
    with pytest.raises(PopulationFullError):
        connect(server, space_csv)


def test_population_endpoint_shows_the_live_population(
    start_server: Callable[..., PBTServer], connect: Callable[..., PBTClient], space_csv: str, tmp_path: Path
) -> None:
    server = start_server(population=2)
    a, b = connect(server, space_csv), connect(server, space_csv)
    a.report(1, 0.9)
    b.report(1, 0.1)
    view = a.population()
    assert view["run"] == "pbt" and view["best"] == a.member_id
    rows = {m["member_id"]: m for m in view["members"]}
    assert rows[a.member_id]["score"] == 0.9 and rows[b.member_id]["step"] == 1
    assert rows[a.member_id]["hparams"] == a.hparams
    assert rows[a.member_id]["client"]  # the lease holder


def test_restarted_server_continues_the_run_where_it_left_off(
    start_server: Callable[..., PBTServer], connect: Callable[..., PBTClient], space_csv: str
) -> None:
    first = start_server(population=2)
    client = connect(server=first, config_path=space_csv, member_id=1)
    client.report(1, 0.5)
    hparams = client.hparams
    first.stop()
    second = start_server(population=2, port=first.port)  # same store, no space: it comes from the store
    assert second.service is not None and second.service.config is not None
    assert second.service.config.space.to_config()["lr"]["log"] is True
    client.report(2, 0.6)  # the same client carries on (its connection was re-established)
    rejoined = connect(second, member_id=1)
    assert rejoined.step == 2 and rejoined.hparams == hparams
