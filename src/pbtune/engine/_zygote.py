"""Local workers forked from a warm "zygote" process instead of spawned one by one.

``spawn`` starts every worker as a fresh interpreter that re-runs the user's ``__main__`` and
imports torch, the trainable's module and the store again (seconds each, per worker, and again
at every restart). The zygote is started once per driver process: it imports the worker code and
the trainable's module *by name* (never the user's ``__main__`` as a script), then forks a worker
per request. Forked workers share its imports, and leave with ``os._exit`` after flushing their
output (an interpreter holding torch takes seconds to tear down; a worker has nothing to clean).

The zygote is single-threaded and never runs a torch kernel, so forking it is safe (the
precedent: PyTorch's own DataLoader forks its workers). It stays up across runs of the same
trainable started from one process, and exits when the driver closes its request pipe (also
when the driver dies: the kernel closes the pipe), terminating workers still running.

Where the driver is safe to fork (:mod:`pbtune.engine._driver_fork`), the zygote is forked from
it and starts with the script's imports; else, and for ``pbtune run``, it is a fresh interpreter.

Requests and replies are JSON lines over two pipes (never pickle).
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Mapping
from typing import Any

from pbtune.engine._driver_fork import READER_THREAD, fork_blocker, fork_child
from pbtune.engine._handles import ForkedProcess, WorkerProcess, worker_exited

__all__ = ["WorkerProcess", "Zygote", "close_zygote", "prestart", "release", "trainable_reference", "worker_exited",
           "zygote_for"]

log = logging.getLogger(__name__)

# Modules the zygote imports after the trainable when torch is in use: torch.optim's first
# optimizer imports torch._dynamo (seconds); torch offers no supported switch to skip it.
TORCH_PRELOAD = ("torch._dynamo",)
# What every worker's first store and checkpoint calls import (SQLAlchemy loads dialects lazily).
WORKER_PRELOAD = ("sqlalchemy.dialects.sqlite", "fsspec.implementations.chained")


def trainable_reference(cls: type) -> str | None:
    """``"module:Class"`` or ``"/abs/file.py:Class"`` naming ``cls`` for a process that does not
    run the user's ``__main__``; None when it has no importable name (e.g. defined in a function)."""
    name = cls.__qualname__
    module = sys.modules.get(cls.__module__)
    if module is None or "." in name or getattr(module, name, None) is not cls:
        return None
    if cls.__module__ == "__main__" or cls.__module__.startswith("pbtune_user_"):
        spec_name = getattr(getattr(module, "__spec__", None), "name", None)
        if spec_name and spec_name != "__main__" and not spec_name.startswith("pbtune_user_"):
            return f"{spec_name}:{name}"  # `python -m package.module`
        path = getattr(module, "__file__", None)
        return f"{os.path.abspath(path)}:{name}" if path and path.endswith(".py") else None
    return f"{cls.__module__}:{name}"


class Zygote:
    """The driver's handle on one zygote process (see the module's docstring)."""

    def __init__(self, trainable: str | None, *, fork: bool = False) -> None:
        self.trainable: str | None = None
        self.key: tuple[Any, ...] = (None, _place())
        self.users = 0  # runs holding it (see zygote_for)
        self.forked = fork  # forked from this process (it has our imports) rather than a fresh interpreter
        request_r, self._request_w = os.pipe()
        self._events_r, events_w = os.pipe()
        setup = json.dumps({"sys_path": sys.path, "torch_preload": TORCH_PRELOAD})
        self._process: subprocess.Popen[bytes] | ForkedProcess
        if fork:
            with _fds_lock:
                inherited = [self._request_w, self._events_r, *_request_pipes]
            pid = fork_child(lambda: serve(request_r, events_w, setup), close_fds=inherited)
            self._process = ForkedProcess(pid)
        else:
            code = f"from pbtune.engine._zygote import serve; serve({request_r}, {events_w}, {setup!r})"
            self._process = subprocess.Popen([sys.executable, "-c", code], pass_fds=(request_r, events_w))
        os.close(request_r)
        os.close(events_w)
        with _fds_lock:  # a zygote forked later must not hold our request pipe open (its EOF stops ours)
            _request_pipes.add(self._request_w)
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._error: str | None = None
        self.cuda_initialized = False  # the trainable's import initialised CUDA here (forks can't use it)
        self._started: dict[int, tuple[int, WorkerProcess] | str] = {}  # request id -> (pid, proc) | error
        self._workers: dict[int, WorkerProcess] = {}
        self._gone = False  # the zygote closed its end: no more replies
        self._next_id = 0
        self._reply = threading.Condition(self._lock)
        self._reader = threading.Thread(target=self._read_events, daemon=True, name=READER_THREAD)
        self._reader.start()
        if trainable is not None:
            self.load(trainable)

    def load(self, trainable: str) -> None:
        """Have the zygote import ``trainable`` (once; :meth:`wait_ready` says how that went)."""
        self.trainable, self.key = trainable, _key(trainable)
        os.write(self._request_w, (json.dumps({"op": "load", "trainable": trainable}) + "\n").encode())

    def wait_ready(self) -> str | None:
        """Block until the zygote has imported the trainable; the error text if it could not."""
        self._ready.wait()
        return self._error

    def alive(self) -> bool:
        return self._process.poll() is None and self._error is None

    def start(self, target_args: tuple[Mapping[str, Any], str, str],
              env: Mapping[str, str] | None = None) -> WorkerProcess:
        """Fork a worker running ``worker_main(*target_args)`` with this process's environment and
        ``env`` over it (set in the child before the trainable runs: e.g. its CUDA_VISIBLE_DEVICES)."""
        with self._lock:
            request_id = self._next_id
            self._next_id += 1
            config, trainable, worker_id = target_args
            line = json.dumps({"op": "start", "id": request_id, "config": config, "trainable": trainable,
                               "worker_id": worker_id, "env": {**os.environ, **(env or {})}}) + "\n"
            os.write(self._request_w, line.encode())
            while request_id not in self._started:
                if self._gone:
                    raise RuntimeError(f"the pbtune zygote exited ({self._process.poll()})")
                self._reply.wait(timeout=1.0)
            answer = self._started.pop(request_id)
        if isinstance(answer, str):
            raise RuntimeError(f"the pbtune zygote could not fork a worker: {answer}")
        return answer[1]

    def close(self, timeout: float = 5.0) -> None:
        """Ask the zygote to leave (it terminates workers still running)."""
        try:
            with _fds_lock:
                _request_pipes.discard(self._request_w)
                os.close(self._request_w)
        except OSError:
            return
        if not self._ready.is_set():  # still importing, no workers yet: don't wait for it
            self._process.kill()
        try:
            self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()

    def _read_events(self) -> None:
        with os.fdopen(self._events_r, "rb") as events:
            for raw in events:
                event = json.loads(raw)
                with self._lock:
                    if "ready" in event:
                        self._error = event.get("error")
                        self.cuda_initialized = bool(event.get("cuda"))
                        self._ready.set()
                    elif "started" in event:
                        pid = event.get("pid")
                        if pid is None:
                            self._started[event["started"]] = str(event.get("error"))
                        else:
                            proc = WorkerProcess(pid)  # its exit event comes later on this pipe
                            self._workers[pid] = proc
                            self._started[event["started"]] = (pid, proc)
                        self._reply.notify_all()
                    elif "exited" in event:
                        worker = self._workers.pop(event["exited"], None)
                        if worker is not None:
                            worker._set_exit(event["code"])
        with self._lock:  # the zygote is gone: so are its workers
            self._gone = True
            if not self._ready.is_set():
                self._error = self._error or f"the pbtune zygote exited ({self._process.wait()}) before it was ready"
                self._ready.set()
            for worker in self._workers.values():
                worker._set_exit(-signal.SIGKILL)
            self._workers.clear()
            self._reply.notify_all()


# The driver's ends of the zygotes' request pipes, closed in a zygote forked from the driver.
_request_pipes: set[int] = set()
_fds_lock = threading.Lock()


def _place() -> tuple[Any, ...]:
    return (sys.executable, tuple(sys.path), os.getcwd())


def _key(trainable: str) -> tuple[Any, ...]:
    """What a warm zygote must share with a run to serve it: the code it imported and where from."""
    path = trainable.rpartition(":")[0]
    try:
        mtime = os.stat(path).st_mtime_ns if path.endswith(".py") else None
    except OSError:
        mtime = None
    return ((trainable, mtime), _place())


# Zygotes of this process by key. A run holds its zygote (``users``) until it returns; at most
# one idle zygote is kept warm, so concurrent runs of different trainables never share or close
# each other's.
_zygotes: dict[tuple[Any, ...], Zygote] = {}
_zygotes_lock = threading.Lock()


def zygote_for(trainable: str) -> Zygote:
    """Hold the warm zygote for ``trainable``, started if needed; give it back with :func:`release`."""
    with _zygotes_lock:
        key = _key(trainable)
        generic = _zygotes.get((None, _place()))
        if key not in _zygotes and generic is not None and generic.alive():
            del _zygotes[generic.key]  # a prestarted one: it has imported pbtune's worker meanwhile
            generic.load(trainable)
            _zygotes[key] = generic
        zygote = _zygotes.get(key)
        if zygote is not None and not zygote.alive():
            del _zygotes[key]
            if zygote.users == 0:
                zygote.close()
            zygote = None
        if zygote is None:
            blocker = fork_blocker()
            if blocker is not None:
                log.debug("the zygote is a fresh interpreter: %s", blocker)
            zygote = _zygotes[key] = Zygote(trainable, fork=blocker is None)
        zygote.users += 1
        for other_key, other in list(_zygotes.items()):
            if other is not zygote and other.users == 0:
                del _zygotes[other_key]
                other.close()
        return zygote


def release(zygote: Zygote) -> None:
    """A run is done with ``zygote``: it stays warm for the next run of the same trainable."""
    with _zygotes_lock:
        zygote.users -= 1
        if zygote.users == 0 and _zygotes.get(zygote.key) is not zygote:
            zygote.close()  # replaced meanwhile (it died, or its trainable's file changed)


def prestart(trainable: str | None = None) -> None:
    """Start a zygote early (``pbtune run``: before the CLI's imports); with ``trainable`` (a guess
    from the config file) it imports that meanwhile, else it waits to be told. It is forked from
    this process once the worker code is imported here, so that is imported once for both."""
    fork = fork_blocker() is None
    if fork:
        import pbtune.engine.local  # noqa: F401 - the CLI imports it next anyway
    with _zygotes_lock:
        key = _key(trainable) if trainable is not None else (None, _place())
        if key not in _zygotes:
            _zygotes[key] = Zygote(trainable, fork=fork)


def close_zygote() -> None:
    """Stop every zygote of this process (runs at interpreter exit)."""
    with _zygotes_lock:
        for zygote in _zygotes.values():
            zygote.close()
        _zygotes.clear()


atexit.register(close_zygote)


# -- inside the zygote process --------------------------------------------------------------------
def _send(fd: int, event: Mapping[str, Any]) -> None:
    os.write(fd, (json.dumps(event) + "\n").encode())


def serve(request_fd: int, events_fd: int, setup_json: str) -> None:
    """The zygote's main loop: import pbtune's worker, then the trainable named by the first
    request, then fork a worker per request until the pipe closes."""
    setup = json.loads(setup_json)
    sys.path[:] = setup["sys_path"]
    # torch.cuda.is_available() at import time would cuInit here, and a forked child can neither
    # use CUDA then nor pick its device: make torch ask NVML instead (the children get the driver's env)
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the driver, which closes our pipe
    try:
        from pbtune.engine.local import worker_main
        from pbtune.engine.worker import load_trainable

        for name in WORKER_PRELOAD:
            __import__(name)
    except BaseException:
        _send(events_fd, {"ready": True, "error": traceback.format_exc()})
        os._exit(1)

    def load(trainable: str) -> None:
        try:
            load_trainable(trainable)
            if "torch" in sys.modules:
                for name in setup["torch_preload"]:
                    __import__(name)
        except BaseException:  # reported to the driver, which raises the error itself
            _send(events_fd, {"ready": True, "error": traceback.format_exc()})
            os._exit(1)
        torch = sys.modules.get("torch")
        _send(events_fd, {"ready": True, "cuda": bool(torch is not None and torch.cuda.is_initialized())})

    children: set[int] = set()
    pending = b""
    while True:
        readable, _, _ = select.select([request_fd], [], [], 0.05 if children else 1.0)
        if readable:
            chunk = os.read(request_fd, 1 << 20)
            if not chunk:
                break
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                request = json.loads(line)
                if request["op"] == "load":
                    load(request["trainable"])
                    continue
                try:
                    pid = os.fork()
                except OSError as exc:
                    _send(events_fd, {"started": request["id"], "error": str(exc)})
                    continue
                if pid == 0:
                    _run_worker(worker_main, request, (request_fd, events_fd))
                children.add(pid)
                _send(events_fd, {"started": request["id"], "pid": pid})
        _reap(children, events_fd)
    for pid in children:  # the driver left: so do its workers
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 5
    while children and time.monotonic() < deadline:
        _reap(children, events_fd)
        time.sleep(0.02)
    os._exit(0)


def _reap(children: set[int], events_fd: int) -> None:
    while children:
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            return
        children.discard(pid)
        try:
            _send(events_fd, {"exited": pid, "code": os.waitstatus_to_exitcode(status)})
        except OSError:  # the driver is gone
            pass


def _run_worker(worker_main: Any, request: Mapping[str, Any], fds: tuple[int, int]) -> None:
    """The forked child: run one worker, then leave without tearing the interpreter down."""
    code = 1
    try:
        for fd in fds:
            os.close(fd)
        devnull = os.open(os.devnull, os.O_RDONLY)  # like multiprocessing: workers read no stdin
        os.dup2(devnull, 0)
        os.close(devnull)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.environ.clear()
        os.environ.update(request["env"])
        worker_main(request["config"], request["trainable"], request["worker_id"])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001 - a closed stream must not keep the worker alive
                pass
        os._exit(code)
