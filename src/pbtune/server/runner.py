"""``PBTServer``: the population server process (uvicorn serving :func:`create_app`).

Example::

    server = PBTServer(8000, "a-long-shared-secret", True)   # serving now, in a background thread
    ...                                                     # clients join; this script goes on
    server.stop()                                           # or: with PBTServer(...) as server: ...

    PBTServer(8000, key, True, storage="sqlite:///pbt.db").serve()   # or block until Ctrl-C
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pbtune.config import DEFAULT_DIR, UNBOUNDED_BUDGET, RunConfig, load_config
from pbtune.errors import InvalidConfigError, PBTuneError
from pbtune.server.app import create_app
from pbtune.server.service import PopulationService
from pbtune.server.uploads import UploadArea

__all__ = ["PBTServer", "DEFAULT_MAX_UPLOAD_BYTES", "UNBOUNDED_BUDGET"]

log = logging.getLogger(__name__)

DEFAULT_MAX_UPLOAD_BYTES = 1 << 30
DEFAULT_RUN = "pbt"
MIN_POPULATION = 2  # where a population that grows with its clients starts
_DUMMY_SPACE = {"x": {"type": "choice", "values": [0]}}


class PBTServer:
    """A PBT population served over HTTP to :class:`~pbtune.server.client.PBTClient` members.

    Constructing a server starts serving in a background (daemon) thread, as scripts written
    for the older server/client project expect: they construct it and go on. :meth:`serve`
    then blocks until Ctrl-C, :meth:`stop` or the context manager's exit shut it down.
    ``background=False`` only constructs it (then :meth:`serve` or :meth:`start`).

    The legacy positional form ``PBTServer(port, auth_key, maximize_metric)`` creates a run whose
    space comes from the first client that joins (its ``config_path``); pass ``config`` (a
    :class:`RunConfig`, its dict, or a JSON/YAML path) to fix everything up front. A run already in
    ``storage`` is reopened with its stored settings, so a restarted server continues it.

    Args:
        port: TCP port (0 picks a free one; see :attr:`port` after :meth:`start`).
        auth_key: the shared key clients send as a bearer token (str or bytes, non-empty).
        maximize_metric: True if larger scores are better (``mode="max"``); default: the
            config's mode, else True.
        host: interface to listen on (``0.0.0.0`` for other machines).
        config: the run's full settings.
        run: the run's name when ``config`` is not given; a run of that name already in the
            store is reopened (a restarted server continues it). Default: ``pbt``, or, when the
            store already holds a ``pbt`` run, a new run ``pbt-2``, ``pbt-3``... (logged): a second
            experiment in the same folder never silently joins the previous one.
        storage / checkpoints: population store URL and checkpoint folder/URL (override ``config``).
        population: number of members, when ``config`` is not given. Default: the population
            grows with the clients that join (it starts at 2, the least a population can be;
            a client that finds no free member gets a new one).
        budget: steps per member (default unbounded: clients stop when they like).
        ready_interval: steps (saves) between exploit decisions (default 1: decide after every save).
        exploit / explore / seed / lease_seconds / keep_checkpoints: as in :class:`RunConfig`.
        sync: generational PBT (``RunConfig.sync``): a client's ``should_exploit()`` waits until
            its whole generation reached its step (clients that failed or went away excepted).
        shared_roots: folders on a shared filesystem whose files clients may name as checkpoints.
        upload_dir: where uploaded checkpoints are staged (default: a folder in the temp dir).
        max_upload_bytes: largest checkpoint upload accepted.
        ssl_certfile / ssl_keyfile: serve HTTPS with this certificate and key.
        background: start serving in a background thread now (default); False: not yet.
        tensorboard: write the run to TensorBoard event files in this folder while serving
            (``<dir>/<run>/member-NNN``: score, each hyperparameter, a lineage entry per exploit).
    """

    def __init__(
        self,
        port: int = 8000,
        auth_key: str | bytes = "",
        maximize_metric: bool | None = None,
        *,
        host: str = "127.0.0.1",
        config: RunConfig | Mapping[str, Any] | str | None = None,
        run: str | None = None,
        storage: str | None = None,
        checkpoints: str | None = None,
        population: int | None = None,
        budget: int | None = None,
        ready_interval: int = 1,
        exploit: Any = None,
        explore: Any = None,
        seed: int = 0,
        lease_seconds: float = 60.0,
        keep_checkpoints: int = 2,
        sync: bool = False,
        shared_roots: Sequence[str] = (),
        upload_dir: str | None = None,
        max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
        ssl_certfile: str | None = None,
        ssl_keyfile: str | None = None,
        log_level: str = "warning",
        background: bool = True,
        tensorboard: str | None = None,
    ) -> None:
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise InvalidConfigError("port", "PBTServer", "an integer in [0, 65535]", port)
        if not isinstance(auth_key, (str, bytes)) or not auth_key:
            raise InvalidConfigError("auth_key", "PBTServer", "a non-empty string or bytes", "<hidden>")
        if maximize_metric is not None and not isinstance(maximize_metric, bool):
            raise InvalidConfigError("maximize_metric", "PBTServer", "True, False or None", maximize_metric)
        if (ssl_certfile is None) != (ssl_keyfile is None):
            raise InvalidConfigError("ssl_keyfile" if ssl_keyfile is None else "ssl_certfile", "PBTServer",
                                     "given together with the other ssl file", ssl_keyfile or ssl_certfile)
        if isinstance(max_upload_bytes, bool) or not isinstance(max_upload_bytes, int) or max_upload_bytes < 1:
            raise InvalidConfigError("max_upload_bytes", "PBTServer", "an integer >= 1", max_upload_bytes)
        if tensorboard is not None:
            from pbtune.server._live_tensorboard import require_tensorboardx

            require_tensorboardx()
        if not isinstance(background, bool):
            raise InvalidConfigError("background", "PBTServer", "True or False", background)
        for root in shared_roots:
            if not os.path.isdir(root):
                raise InvalidConfigError("shared_roots", "PBTServer", "existing folders", root)
        self.host = host
        self.port = port
        self.auth_key = auth_key
        self.template = _template(
            config, maximize_metric, run=run or DEFAULT_RUN, storage=storage, checkpoints=checkpoints,
            population=population, budget=budget, ready_interval=ready_interval, exploit=exploit, explore=explore,
            seed=seed, lease_seconds=lease_seconds, keep_checkpoints=keep_checkpoints, sync=sync,
        )
        self.grows = config is None and population is None
        self._new_run = config is None and run is None  # resolved to a free name by the service
        self.shared_roots = tuple(shared_roots)
        self.upload_dir = upload_dir or _default_upload_dir(self.template)
        self.max_upload_bytes = max_upload_bytes
        self.ssl_certfile = ssl_certfile
        self.ssl_keyfile = ssl_keyfile
        self.log_level = log_level
        self.tensorboard = tensorboard
        self._live: Any = None
        self.service: PopulationService | None = None
        self._server: Any = None
        self._thread: threading.Thread | None = None
        if background:
            self.start()

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_certfile else "http"
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"{scheme}://{host}:{self.port}"

    def build_app(self) -> Any:
        """Open the store (creating or reopening the run) and return the FastAPI application."""
        uploads = UploadArea(self.upload_dir, max_bytes=self.max_upload_bytes)
        uploads.sweep()
        self.service = PopulationService(self.template, uploads=uploads, shared_roots=self.shared_roots,
                                         grow=self.grows, new_run=self._new_run)
        self.template["name"] = self.service.run_name  # a later start() continues this run
        self._new_run = False
        if self.tensorboard is not None:
            from pbtune.server._live_tensorboard import LiveTensorBoard

            self._live = LiveTensorBoard(self.service, self.tensorboard)
        return create_app(self.service, auth_key=self.auth_key)

    def _uvicorn(self) -> tuple[Any, Any]:
        import uvicorn

        config = uvicorn.Config(
            self.build_app(), host=self.host, port=self.port, log_level=self.log_level,
            ssl_certfile=self.ssl_certfile, ssl_keyfile=self.ssl_keyfile, timeout_keep_alive=30,
            access_log=self.log_level in ("debug", "trace"),
        )
        sock = _bind(self.host, self.port)
        self.port = sock.getsockname()[1]
        return uvicorn.Server(config), sock

    def serve(self, announce: Callable[[str], None] | None = None) -> None:
        """Serve until interrupted (Ctrl-C or SIGTERM); ``announce`` gets the URL once it is bound.

        On a server already serving in the background (the default), wait for it until Ctrl-C
        or :meth:`stop`.
        """
        if self._thread is not None:
            (announce or log.info)(self.url)
            try:
                while self._thread is not None and self._thread.is_alive():
                    self._thread.join(timeout=0.5)
            finally:
                self.stop()
            return
        server, sock = self._uvicorn()
        self._server = server
        (announce or log.info)(self.url)
        try:
            server.run(sockets=[sock])
        finally:
            self._close()

    @property
    def running(self) -> bool:
        """True while a background thread serves."""
        return self._thread is not None and self._thread.is_alive()

    def start(self, timeout: float = 30.0) -> PBTServer:
        """Serve in a background thread; return once it accepts connections (at once if it does)."""
        if self._thread is not None:
            if self._thread.is_alive():
                return self
            self.stop()
        server, sock = self._uvicorn()
        self._server = server
        self._thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True,
                                        name=f"pbtune-server-{self.port}")
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise PBTuneError(f"the pbtune server did not start on {self.url}")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        """Stop serving (in-flight requests finish first); a second call does nothing."""
        if self._server is not None:
            self._server.should_exit = True
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=30)
        self._server = None
        self._close()

    def _close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
        if self.service is not None:
            self.service.close()
            self.service = None

    def __enter__(self) -> PBTServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _template(
    config: RunConfig | Mapping[str, Any] | str | None, maximize_metric: bool | None, *, run: str,
    storage: str | None, checkpoints: str | None, **settings: Any,
) -> dict[str, Any]:
    """The run's settings as a RunConfig dict, validated now (``space`` may be None)."""
    if config is not None:
        cfg = load_config(config) if isinstance(config, str) else (
            config if isinstance(config, RunConfig) else RunConfig.from_dict(config))
        mode = "max" if maximize_metric else "min"
        if maximize_metric is not None and mode != cfg.mode:
            raise InvalidConfigError("maximize_metric", "PBTServer", f"consistent with the config's mode {cfg.mode!r}",
                                     maximize_metric)
        template = cfg.to_dict()
        if storage is not None:
            template["storage"] = storage
        if checkpoints is not None:
            template["checkpoints"] = checkpoints
        RunConfig.from_dict(template)
        return template
    template = {
        "name": run,
        "mode": "min" if maximize_metric is False else "max",
        "population": settings["population"] if settings["population"] is not None else MIN_POPULATION,
        "budget": settings["budget"] if settings["budget"] is not None else UNBOUNDED_BUDGET,
        "ready": {"interval": settings["ready_interval"]},
        "seed": settings["seed"],
        "lease_seconds": settings["lease_seconds"],
        "keep_checkpoints": settings["keep_checkpoints"],
        "sync": settings["sync"],
        "storage": storage or f"sqlite:///{DEFAULT_DIR}/pbtune.db",
        "checkpoints": checkpoints or f"{DEFAULT_DIR}/checkpoints",
    }
    for key in ("exploit", "explore"):
        if settings[key] is not None:
            template[key] = settings[key]
    template = RunConfig.from_dict({**template, "space": _DUMMY_SPACE}).to_dict()  # validate every field now
    template["space"] = None  # comes with the first client
    return template


def _bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket whose accepted connections get TCP_NODELAY.

    asyncio sets TCP_NODELAY only on sockets whose ``proto`` is IPPROTO_TCP, and accepted
    sockets inherit it from the listening one; uvicorn's own socket has proto 0, and Nagle's
    algorithm then holds each response body until the client's delayed ACK (~40 ms a request).
    """
    family, kind, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise PBTuneError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    sock.set_inheritable(True)
    return sock


def _default_upload_dir(template: Mapping[str, Any]) -> str:
    digest = hashlib.sha256(f"{template['storage']}|{template['name']}".encode()).hexdigest()[:12]
    return os.path.join(tempfile.gettempdir(), "pbtune-uploads", digest)


