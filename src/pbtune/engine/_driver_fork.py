"""The zygote forked from the driver itself, so it starts with the driver's imports.

A user's script imports torch and its own libraries before it calls ``pbtune.run``; a fresh
zygote then imports them all again (seconds, in series with the script, on the critical path).
Forked from the driver, the zygote has them already. ``pbtune run`` still starts a fresh zygote
before its own imports (the two import in parallel there; see :func:`pbtune.engine._zygote.prestart`).

Forking a process that may have run code is only done when it is safe (:func:`fork_blocker`),
else the zygote is a fresh interpreter as before:

* Linux only (macOS system libraries are not fork-safe), and not with ``PBTUNE_ZYGOTE=fresh``;
* no Python threads but pbtune's own zygote readers (another thread may hold a lock the child
  would wait on forever);
* CUDA not initialised (by torch, or the driver library loaded at all: ``torch.cuda.is_available()``
  already initialises it unless ``PYTORCH_NVML_BASED_CUDA_CHECK=1``), and no TensorFlow or JAX
  runtime loaded (none of these survives a fork);
* no SQLite database open in WAL mode (the child would inherit SQLite's per-file lock state and
  its shared-memory index of that file).

The fork is made from a fresh helper thread: OpenMP (libgomp, torch's CPU thread pool) keeps its
worker pool per thread that started it, so a child forked from the thread that ran torch kernels
hangs in its first parallel region, while one forked from a thread that never did starts a new
pool. In the child, inherited objects are frozen out of garbage collection (a collected copy of
the driver's database connection or temporary folder would act on the driver's), the driver's
signal handlers are reset and its other zygotes' pipes closed; it never returns to the driver's
code and leaves with ``os._exit``.
"""

from __future__ import annotations

import gc
import os
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Iterable

__all__ = ["fork_blocker", "fork_child"]

READER_THREAD = "pbtune-zygote-events"  # the name of the zygote handles' reader threads


def fork_blocker() -> str | None:
    """Why this process must not fork the zygote (see the module's docstring); None if it may."""
    if not sys.platform.startswith("linux") or not hasattr(os, "fork"):
        return f"platform {sys.platform}"
    if os.environ.get("PBTUNE_ZYGOTE", "").strip().lower() == "fresh":
        return "PBTUNE_ZYGOTE=fresh"
    if threading.current_thread() is not threading.main_thread():
        return "pbtune.run was called from a thread other than the main thread"
    others = [t.name for t in threading.enumerate()
              if t is not threading.main_thread() and not t.name.startswith(READER_THREAD)]
    if others:
        return f"threads are running: {', '.join(sorted(others))}"
    torch = sys.modules.get("torch")
    cuda = getattr(torch, "cuda", None)
    if cuda is not None and getattr(cuda, "is_initialized", lambda: False)():
        return "CUDA is initialised"
    if _mapped("/libcuda.so"):  # e.g. after torch.cuda.is_available(): cuInit ran, a fork's CUDA fails
        return "the CUDA driver is loaded"
    for runtime in ("tensorflow", "jax"):
        if runtime in sys.modules:
            return f"{runtime} is loaded"
    wal = _open_wal_file()
    if wal is not None:
        return f"an SQLite database is open in WAL mode ({wal})"
    return None


def _mapped(name: str) -> bool:
    """Whether a file whose path contains ``name`` is mapped into this process (a loaded library)."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            return any(name in line for line in maps)
    except OSError:
        return True  # cannot tell: assume the worst


def _open_wal_file() -> str | None:
    try:
        fds = os.listdir("/proc/self/fd")
    except OSError:
        return "/proc/self/fd unreadable"
    for fd in fds:
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # closed meanwhile (the listing's own fd)
            continue
        if target.endswith(("-wal", "-shm")):
            return target
    return None


def fork_child(child: Callable[[], None], close_fds: Iterable[int]) -> int:
    """Fork from a fresh helper thread; the child closes ``close_fds``, resets the driver's signal
    handlers, runs ``child()`` (which must not return) and exits. Returns the child's pid."""
    for stream in (sys.stdout, sys.stderr):  # else the child's copy of buffered output is printed twice
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - a closed stream cannot be flushed, nor duplicated
            pass
    fds = tuple(close_fds)
    outcome: list[int | BaseException] = []

    def fork() -> None:
        try:
            with warnings.catch_warnings():  # Python 3.12+ warns on any fork with threads
                warnings.simplefilter("ignore", DeprecationWarning)
                pid = os.fork()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            outcome.append(exc)
            return
        if pid == 0:
            _in_child(child, fds)
        outcome.append(pid)

    helper = threading.Thread(target=fork, name="pbtune-zygote-fork")
    helper.start()
    helper.join()
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    return outcome[0]


def _in_child(child: Callable[[], None], fds: tuple[int, ...]) -> None:
    code = 1
    try:
        gc.freeze()
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass
        default_int = signal.default_int_handler
        for signum in signal.valid_signals():
            try:
                handler = signal.getsignal(signum)
                if callable(handler) and handler is not default_int:
                    signal.signal(signum, signal.SIG_DFL)
            except (OSError, ValueError):  # signals that cannot be caught or reset
                continue
        child()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001 - printed, then the child leaves
        import traceback

        traceback.print_exc()
    finally:
        os._exit(code)
