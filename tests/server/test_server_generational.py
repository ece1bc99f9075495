"""Generational (sync) PBT over the server (issue 13 item 5): clients at a ready point wait for
their generation, which is ranked at one step; a failing or vanished client never blocks it."""

from __future__ import annotations

import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from server_helpers import KEY, free_port

from pbtune.config import RunConfig
from pbtune.errors import LeaseLostError
from pbtune.server._client_generation import for_generation
from pbtune.server.client import PBTClient
from pbtune.server.errors import GenerationTimeoutError, GenerationWaitError, error_from_wire
from pbtune.server.runner import PBTServer
from pbtune.store import SQLStore
from pbtune.testing.server_process import start_server as start_server_process
from pbtune.types import MemberState

SPACE = {"lr": {"type": "float", "low": 1e-4, "high": 1.0, "log": True}}


def _config(tmp_path: Path, population: int, budget: int, **extra: Any) -> RunConfig:
    settings: dict[str, Any] = dict(
        name="gen", space=SPACE, population=population, budget=budget, ready={"interval": 2}, sync=True,
        exploit={"name": "truncation", "quantile": 0.25}, lease_seconds=5.0,
        storage=f"sqlite:///{tmp_path}/gen.db", checkpoints=str(tmp_path / "ckpts"),
    )
    settings.update(extra)
    return RunConfig(**settings)


def _train(client: PBTClient, folder: Path, budget: int, *, pause: Callable[[int], float] = lambda step: 0.0,
           vanish_at: int | None = None, fail_at: int | None = None) -> None:
    """A training script: save every step, decide at every save, finish at the budget."""
    for step in range(1, budget + 1):
        if step == vanish_at:  # the process died: no more requests, no more heartbeats
            client.close()
            return
        time.sleep(pause(step))
        metric = -abs(math.log10(client.hparams["lr"]) + 2.0) + 0.01 * step
        path = folder / f"member-{client.member_id}.ckpt"
        path.write_text(f"member {client.member_id} step {step}")
        client.save(str(path), metric, step=step)
        if step == fail_at:  # its training broke (before it decided at this step)
            client.fail("RuntimeError: boom")
            return
        if client.should_exploit() and client.exploit() is not None:
            loaded = client.parameters_path()
            assert loaded is not None and Path(loaded).read_text().startswith("member ")
            client.explore()
    client.finish()


def _run_clients(scripts: list[Callable[[], None]], timeout: float = 60.0) -> None:
    errors: list[BaseException] = []

    def guarded(script: Callable[[], None]) -> None:
        try:
            script()
        except BaseException as exc:  # reported below, with the others
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(script,), daemon=True) for script in scripts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    assert not any(thread.is_alive() for thread in threads), "a client never finished: the generation hung"
    assert not errors, errors


def _check_generations(store: SQLStore, members: list[int], run: str = "gen") -> int:
    """Every exploit decided at step s only after each member of ``members`` reached s, copied a
    checkpoint of step s, and no member reported past s before it. Returns the number of exploits."""
    scores = [s for s in store.scores(run) if s.member_id in members]
    reached: dict[tuple[int, int], float] = {}
    for score in scores:
        reached.setdefault((score.member_id, score.step), score.time)
    exploits = [e for e in store.events(run) if e.kind == "exploit"]
    for event in exploits:
        assert all(reached[(m, event.step)] <= event.time for m in members), event
        assert all(s.time >= event.time for s in scores if s.step > event.step), event
        assert event.donor_checkpoint is not None
        copied = re.search(r"step-(\d+)", event.donor_checkpoint)
        assert copied is not None and int(copied.group(1)) == event.step, event.donor_checkpoint
    return len(exploits)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Callable[[], SQLStore]]:
    opened: list[SQLStore] = []

    def open_() -> SQLStore:
        opened.append(SQLStore(f"sqlite:///{tmp_path}/gen.db"))
        return opened[-1]

    yield open_
    for each in opened:
        each.close()


def test_a_generation_of_clients_is_ranked_at_one_step(
    tmp_path: Path, start_server: Callable[..., PBTServer], connect: Callable[..., PBTClient],
    store: Callable[[], SQLStore],
) -> None:
    server = start_server(config=_config(tmp_path, population=4, budget=8))
    clients = [connect(server, generation_timeout=30) for _ in range(4)]
    speeds = {c.member_id: 0.015 * i for i, c in enumerate(clients)}  # member 0 fastest, the last slowest
    _run_clients([lambda c=c: _train(c, tmp_path, 8, pause=lambda step, c=c: speeds[c.member_id]) for c in clients])
    finished = store()
    assert [(m.state, m.step) for m in finished.list_members("gen")] == [(MemberState.FINISHED, 8)] * 4
    assert _check_generations(finished, [0, 1, 2, 3]) >= 3  # one per generation, at steps 2, 4, 6 (and 8)
    fastest = min(clients, key=lambda c: speeds[c.member_id])
    assert fastest.generation_wait_seconds > 0  # it did wait for the slower members


def test_a_client_that_fails_never_blocks_its_generation(
    tmp_path: Path, start_server: Callable[..., PBTServer], connect: Callable[..., PBTClient],
    store: Callable[[], SQLStore],
) -> None:
    server = start_server(config=_config(tmp_path, population=3, budget=6))
    clients = [connect(server, generation_timeout=30) for _ in range(3)]
    # member 0 is the slowest: the others wait for it at step 2, then it fails there before deciding
    scripts = [lambda c=c: _train(c, tmp_path, 6, pause=lambda step: 0.1 if c.member_id == 0 else 0.0,
                                  fail_at=2 if c.member_id == 0 else None) for c in clients]
    _run_clients(scripts)
    members = {m.member_id: m for m in store().list_members("gen")}
    assert members[0].state is MemberState.FAILED and "boom" in (members[0].error or "")
    assert [(members[m].state, members[m].step) for m in (1, 2)] == [(MemberState.FINISHED, 6)] * 2
    _check_generations(store(), [1, 2])


def test_a_vanished_client_leaves_the_generation_and_a_waiting_one_stays(
    tmp_path: Path, start_server: Callable[..., PBTServer], connect: Callable[..., PBTClient],
    store: Callable[[], SQLStore],
) -> None:
    lease = 1.5
    server = start_server(config=_config(tmp_path, population=3, budget=4, lease_seconds=lease))
    clients = {c.member_id: c for c in (connect(server, generation_timeout=30) for _ in range(3))}
    # member 0 vanishes before step 1; member 2 is slow (member 1 waits for it longer than a lease)
    scripts = [
        lambda: _train(clients[0], tmp_path, 4, vanish_at=1),
        lambda: _train(clients[1], tmp_path, 4),
        lambda: _train(clients[2], tmp_path, 4, pause=lambda step: 2.5 * lease if step == 2 else 0.0),
    ]
    seen_gone: set[int] = set()
    done = threading.Event()

    def watch() -> None:  # what `pbtune server-status` shows while the clients wait
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=10) as http:
            while not done.wait(0.1):
                seen_gone.update(m["member_id"] for m in http.get("/population").json()["members"] if m["gone"])

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        _run_clients(scripts)
    finally:
        done.set()
        watcher.join()
    members = {m.member_id: m for m in store().list_members("gen")}
    assert members[0].state is MemberState.RUNNING and members[0].is_gone(time.time())
    assert [(members[m].state, members[m].step) for m in (1, 2)] == [(MemberState.FINISHED, 4)] * 2
    assert seen_gone == {0}  # the waiting member 1 heartbeat throughout: never gone
    assert clients[1].generation_wait_seconds > lease  # it waited longer than a lease for member 2
    _check_generations(store(), [1, 2])  # member 2, slow but alive, was waited for


# -- the wire ------------------------------------------------------------------------------------
def _post(http: httpx.Client, path: str, body: dict[str, Any]) -> httpx.Response:
    return http.post(path, json=body)


@pytest.fixture
def wire(tmp_path: Path, start_server: Callable[..., PBTServer]) -> Iterator[tuple[httpx.Client, Callable[[], Any]]]:
    config = _config(tmp_path, population=3, budget=10, ready={"interval": 1}, lease_seconds=0.5)
    server = start_server(config=config)

    def members() -> Any:
        reader = SQLStore(config.storage)
        try:
            return {m.member_id: m for m in reader.list_members("gen")}, len(reader.scores("gen"))
        finally:
            reader.close()

    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=10) as http:
        for member_id in range(3):
            assert _post(http, "/join", {"member_id": member_id}).status_code == 200  # named: no lease
        yield http, members


def test_the_wire_says_wait_and_does_nothing(wire: tuple[httpx.Client, Callable[[], Any]]) -> None:
    http, members = wire
    assert _post(http, "/members/0/report", {"step": 1, "metric": 0.5}).status_code == 200
    waiting = _post(http, "/members/0/should-exploit", {})
    assert waiting.status_code == 409
    body = waiting.json()
    assert body["error"] == "generation_waiting" and body["step"] == 1 and body["waiting_for"] == [1, 2]
    assert 0 < body["retry_after"] <= 1 and int(waiting.headers["Retry-After"]) >= 1
    assert "members 1 (step 0), 2 (step 0)" in body["detail"]
    before = members()
    assert before[0][0].last_ready_step == 0  # nothing decided
    for member_id, metric in ((1, 0.9), (2, 0.1)):  # member 2 is the bottom of the generation
        assert _post(http, f"/members/{member_id}/report", {"step": 1, "metric": metric}).status_code == 200
    decided = _post(http, "/members/0/should-exploit", {})
    assert decided.status_code == 200 and decided.json()["member"]["last_ready_step"] == 1
    held = _post(http, "/members/0/report", {"step": 2, "metric": 0.6})  # 1 and 2 have not decided at step 1
    assert held.status_code == 409 and held.json()["error"] == "generation_deciding"
    assert held.json()["waiting_for"] == [1, 2]
    assert members()[1] == 3  # the held report was not recorded
    assert _post(http, "/members/1/should-exploit", {}).json()["exploit"] is False
    # member 2 trains on without asking: its ready point at step 1 is noted as a continue
    assert _post(http, "/members/2/report", {"step": 2, "metric": 0.3}).status_code == 200
    after, scores = members()
    assert after[2].last_ready_step == 1 and after[2].step == 2 and scores == 4
    assert _post(http, "/members/0/report", {"step": 2, "metric": 0.6}).status_code == 200  # the generation decided


def test_a_named_member_never_waits_for_a_gone_one(
    tmp_path: Path, start_server: Callable[..., PBTServer],
) -> None:
    server = start_server(config=_config(tmp_path, population=2, budget=10, ready={"interval": 1}, lease_seconds=0.3))
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=10) as http:
        assert _post(http, "/join", {"member_id": 0}).status_code == 200
        gone = _post(http, "/join", {"token": "short-lived"}).json()  # leased, then never heartbeats
        assert gone["member"]["member_id"] == 1
        assert _post(http, "/members/0/report", {"step": 1, "metric": 0.5}).status_code == 200
        assert _post(http, "/members/0/should-exploit", {}).json()["error"] == "generation_waiting"
        time.sleep(0.6)  # member 1's lease expires: its client went away
        answer = _post(http, "/members/0/should-exploit", {})
        assert answer.status_code == 200 and answer.json()["member"]["last_ready_step"] == 1
        assert _post(http, "/members/0/report", {"step": 2, "metric": 0.6}).status_code == 200


def test_fail_marks_the_member_failed_once_and_checks_the_lease(
    wire: tuple[httpx.Client, Callable[[], Any]], tmp_path: Path,
) -> None:
    http, members = wire
    answer = _post(http, "/members/1/fail", {"error": "Traceback ...\nValueError: nan loss"})
    assert answer.status_code == 200 and answer.json()["member"]["state"] == "failed"
    assert _post(http, "/members/1/fail", {"error": "again"}).status_code == 200  # a retried fail: a no-op
    assert members()[0][1].error == "Traceback ...\nValueError: nan loss"
    assert _post(http, "/members/0/fail", {"token": "not-the-holder"}).json()["error"] == "lease_lost"
    assert _post(http, "/members/0/fail", {"error": "x" * 20_001}).json()["error"] == "invalid"


def test_server_md_documents_every_route_and_the_generation_answers(
    tmp_path: Path, start_server: Callable[..., PBTServer],
) -> None:
    docs = (Path(__file__).parents[2] / "docs" / "server.md").read_text()
    app = start_server().build_app()
    for route in app.routes:
        path = getattr(route, "path", "")
        if path.startswith(("/openapi", "/docs", "/redoc")):
            continue
        for method in sorted(getattr(route, "methods", set()) - {"HEAD"}):
            assert f"`{method} {path.replace('{member_id}', '{id}')}" in docs, (method, path)
    for term in ("generation_waiting", "generation_deciding", "retry_after", "waiting_for", "Retry-After",
                 "generation_timeout", "--sync"):
        assert term in docs, term


# -- the client's wait loop (pure: injected sleep and clock) -------------------------------------
def _wait_answer(retry_after: Any = 0.4) -> dict[str, Any]:
    return {"error": "generation_waiting", "detail": "wait", "step": 4, "waiting_for": [2, 3],
            "retry_after": retry_after}


@pytest.mark.parametrize(("retry_after", "read"), [(0.4, 0.4), ("NaN", 1.0), (None, 1.0), (1e9, 60.0), (-1, 0.01)])
def test_a_wait_answer_is_read_defensively(retry_after: Any, read: float) -> None:
    error = error_from_wire(409, _wait_answer(retry_after))
    assert isinstance(error, GenerationWaitError)
    assert (error.code, error.step, error.waiting_for, error.retry_after) == ("generation_waiting", 4, (2, 3), read)


def test_the_client_backs_off_up_to_retry_after_and_times_out() -> None:
    now = [0.0]
    pauses: list[float] = []

    def sleep(seconds: float) -> None:
        pauses.append(seconds)
        now[0] += seconds

    def waiting() -> dict[str, Any]:
        raise error_from_wire(409, _wait_answer())

    with pytest.raises(GenerationTimeoutError, match=r"member 7 waited 5\.0 s .* generation_timeout=5"):
        for_generation(waiting, member_id=7, timeout=5.0, rng=random.Random(0), sleep=sleep, clock=lambda: now[0])
    assert pauses[0] <= 0.05 and max(pauses) <= 0.4 and 0.2 <= pauses[-2]  # 50 ms doubling up to retry_after
    assert now[0] == pytest.approx(5.0)  # the last pause ends at the timeout, not past it

    answers: list[Any] = [error_from_wire(409, _wait_answer()), error_from_wire(409, _wait_answer()), {"ok": 1}]

    def then_ready() -> Any:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    answer, waited = for_generation(then_ready, member_id=7, timeout=None, rng=random.Random(0), sleep=sleep,
                                    clock=lambda: now[0])
    assert answer == {"ok": 1} and waited > 0

    def lost() -> Any:
        raise LeaseLostError("held by another client")

    with pytest.raises(LeaseLostError):  # only wait answers are sent again
        for_generation(lost, member_id=7, timeout=None, rng=random.Random(0), sleep=sleep)


# -- a `pbtune server --sync` process and client processes, one of them SIGKILLed --------------------
def test_a_sigkilled_client_process_never_blocks_the_generation(tmp_path: Path) -> None:
    steps, lease = 8, 2.0
    key_file = tmp_path / "key"
    key_file.write_text(KEY)
    key_file.chmod(0o600)
    space = tmp_path / "space.csv"
    space.write_text("name,min,max,scale\nlr,1e-4,1,log\n")
    port, db = free_port(), f"sqlite:///{tmp_path}/pbt.db"
    server = start_server_process(tmp_path, port, key_file, db, 3, ["--sync", "--lease-seconds", str(lease)])
    script = Path(__file__).with_name("server_kill_client.py")  # save, decide and maybe exploit every step
    clients = [subprocess.Popen([sys.executable, str(script), f"http://127.0.0.1:{port}", str(key_file), str(space),
                                 str(steps), str(tmp_path / f"client{i}.json")], cwd=tmp_path,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for i in range(3)]
    identity = tmp_path / "client0.json.identity"
    try:
        deadline = time.monotonic() + 60
        while True:  # kill client 0 once its member is a few steps in
            assert time.monotonic() < deadline, "client 0 made no progress"
            if identity.exists():
                victim = json.loads(identity.read_text())["member_id"]
                reader = SQLStore(db)
                try:
                    if reader.get_member("pbt", victim).step >= 3:
                        break
                finally:
                    reader.close()
            time.sleep(0.05)
        os.kill(clients[0].pid, signal.SIGKILL)
        clients[0].wait()
        for client in clients[1:]:
            output, _ = client.communicate(timeout=120)
            assert client.returncode == 0, output.decode()[-3000:]
    finally:
        for process in (*clients, server):
            if process.poll() is None:
                process.kill()
                process.wait()
    survivors = [json.loads((tmp_path / f"client{i}.json").read_text())["member_id"] for i in (1, 2)]
    reader = SQLStore(db)
    try:
        members = {m.member_id: m for m in reader.list_members("pbt")}
        assert members[victim].state is MemberState.RUNNING and members[victim].step < steps  # gone, not done
        assert all((members[m].state, members[m].step) == (MemberState.FINISHED, steps) for m in survivors)
        assert _check_generations(reader, survivors, run="pbt") > 0
    finally:
        reader.close()
