"""Checkpoint storage over fsspec: atomic, checksummed put / fetch / copy / delete.

A checkpoint is a file or a folder the user's code wrote. It is stored under a fresh key
(never overwritten), written under a temporary name and renamed into place, and its SHA-256 is
recorded in the population store. Rename makes writes atomic against crashed processes; like
SQLite's WAL mode with ``synchronous=NORMAL``, we do not fsync each file (a power cut may lose
the newest checkpoints, which the checksum then reports instead of loading them). The database
row is the commit point: a half-written object is never referenced, and a checkpoint whose
bytes no longer match its checksum raises :class:`~pbtune.errors.CorruptCheckpointError`
instead of being loaded.

Example:
    >>> import tempfile, pathlib
    >>> root = tempfile.mkdtemp()
    >>> src = pathlib.Path(root, "model.txt"); _ = src.write_text("weights")
    >>> store = CheckpointStore(f"{root}/ckpts")
    >>> ref = store.put(str(src), run="demo", member_id=0, step=4)
    >>> pathlib.Path(store.fetch(ref.key, ref.sha256)).read_text()
    'weights'
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import shutil
import tempfile
import uuid
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from pbtune.errors import CheckpointError, CheckpointWriteError, CorruptCheckpointError
from pbtune.store.base import CheckpointRef

__all__ = ["CheckpointStore", "digest"]

_CHUNK = 1 << 20


class CheckpointStore:
    """Checkpoints under one fsspec URL (a local folder by default).

    Args:
        url: a folder path or fsspec URL, e.g. ``./checkpoints``, ``memory://ck``, ``s3://bucket/prefix``.
        cache_dir: where checkpoints of non-local stores are downloaded to be loaded.
        storage_options: passed to fsspec (credentials, endpoint_url, ...).
    """

    def __init__(self, url: str, *, cache_dir: str | None = None, **storage_options: Any) -> None:
        self.url = url
        self.fs, root = fsspec.core.url_to_fs(url, **storage_options)
        self.root = root.rstrip("/")
        self.is_local = isinstance(self.fs, LocalFileSystem)
        self.fs.makedirs(self.root, exist_ok=True)
        self._cache_dir = cache_dir

    # -- keys ---------------------------------------------------------------------------------
    def _path(self, key: str) -> str:
        if key.startswith("/") or ".." in key.split("/"):
            raise CheckpointError(f"checkpoint key {key!r} must be relative and stay inside the store")
        return posixpath.join(self.root, key)

    @staticmethod
    def new_key(run: str, member_id: int, step: int, suffix: str = "") -> str:
        return f"{run}/member-{member_id:04d}/step-{step:08d}-{uuid.uuid4().hex[:10]}{suffix}"

    # -- operations -------------------------------------------------------------------------
    def put(self, local_path: str, *, run: str, member_id: int, step: int) -> CheckpointRef:
        """Store a local file or folder atomically under a new key and return its reference."""
        if not os.path.exists(local_path):
            raise CheckpointError(f"checkpoint {local_path!r} does not exist (write it before reporting it)")
        suffix = "" if os.path.isdir(local_path) else "".join(os.path.splitext(local_path)[1:])
        key = self.new_key(run, member_id, step, suffix)
        sha256, size = digest(local_path)
        final = self._path(key)
        temp = f"{final}.tmp-{uuid.uuid4().hex[:8]}"
        parent = posixpath.dirname(final)
        try:
            self.fs.makedirs(parent, exist_ok=True)
            if self.is_local:
                if os.path.isdir(local_path):
                    shutil.copytree(local_path, temp)
                else:
                    shutil.copyfile(local_path, temp)
                os.replace(temp, final)
            else:
                # Object stores cannot rename (s3fs's mv of a folder fails on its pseudo-dirs). The
                # key is fresh and only the database row makes it visible, so write it in place.
                temp = final
                self.fs.put(local_path, final, recursive=os.path.isdir(local_path))
        except OSError as exc:
            self._remove_quietly(temp)
            raise CheckpointWriteError(f"could not write checkpoint {key!r} to {self.url}: {exc}") from exc
        return CheckpointRef(key=key, step=step, sha256=sha256, size=size)

    def copy(self, key: str, sha256: str, *, run: str, member_id: int, step: int) -> CheckpointRef:
        """Copy a checkpoint (after verifying it) to a new key owned by ``member_id``."""
        source = self.fetch(key, sha256)
        return self.put(source, run=run, member_id=member_id, step=step)

    def fetch(self, key: str, sha256: str) -> str:
        """A local path holding the checkpoint's verified bytes.

        Raises:
            CheckpointError: the checkpoint is missing.
            CorruptCheckpointError: its bytes do not match ``sha256``.
        """
        path = self._path(key)
        if not self.fs.exists(path):
            raise CheckpointError(f"checkpoint {key!r} is missing from {self.url}")
        if self.is_local:
            local = path
        else:
            cache = self._cache_dir or os.path.join(tempfile.gettempdir(), "pbtune-cache")
            local = os.path.join(cache, *key.split("/"))
            if not os.path.exists(local):
                os.makedirs(os.path.dirname(local), exist_ok=True)
                partial = f"{local}.part-{uuid.uuid4().hex[:8]}"
                self.fs.get(path, partial, recursive=self.fs.isdir(path))
                os.replace(partial, local)
        found, _ = digest(local)
        if found != sha256:
            raise CorruptCheckpointError(
                f"checkpoint {key!r} in {self.url} is corrupt: sha256 {found[:12]}... != recorded {sha256[:12]}..."
            )
        return local

    def delete(self, key: str) -> None:
        """Delete a checkpoint; a missing one is not an error."""
        self._remove_quietly(self._path(key))

    def exists(self, key: str) -> bool:
        return bool(self.fs.exists(self._path(key)))

    def _remove_quietly(self, path: str) -> None:
        try:
            if self.fs.exists(path):
                self.fs.rm(path, recursive=True)
        except OSError:
            pass


def digest(path: str) -> tuple[str, int]:
    """SHA-256 (hex) and size of a local file, or of a folder's (relative path, bytes) pairs in sorted order.

    This is the checksum the checkpoint store records.
    """
    hasher = hashlib.sha256()
    size = 0
    if os.path.isdir(path):
        files = sorted(
            os.path.relpath(os.path.join(d, f), path) for d, _, names in os.walk(path) for f in names
        )
        for rel in files:
            hasher.update(rel.replace(os.sep, "/").encode() + b"\0")
            size += _feed(hasher, os.path.join(path, rel))
    else:
        size = _feed(hasher, path)
    return hasher.hexdigest(), size


def _feed(hasher: Any, path: str) -> int:
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            hasher.update(chunk)
            size += len(chunk)
    return size
