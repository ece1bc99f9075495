"""The member conformance suite over HTTP: PBTClient handles against a real server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from server_helpers import KEY

from pbtune.config import RunConfig
from pbtune.member import MemberProtocol
from pbtune.server.client import PBTClient
from pbtune.server.runner import PBTServer
from pbtune.testing.member_suite import MemberConformance, PopulationLike


class HTTPPopulation:
    """``.member(id)`` joins a PBTClient as that member of the server's run."""

    def __init__(self, server: PBTServer, cache_dir: Path, checkpoint_mode: str) -> None:
        self.server = server
        self.cache_dir = cache_dir
        self.checkpoint_mode = checkpoint_mode
        self.clients: list[PBTClient] = []

    def member(self, member_id: int) -> MemberProtocol:
        client = PBTClient(self.server.url, None, KEY, member_id=member_id, checkpoint_mode=self.checkpoint_mode,
                           cache_dir=str(self.cache_dir / f"c{len(self.clients)}"), retry_seconds=5.0)
        self.clients.append(client)
        return client

    def close(self) -> None:
        for client in self.clients:
            client.close()
        self.server.stop()


class _HTTPConformance(MemberConformance):
    checkpoint_mode = "upload"
    _opened: list[HTTPPopulation]

    @pytest.fixture(autouse=True)
    def _servers(self, tmp_path: Path) -> Iterator[None]:
        self._tmp = tmp_path
        self._opened = []
        yield
        for population in self._opened:
            population.close()

    def server_options(self) -> dict[str, object]:
        return {}

    def open_population(self, config: RunConfig) -> PopulationLike:
        server = PBTServer(0, KEY, config=config, upload_dir=str(self._tmp / "uploads"),
                           **self.server_options()).start()  # type: ignore[arg-type]
        population = HTTPPopulation(server, self._tmp / "client-cache", self.checkpoint_mode)
        self._opened.append(population)
        return population


class TestHTTPMemberUpload(_HTTPConformance):
    """Checkpoints are uploaded to the server and downloaded from it."""

    checkpoint_mode = "upload"

    def test_client_is_a_member_protocol(self, population: PopulationLike) -> None:
        assert isinstance(population.member(0), MemberProtocol)


class TestHTTPMemberShared(_HTTPConformance):
    """Checkpoints are named by path on a filesystem the server shares (here: the test's tmp folder)."""

    checkpoint_mode = "shared"

    def server_options(self) -> dict[str, object]:
        return {"shared_roots": (str(self._tmp),)}

    def test_parameters_path_is_the_servers_own_file(self, population: PopulationLike, tmp_path: Path,
                                                     config: RunConfig) -> None:
        member = population.member(0)
        (tmp_path / "w.txt").write_text("shared weights")
        member.save(str(tmp_path / "w.txt"), 1.0)
        path = member.parameters_path()
        assert path is not None and Path(path).read_text() == "shared weights"
        assert Path(path).resolve().is_relative_to(Path(config.checkpoints).resolve())  # no download
