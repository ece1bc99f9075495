"""Transient failures: the client retries with backoff, within a bound; retried requests apply once."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from server_helpers import KEY, free_port

from pbtune.config import RunConfig
from pbtune.errors import NotFoundError
from pbtune.server._http import RetryingTransport
from pbtune.server._wire import CheckpointSpec
from pbtune.server.client import PBTClient
from pbtune.server.errors import ServerUnavailableError
from pbtune.server.runner import PBTServer
from pbtune.server.service import PopulationService
from pbtune.server.uploads import UploadArea
from pbtune.store import SQLStore


def test_client_gives_up_after_its_retry_bound_with_a_clear_error(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    started = time.monotonic()
    with pytest.raises(ServerUnavailableError, match=rf"127\.0\.0\.1:{port}.*within 0\.5 s"):
        PBTClient("127.0.0.1", port, KEY, member_id=0, retry_seconds=0.5)
    assert time.monotonic() - started < 5.0


def test_transport_backs_off_with_jitter_on_503_then_succeeds() -> None:
    answers = iter([503, 502, 200])
    mock = httpx.MockTransport(lambda request: httpx.Response(next(answers), json={"ok": True}))
    sleeps: list[float] = []
    transport = RetryingTransport(httpx.Client(transport=mock, base_url="http://x"), retry_seconds=30,
                                  sleep=sleeps.append)
    assert transport.request("GET", "/info").json() == {"ok": True}
    assert len(sleeps) == 2
    assert 0 <= sleeps[0] <= 0.05 and 0 <= sleeps[1] <= 0.1  # full jitter under a doubling cap


def test_transport_does_not_retry_an_error_answer() -> None:
    calls: list[int] = []

    def answer(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return httpx.Response(404, json={"error": "not_found", "detail": "run 'r' has no member 9"})

    transport = RetryingTransport(httpx.Client(transport=httpx.MockTransport(answer), base_url="http://x"),
                                  retry_seconds=30, sleep=lambda s: None)
    with pytest.raises(NotFoundError, match="no member 9"):
        transport.request("GET", "/members/9")
    assert len(calls) == 1


def test_client_rides_out_a_server_restart(start_server: Callable[..., PBTServer],
                                           connect: Callable[..., PBTClient], tmp_path: Path) -> None:
    csv = tmp_path / "space.csv"
    csv.write_text("lr,0.001,0.1,log\n")
    server = start_server(population=2)
    client = connect(server, str(csv), member_id=0, retry_seconds=30)
    client.report(1, 0.25)
    server.stop()
    restarted: list[PBTServer] = []
    timer = threading.Timer(1.0, lambda: restarted.append(start_server(population=2, port=server.port)))
    timer.start()
    client.report(2, 0.5)  # blocks, retrying, until the new server answers
    timer.join()
    assert restarted, "the server was not restarted"
    store = SQLStore(server.template["storage"])
    assert [(s.step, s.score) for s in store.scores("pbt", 0)] == [(1, 0.25), (2, 0.5)]
    store.close()


@pytest.fixture
def service(tmp_path: Path) -> PopulationService:
    config = RunConfig(name="idem", space={"lr": {"type": "float", "low": 1e-3, "high": 1.0, "log": True}},
                       population=4, ready={"interval": 1}, exploit={"name": "truncation", "quantile": 0.25},
                       storage=f"sqlite:///{tmp_path}/idem.db", checkpoints=str(tmp_path / "ckpts"))
    return PopulationService(config.to_dict(), uploads=UploadArea(str(tmp_path / "up"), max_bytes=1 << 20),
                             shared_roots=(str(tmp_path),))


def test_a_report_retried_after_its_answer_was_lost_is_recorded_once(service: PopulationService) -> None:
    service.join(0, None, None)
    service.report(0, None, 1, 0.5)
    service.report(0, None, 1, 0.5)  # the same request again
    service.report(0, None, 2, float("nan"))
    service.report(0, None, 2, float("nan"))
    assert [s.step for s in service.store.scores("idem", 0)] == [1, 2]


def test_an_explore_retried_after_its_answer_was_lost_is_applied_once(service: PopulationService) -> None:
    record, _ = service.join(1, None, None)
    before = dict(record.hparams)
    first, _ = service.explore(1, None, before)
    again, _ = service.explore(1, None, before)
    assert first == again != before
    assert [e.kind for e in service.store.events("idem", 1)] == ["init", "explore"]


def _report_all(service: PopulationService, tmp_path: Path, step: int) -> None:
    for member_id in range(4):
        (tmp_path / f"w{member_id}.txt").write_text(f"weights {member_id}")
        service.join(member_id, None, None)
        service.report(member_id, None, step, float(member_id),
                       checkpoint=CheckpointSpec(path=str(tmp_path / f"w{member_id}.txt")))


def test_an_exploit_decided_before_a_server_restart_is_carried_out_once(
    service: PopulationService, tmp_path: Path
) -> None:
    _report_all(service, tmp_path, step=1)
    decided, _ = service.should_exploit(0, None)
    assert decided
    donor, record = service.exploit(0, None, 1, after_decision=True)
    assert donor is not None and donor.member_id == 3
    # the server restarts before the answer arrives; the client sends the exploit again
    restarted = PopulationService(service.template, uploads=service.uploads, shared_roots=service.shared_roots)
    again, record_again = restarted.exploit(0, None, 1, after_decision=True)
    assert again == donor
    assert record_again.hparams == record.hparams
    assert [e.kind for e in restarted.store.events("idem", 0)].count("exploit") == 1


def test_an_exploit_whose_decision_was_lost_is_decided_again(service: PopulationService, tmp_path: Path) -> None:
    _report_all(service, tmp_path, step=1)
    assert service.should_exploit(0, None)[0]
    restarted = PopulationService(service.template, uploads=service.uploads, shared_roots=service.shared_roots)
    donor, _ = restarted.exploit(0, None, 1, after_decision=True)
    assert donor is not None and donor.member_id == 3
