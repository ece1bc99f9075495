"""``PBTClient``: a population member in another process or on another machine, over HTTP.

It implements :class:`pbtune.member.MemberProtocol`, so code written against the in-process
:class:`~pbtune.member.Member` runs unchanged against a server::

    client = PBTClient("10.0.0.5", 8000, auth_key, "space.csv")   # joins a free member
    for epoch in range(1, 51):
        train_one_epoch(model, **client.hparams)
        torch.save(model.state_dict(), "ckpt.pt")
        client.save("ckpt.pt", evaluate(model))
        if client.should_exploit():
            client.exploit()
            model.load_state_dict(torch.load(client.parameters_path()))
            client.explore()

Checkpoints travel one of two ways (``checkpoint_mode``): ``"shared"`` sends the file's path
(the server must see it under one of its ``--shared-root`` folders), ``"upload"`` streams the
bytes to the server (checksummed, size-limited) and downloads donors' checkpoints into
``cache_dir``; ``"auto"`` (default) uses the path when it lies under a shared root.

In a generational run (``sync: true``) ``should_exploit()`` waits until the member's whole
generation has reached its step, and ``report()``/``save()`` wait until the generation has
decided at the step before; the lease heartbeat goes on meanwhile.
"""

from __future__ import annotations

import logging
import os
import random
import re
import tempfile
import threading
import uuid
import weakref
from collections.abc import Callable, Mapping
from typing import Any

import httpx

from pbtune.checkpoints import digest  # the checksum the checkpoint store records
from pbtune.errors import CheckpointError, CorruptCheckpointError, InvalidConfigError, PBTuneError
from pbtune.member import Donor
from pbtune.server._client_files import new_token, read_identity, safe_name, sha256_of, write_identity
from pbtune.server._client_generation import for_generation
from pbtune.server._http import RetryingTransport, tls_verify
from pbtune.server._wire import float_from_wire, float_to_wire, metrics_to_wire
from pbtune.server.errors import ServerError
from pbtune.server.space_files import load_space_file
from pbtune.server.uploads import SUFFIX_PATTERN

__all__ = ["PBTClient", "CHECKPOINT_MODES"]

log = logging.getLogger(__name__)

CHECKPOINT_MODES = ("auto", "shared", "upload")
_SUFFIX_RE = re.compile(SUFFIX_PATTERN)
_KEEP_DOWNLOADS = 2


class PBTClient:
    """One member of a population served by a pbtune server.

    Args:
        server_url: host name or URL (``"10.0.0.5"``, ``"https://pbt.example.org"``).
        server_port: TCP port; None when ``server_url`` has it.
        auth_key: the server's shared key.
        config_path: the hyperparameter space (CSV ``name,min,max,scale`` or JSON/YAML); the
            first client's space creates the run on a server started without one; later clients'
            spaces must match it. None: take the run's space as it is.
        member_id: rejoin as this member (e.g. ``SLURM_PROCID``); default: the server assigns a
            free member.
        identity_file: a file that remembers the member id (and lease) across restarts of this
            client: written after joining, read when the client starts again.
        checkpoint_mode: ``"auto"``, ``"shared"`` or ``"upload"`` (see the module docs).
        cache_dir: where downloaded checkpoints go (default: a folder in the temp dir).
        retry_seconds: how long connection errors and 502/503/504 answers are retried (with
            jittered backoff) before :class:`~pbtune.server.errors.ServerUnavailableError`.
        timeout: seconds to wait for one answer.
        verify: TLS verification: True, False, or the path of a CA bundle (self-signed servers).
        generation_timeout: in a generational run, the longest ``should_exploit()`` or
            ``report()`` waits for the member's generation before :class:`GenerationTimeoutError`
            (naming the members it waits for); None: as long as it takes.

    Raises:
        PopulationFullError: no member is free to join.
        ServerError: the server refused (``code`` says why: ``space_mismatch``, ``member_held``...).
    """

    def __init__(
        self,
        server_url: str = "127.0.0.1",
        server_port: int | None = None,
        auth_key: str | bytes = "",
        config_path: str | None = None,
        *,
        member_id: int | None = None,
        identity_file: str | None = None,
        checkpoint_mode: str = "auto",
        cache_dir: str | None = None,
        retry_seconds: float = 120.0,
        timeout: float = 60.0,
        verify: bool | str = True,
        generation_timeout: float | None = None,
    ) -> None:
        if checkpoint_mode not in CHECKPOINT_MODES:
            raise InvalidConfigError("checkpoint_mode", "PBTClient", f"one of {list(CHECKPOINT_MODES)}",
                                     checkpoint_mode)
        if not isinstance(auth_key, (str, bytes)) or not auth_key:
            raise InvalidConfigError("auth_key", "PBTClient", "a non-empty string or bytes", "<hidden>")
        if member_id is not None and (isinstance(member_id, bool) or not isinstance(member_id, int) or member_id < 0):
            raise InvalidConfigError("member_id", "PBTClient", "None or an integer >= 0", member_id)
        if not retry_seconds > 0:
            raise InvalidConfigError("retry_seconds", "PBTClient", "a number > 0", retry_seconds)
        if generation_timeout is not None and not (isinstance(generation_timeout, (int, float))
                                                   and not isinstance(generation_timeout, bool)
                                                   and generation_timeout > 0):
            raise InvalidConfigError("generation_timeout", "PBTClient", "None or a number > 0", generation_timeout)
        self.generation_timeout = generation_timeout
        self.generation_wait_seconds = 0.0  # how long this client waited for its generations so far
        self._rng = random.Random()
        key = auth_key.decode() if isinstance(auth_key, bytes) else auth_key
        self.base_url = base_url(server_url, server_port)
        self.checkpoint_mode = checkpoint_mode
        self._space = load_space_file(config_path).to_config() if config_path else None
        self._identity_file = identity_file
        self._http = httpx.Client(
            base_url=self.base_url, headers={"Authorization": f"Bearer {key}"}, verify=tls_verify(verify),
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
        )
        self._transport = RetryingTransport(self._http, retry_seconds=retry_seconds)
        self._decided = False
        self._downloads: list[str] = []
        self._stop_heartbeat = threading.Event()
        try:
            self._join(member_id)
        except BaseException:
            self._http.close()
            raise
        self.run: str = self._info["run"]
        self._cache_dir = cache_dir or os.path.join(
            tempfile.gettempdir(), "pbtune-client", safe_name(self.run), f"member-{self.member_id:04d}")

    # -- joining -----------------------------------------------------------------------------
    def _join(self, member_id: int | None) -> None:
        identity = read_identity(self._identity_file)
        if identity is not None and identity["run"] not in (None, self._get("/info")["run"]):
            log.warning("ignoring %s: it names a member of run %r, the server serves another run",
                        self._identity_file, identity["run"])
            identity = None
        if member_id is None and identity is not None:
            member_id = identity["member_id"]
        token = identity["token"] if identity and identity["member_id"] == member_id and identity["token"] else None
        token = token or new_token()
        answer = self._post("/join", {"member_id": member_id, "token": token, "space": self._space})
        self._info: dict[str, Any] = answer["info"]
        self._view: dict[str, Any] = answer["member"]
        self.member_id: int = int(self._view["member_id"])
        self._token: str | None = answer["token"]
        if self._identity_file:
            write_identity(self._identity_file, {"server": self.base_url, "run": self._info["run"],
                                                  "member_id": self.member_id, "token": self._token})
        if self._token is not None:
            interval = max(float(answer["lease_seconds"]) / 3.0, 0.05)
            thread = threading.Thread(
                target=_heartbeat_loop, daemon=True, name=f"pbtune-heartbeat-{self.member_id}",
                args=(self._http, f"/members/{self.member_id}/heartbeat", self._token, interval,
                      self._stop_heartbeat),
            )
            thread.start()
            weakref.finalize(self, self._stop_heartbeat.set)

    # -- plumbing ----------------------------------------------------------------------------
    def _post(self, path: str, payload: Mapping[str, Any]) -> dict[str, Any]:
        return self._transport.request("POST", path, json=dict(payload)).json()  # type: ignore[no-any-return]

    def _get(self, path: str) -> dict[str, Any]:
        return self._transport.request("GET", path).json()  # type: ignore[no-any-return]

    def _member(self, action: str, payload: Mapping[str, Any] | None = None) -> dict[str, Any]:
        answer = self._post(f"/members/{self.member_id}/{action}", {"token": self._token, **(payload or {})})
        if "member" in answer:
            self._view = answer["member"]
        return answer

    # -- state -------------------------------------------------------------------------------
    @property
    def hparams(self) -> dict[str, Any]:
        """The hyperparameters to train with now."""
        return dict(self._view["hparams"])

    def hyperparameters(self) -> dict[str, Any]:
        """The hyperparameters to train with now (:attr:`hparams`, under the name the older
        server/client project's scripts call).

        Example::

            lr = client.hyperparameters()["lr"]
        """
        return self.hparams

    @property
    def step(self) -> int:
        return int(self._view["step"])

    @property
    def score(self) -> float | None:
        value = self._view.get("score")
        return None if value is None else float_from_wire(value)

    @property
    def state(self) -> str:
        return str(self._view["state"])

    @property
    def info(self) -> dict[str, Any]:
        """The server's description of the run (mode, population, space, checkpoint options)."""
        return dict(self._info)

    def refresh(self) -> dict[str, Any]:
        """Read this member again from the server; return its JSON form."""
        self._view = self._get(f"/members/{self.member_id}")["member"]
        return dict(self._view)

    def population(self) -> dict[str, Any]:
        """The live population (``GET /population``)."""
        return self._get("/population")

    # -- Algorithm 1 -------------------------------------------------------------------------
    def save(self, ckpt_path: str, metric: float, *, step: int | None = None) -> None:
        """Report ``metric`` with the checkpoint at ``ckpt_path``; ``step`` defaults to last step + 1."""
        self.report(self.step + 1 if step is None else step, metric, checkpoint=ckpt_path)

    def report(self, step: int, metric: float, *, checkpoint: str | None = None,
               metrics: Mapping[str, Any] | None = None) -> None:
        """Record the score at ``step`` and, if given, the checkpoint file (or folder, shared mode).

        Generational run: waits while the member's generation is still deciding at its last step.
        """
        payload = {"step": int(step), "metric": float_to_wire(float(metric)), "metrics": metrics_to_wire(metrics),
                   "checkpoint": None if checkpoint is None else self._send_checkpoint(checkpoint)}
        try:
            self._for_generation(lambda: self._member("report", payload))
        except ServerError as exc:  # a long wait outlived the staged upload (an hour): send it again
            if exc.code != "upload_not_found" or checkpoint is None:
                raise
            payload["checkpoint"] = self._send_checkpoint(checkpoint)
            self._for_generation(lambda: self._member("report", payload))
        self._decided = False

    def should_exploit(self) -> bool:
        """True when the member is ready and the exploit strategy picked a donor.

        Generational run: waits until every member of its generation reached its step.
        """
        self._decided = bool(self._for_generation(lambda: self._member("should-exploit"))["exploit"])
        return self._decided

    def _for_generation(self, send: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        answer, waited = for_generation(send, member_id=self.member_id, timeout=self.generation_timeout, rng=self._rng)
        self.generation_wait_seconds += waited
        return answer

    def exploit(self) -> Donor | None:
        """Copy the chosen donor's checkpoint and hyperparameters into this member (None: nothing copied)."""
        if not self._decided:
            raise PBTuneError("exploit() needs a donor: call should_exploit() first and check it returned True")
        self._decided = False
        donor = self._member("exploit", {"step": self.step, "after_decision": True})["donor"]
        if donor is None:
            return None
        return Donor(int(donor["member_id"]), int(donor["step"]), float_from_wire(donor["score"]),
                     dict(donor["hparams"]))

    def explore(self) -> dict[str, Any]:
        """Perturb or resample the hyperparameters (per the run's strategy); return the new ones."""
        return dict(self._member("explore", {"from_hparams": self.hparams})["hparams"])

    def parameters_path(self) -> str | None:
        """Local path of the checkpoint to load: the donor's copy after an exploit, else the last save."""
        for _ in range(3):
            found = self._get(f"/members/{self.member_id}/checkpoint")["checkpoint"]
            if found is None:
                return None
            try:
                return self._local_checkpoint(found)
            except ServerError as exc:
                if exc.code != "checkpoint_changed":  # a newer save raced the download: ask again
                    raise
        raise CheckpointError(f"member {self.member_id}'s checkpoint kept changing while it was downloaded")

    def finish(self) -> None:
        """Mark the member finished (it reached its budget); it can no longer report."""
        self._member("finish")
        self._stop_heartbeat.set()

    def fail(self, error: str = "failed") -> None:
        """Mark the member failed (its training broke; ``error`` is kept in the store). A failed
        member is final: it never holds a generation up, and no client resumes it."""
        self._member("fail", {"error": str(error)[-20_000:]})
        self._stop_heartbeat.set()

    def close(self) -> None:
        """Stop heartbeating and close connections (the member keeps its state on the server)."""
        self._stop_heartbeat.set()
        self._http.close()

    def __enter__(self) -> PBTClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PBTClient({self.base_url!r}, run={self.run!r}, member_id={self.member_id}, step={self.step})"

    # -- checkpoints -------------------------------------------------------------------------
    def _send_checkpoint(self, path: str) -> dict[str, str]:
        if not os.path.exists(path):
            raise CheckpointError(f"checkpoint {path!r} does not exist (write it before reporting it)")
        if self.checkpoint_mode == "shared" or (self.checkpoint_mode == "auto" and self._is_shared(path)):
            return {"path": os.path.abspath(path)}
        return {"upload": self._upload(path)}

    def _is_shared(self, path: str) -> bool:
        real = os.path.realpath(path)
        return any(real == root or real.startswith(root.rstrip(os.sep) + os.sep)
                   for root in self._info.get("shared_roots", []))

    def _upload(self, path: str) -> str:
        if os.path.isdir(path):
            raise CheckpointError(
                f"checkpoint {path!r} is a folder: uploads take single files (save one file, or put it on a"
                " filesystem the server shares: checkpoint_mode='shared' and pbtune server --shared-root)")
        size = os.path.getsize(path)
        limit = int(self._info["max_upload_bytes"])
        if size > limit:
            raise CheckpointError(f"checkpoint {path!r} has {size} bytes, more than the server's upload limit"
                                  f" of {limit} bytes (pbtune server --max-upload-mb)")
        suffix = os.path.splitext(path)[1]
        headers = {"X-Pbtune-Sha256": sha256_of(path), "X-Pbtune-Suffix": suffix if _SUFFIX_RE.match(suffix) else "",
                   "Content-Type": "application/octet-stream"}
        answer = self._transport.request("POST", "/uploads", content_factory=lambda: open(path, "rb"),
                                         headers=headers)
        return str(answer.json()["upload"])

    def _local_checkpoint(self, found: Mapping[str, Any]) -> str:
        path, sha = str(found["path"]), str(found["sha256"])
        if self.checkpoint_mode != "upload" and os.path.exists(path) and digest(path)[0] == sha:
            return path  # the same bytes on a shared filesystem
        if found["is_dir"]:
            raise CheckpointError(f"checkpoint {path!r} is a folder on the server, not visible here: folder"
                                  " checkpoints need a shared filesystem")
        suffix = os.path.splitext(path)[1]
        local = os.path.join(self._cache_dir, sha + (suffix if _SUFFIX_RE.match(suffix) else ""))
        if os.path.exists(local):
            return local
        os.makedirs(self._cache_dir, exist_ok=True)
        partial = f"{local}.part-{uuid.uuid4().hex[:8]}"
        try:
            got, _ = self._transport.download(f"/members/{self.member_id}/checkpoint/content", partial,
                                              params={"sha256": sha})
            if got != sha:
                raise CorruptCheckpointError(f"downloaded checkpoint has sha256 {got[:12]}..., the server recorded"
                                             f" {sha[:12]}...")
            os.replace(partial, local)
        finally:
            if os.path.exists(partial):
                os.remove(partial)
        self._downloads.append(local)
        while len(self._downloads) > _KEEP_DOWNLOADS:  # the cache holds this member's newest downloads
            old = self._downloads.pop(0)
            if old != local and os.path.exists(old):
                os.remove(old)
        return local


def base_url(server_url: str, server_port: int | None) -> str:
    """``http://host:port`` from the legacy (url, port) pair.

    Example:
        >>> base_url("10.0.0.5", 8000)
        'http://10.0.0.5:8000'
        >>> base_url("https://pbt.example.org", None)
        'https://pbt.example.org'
    """
    if not isinstance(server_url, str) or not server_url:
        raise InvalidConfigError("server_url", "PBTClient", "a host name or URL", server_url)
    url = httpx.URL(server_url if "://" in server_url else f"http://{server_url}")
    if url.scheme not in ("http", "https"):
        raise InvalidConfigError("server_url", "PBTClient", "an http:// or https:// URL", server_url)
    if server_port is not None:
        if isinstance(server_port, bool) or not isinstance(server_port, int) or not 0 < server_port < 65536:
            raise InvalidConfigError("server_port", "PBTClient", "None or an integer in [1, 65535]", server_port)
        url = url.copy_with(port=server_port)
    return str(url).rstrip("/")


def _heartbeat_loop(http: httpx.Client, path: str, token: str, interval: float, stop: threading.Event) -> None:
    warned = False
    while not stop.wait(interval):
        try:
            answer = http.post(path, json={"token": token})
            held = answer.json().get("held", True) if answer.is_success else True
        except (httpx.HTTPError, RuntimeError, ValueError, AttributeError):  # restarting server, a proxy's
            continue  # page instead of JSON, or the client was closed: the next beat tries again
        if not held and not warned:
            log.warning("this client lost its lease on %s (another client took the member over)", path)
            warned = True
