"""The server/client scripts of the older project run unchanged: ``PBTServer(port, key, maximize)``."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from rich.console import Console
from server_helpers import KEY, free_port
from typer.testing import CliRunner

from pbtune.cli import app
from pbtune.config import UNBOUNDED_BUDGET, RunConfig
from pbtune.initial import first_hparams
from pbtune.report.live import LiveDisplay, progress_line
from pbtune.server.client import PBTClient
from pbtune.server.runner import PBTServer
from pbtune.space import Space
from pbtune.store import SQLStore
from pbtune.types import MemberState


def _info(port: int) -> dict[str, object]:
    answer = httpx.get(f"http://127.0.0.1:{port}/info", headers={"Authorization": f"Bearer {KEY}"}, timeout=5)
    answer.raise_for_status()
    return dict(answer.json())


def _refused(port: int) -> bool:
    try:
        _info(port)
    except httpx.TransportError:
        return True
    return False


def test_three_positional_arguments_serve_at_construction_and_stop_ends_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    port = free_port()
    server = PBTServer(port, KEY, True)
    try:
        assert server.running
        assert _info(port)["run"] == "pbt"  # listening without serve() or start()
        assert server.start() is server  # start() on a serving server is a no-op
    finally:
        server.stop()
    assert not server.running and _refused(port)
    server.stop()  # twice is fine


def test_context_manager_stops_the_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    port = free_port()
    with PBTServer(port, KEY, False) as server:
        assert _info(port)["mode"] == "min"
        assert server.running
    assert _refused(port)


def test_serve_blocks_on_a_background_server_until_stopped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    port = free_port()
    server = PBTServer(port, KEY, True)
    announced: list[str] = []
    blocker = threading.Thread(target=server.serve, kwargs={"announce": announced.append}, daemon=True)
    blocker.start()
    time.sleep(0.3)
    assert blocker.is_alive() and _info(port)["run"] == "pbt"
    server.stop()
    blocker.join(timeout=10)
    assert not blocker.is_alive() and announced == [f"http://127.0.0.1:{port}"] and _refused(port)


def test_background_false_only_constructs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    port = free_port()
    server = PBTServer(port, KEY, True, background=False)
    assert not server.running and _refused(port)
    with server:
        assert _info(port)["run"] == "pbt"
    assert _refused(port)


def test_the_population_grows_with_the_clients_that_join(
    start_server: Callable[..., PBTServer], connect: Callable[..., PBTClient], tmp_path: Path
) -> None:
    csv = tmp_path / "space.csv"
    csv.write_text("lr,0.001,0.1,log\n")
    server = start_server()  # no population, no config: the three-argument form's defaults
    clients = [connect(server, str(csv)) for _ in range(5)]
    assert sorted(c.member_id for c in clients) == [0, 1, 2, 3, 4]
    assert server.service is not None and server.service.config is not None
    assert server.service.config.population == 5
    store = SQLStore(f"sqlite:///{tmp_path}/pbt.db")
    try:
        members = store.list_members("pbt")
        assert len(members) == 5 and all(m.state is MemberState.RUNNING for m in members)  # nobody pending
        assert store.get_run("pbt").config["population"] == 5  # a restarted server reopens all five
        # a new member's first hyperparameters are those a population of 5 samples (seeded)
        expected = first_hparams(Space({"lr": {"type": "float", "low": 0.001, "high": 0.1, "log": True}}), 5, 0,
                                 "random")
        assert [dict(m.hparams) for m in members] == expected
    finally:
        store.close()


def test_displays_do_not_show_the_unbounded_budget(
    start_server: Callable[..., PBTServer], connect: Callable[..., PBTClient], tmp_path: Path
) -> None:
    csv = tmp_path / "space.csv"
    csv.write_text("lr,0.001,0.1,log\n")
    key_file = tmp_path / "key"
    key_file.write_text(KEY)
    server = start_server()
    clients = [connect(server, str(csv)) for _ in range(4)]
    for step, client in enumerate(clients, start=1):
        client.report(step, 0.1 * step)
    assert clients[0].info["budget"] is None
    runner = CliRunner()
    live = runner.invoke(app, ["server-status", server.url, "--auth-key-file", str(key_file), "--json"])
    assert live.exit_code == 0, live.output
    view = json.loads(live.output)
    assert view["budget"] is None and view["population"] == 4
    stored = runner.invoke(app, ["status", "pbt", "--storage", f"sqlite:///{tmp_path}/pbt.db"])
    assert stored.exit_code == 0, stored.output
    assert "0/4 members done; no budget (clients decide when to stop)" in stored.output
    store = SQLStore(f"sqlite:///{tmp_path}/pbt.db")
    try:
        config = RunConfig.from_dict(dict(store.get_run("pbt").config))
        members = store.list_members("pbt")
        line = progress_line(config, members, ())
        assert line.startswith("run pbt: 10 steps, best 0.4 (member 3)") and "0/4 members done" in line
        table = Console(width=200, record=True)
        table.print(LiveDisplay().table(config, members, ()))
        watched = table.export_text()
    finally:
        store.close()
    for shown in (live.output, stored.output, line, watched):
        assert str(UNBOUNDED_BUDGET) not in shown and "/8" not in shown


def test_hyperparameters_returns_the_members_current_hyperparameters(
    start_server: Callable[..., PBTServer], connect: Callable[..., PBTClient], tmp_path: Path
) -> None:
    csv = tmp_path / "space.csv"
    csv.write_text("lr,0.001,0.1,log\n")
    server = start_server()
    good, bad = connect(server, str(csv)), connect(server, str(csv))
    first = bad.hyperparameters()
    assert set(first) == {"lr"} and 0.001 <= first["lr"] <= 0.1 and first == bad.hparams
    first["lr"] = -1.0  # a copy: changing it changes nothing
    assert bad.hyperparameters()["lr"] != -1.0
    for client, score in ((good, 0.9), (bad, 0.1)):
        path = tmp_path / f"ckpt-{client.member_id}.bin"
        path.write_bytes(b"weights")
        client.save(str(path), score)
    assert bad.should_exploit() and bad.exploit() is not None
    assert bad.hyperparameters() == good.hyperparameters()  # the donor's, after the exploit
    explored = bad.explore()
    assert bad.hyperparameters() == explored != good.hyperparameters()


def test_a_client_that_exits_without_finish_is_shown_as_gone_once_its_lease_expires(
    start_server: Callable[..., PBTServer], connect: Callable[..., PBTClient], tmp_path: Path
) -> None:
    csv = tmp_path / "space.csv"
    csv.write_text("lr,0.001,0.1,log\n")
    key_file = tmp_path / "key"
    key_file.write_text(KEY)
    server = start_server(lease_seconds=0.5)
    stays, leaves = connect(server, str(csv)), connect(server, str(csv))
    leaves.report(1, 0.5)
    leaves.close()  # the usual snippet never calls finish()
    time.sleep(1.0)
    assert stays.population()["members"][stays.member_id]["gone"] is False  # it heartbeats
    view = stays.population()["members"][leaves.member_id]
    assert view["gone"] is True and view["state"] == "running"
    runner = CliRunner()
    live = runner.invoke(app, ["server-status", server.url, "--auth-key-file", str(key_file)])
    stored = runner.invoke(app, ["status", "pbt", "--storage", f"sqlite:///{tmp_path}/pbt.db"])
    for output in (live.output, stored.output):
        rows = {line.split("│")[1].strip(" *"): line for line in output.splitlines() if line.count("│") > 3}
        assert "gone" in rows[str(leaves.member_id)] and "lease" in rows[str(leaves.member_id)]
        assert "running" in rows[str(stays.member_id)] and "gone" not in rows[str(stays.member_id)]


def test_a_second_experiment_in_the_same_folder_gets_a_new_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    csv = tmp_path / "space.csv"
    csv.write_text("hyperparameter,min_value,max_value,search_scale\nlr,0.001,0.1,log\n")
    for experiment, expected_run in enumerate(("pbt", "pbt-2", "pbt-3")):
        port = free_port()
        with PBTServer(port, KEY, True) as server:
            client = PBTClient("127.0.0.1", port, KEY, str(csv), cache_dir=str(tmp_path / "cache"))
            assert client.run == expected_run and client.member_id == 0 and client.step == 0
            client.report(1, float(experiment))
            client.close()  # exits without finish()
    port = free_port()
    with PBTServer(port, KEY, True, run="pbt") as server:  # naming the run continues it (a restart)
        client = PBTClient("127.0.0.1", port, KEY, str(csv), cache_dir=str(tmp_path / "cache"))
        assert client.run == "pbt" and client.member_id == 1  # member 0 is still leased to the first client
        assert client.population()["members"][0]["score"] == 0.0
        client.close()
    assert server.template["name"] == "pbt"
    store = SQLStore(f"sqlite:///{tmp_path}/pbtune-runs/pbtune.db")
    try:
        assert [run.name for run in store.list_runs()] == ["pbt", "pbt-2", "pbt-3"]
        assert [s.score for s in store.scores("pbt-2")] == [1.0]
    finally:
        store.close()
