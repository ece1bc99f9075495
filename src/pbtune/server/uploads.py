"""Staging area for checkpoints uploaded through the server.

An upload is streamed to ``<dir>/<id>.part`` while its size is counted and its SHA-256
computed, and renamed to ``<dir>/<id>`` only when both check out. The id is made by the
server (32 hex digits plus the file's validated suffix), so no client-given name ever
becomes a path. Staged files live on disk, so a save retried after a server restart still
finds its upload; stale ones are removed after ``max_age`` seconds.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from pbtune.server.errors import ServerError

__all__ = ["UploadArea", "StagedUpload", "SUFFIX_PATTERN"]

SUFFIX_PATTERN = r"^(\.[A-Za-z0-9_-]{1,16}){0,2}$"
_SUFFIX_RE = re.compile(SUFFIX_PATTERN)
_ID_RE = re.compile(r"^[0-9a-f]{32}(\.[A-Za-z0-9_-]{1,16}){0,2}$")


@dataclass(frozen=True)
class StagedUpload:
    upload_id: str
    size: int
    sha256: str


class UploadArea:
    """A folder of verified uploads.

    Args:
        directory: where staged files live (created if missing).
        max_bytes: the largest upload accepted.
        max_age: staged files older than this many seconds are removed by :meth:`sweep`.

    Example:
        >>> import asyncio, hashlib, tempfile
        >>> area = UploadArea(tempfile.mkdtemp(), max_bytes=1024)
        >>> async def body():
        ...     yield b"weights"
        >>> staged = asyncio.run(area.receive(body(), hashlib.sha256(b"weights").hexdigest(), ".pt", None))
        >>> open(area.path(staged.upload_id), "rb").read()
        b'weights'
    """

    def __init__(self, directory: str, *, max_bytes: int, max_age: float = 3600.0) -> None:
        self.directory = os.path.abspath(directory)
        self.max_bytes = max_bytes
        self.max_age = max_age
        self._last_sweep = 0.0
        os.makedirs(self.directory, exist_ok=True)

    @staticmethod
    def check_suffix(suffix: str) -> str:
        if not isinstance(suffix, str) or not _SUFFIX_RE.match(suffix):
            raise ServerError(
                f"file suffix {suffix[:40]!r} must match {SUFFIX_PATTERN} (no paths)", status=400, code="bad_name"
            )
        return suffix

    async def receive(
        self, chunks: AsyncIterator[bytes], sha256: str, suffix: str, declared_size: int | None
    ) -> StagedUpload:
        """Stream ``chunks`` to disk; raise 413 past ``max_bytes``, 400 if the SHA-256 differs."""
        self.check_suffix(suffix)
        if not re.fullmatch(r"[0-9a-f]{64}", sha256 or ""):
            raise ServerError("header X-Pbtune-Sha256 must be the 64 hex digit SHA-256 of the body",
                              status=400, code="bad_checksum")
        if declared_size is not None and declared_size > self.max_bytes:
            raise ServerError(f"upload of {declared_size} bytes is larger than the limit of {self.max_bytes}",
                              status=413, code="too_large")
        if time.time() - self._last_sweep > min(self.max_age, 600.0):  # uploads a crashed client never used
            self.sweep()
        upload_id = uuid.uuid4().hex + suffix
        final = os.path.join(self.directory, upload_id)
        partial = f"{final}.part"
        digest = hashlib.sha256()
        size = 0
        try:
            with open(partial, "wb") as handle:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise ServerError(f"upload is larger than the limit of {self.max_bytes} bytes",
                                          status=413, code="too_large")
                    digest.update(chunk)
                    handle.write(chunk)
                handle.flush()
                os.fsync(handle.fileno())
            if digest.hexdigest() != sha256:
                raise ServerError(
                    f"upload's SHA-256 {digest.hexdigest()[:12]}... does not match X-Pbtune-Sha256 {sha256[:12]}..."
                    " (corrupted in transit; send it again)", status=400, code="checksum_mismatch",
                )
            os.replace(partial, final)
        except BaseException:
            _remove(partial)
            raise
        return StagedUpload(upload_id, size, sha256)

    def path(self, upload_id: str) -> str:
        """The staged file of ``upload_id``.

        Raises:
            ServerError: 400 for a malformed id, 404 for an unknown (or already used) one.
        """
        if not isinstance(upload_id, str) or not _ID_RE.match(upload_id):
            raise ServerError(f"upload id {str(upload_id)[:80]!r} is malformed", status=400, code="bad_name")
        path = os.path.join(self.directory, upload_id)
        if not os.path.isfile(path):
            raise ServerError(f"no staged upload {upload_id!r} (expired or already used)",
                              status=404, code="upload_not_found")
        return path

    def discard(self, upload_id: str) -> None:
        if _ID_RE.match(upload_id):
            _remove(os.path.join(self.directory, upload_id))

    def sweep(self, now: float | None = None) -> int:
        """Remove staged and partial files older than ``max_age``; return how many."""
        now = time.time() if now is None else now
        self._last_sweep = now
        removed = 0
        for name in os.listdir(self.directory):
            path = os.path.join(self.directory, name)
            try:
                if now - os.path.getmtime(path) > self.max_age:
                    os.remove(path)
                    removed += 1
            except OSError:
                continue
        return removed


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
