"""Exceptions raised by pbtune. Every public error derives from :class:`PBTuneError`."""

from __future__ import annotations

from typing import Any

__all__ = [
    "PBTuneError",
    "InvalidConfigError",
    "StoreError",
    "NotFoundError",
    "DuplicateError",
    "MemberFinishedError",
    "IllegalTransitionError",
    "CheckpointError",
    "CheckpointWriteError",
    "ConfigMismatchError",
    "CorruptCheckpointError",
    "SchemaVersionError",
    "LeaseLostError",
]


class PBTuneError(Exception):
    """Base class of every pbtune error."""


class InvalidConfigError(PBTuneError, ValueError):
    """A configuration value is invalid.

    The message always has one shape: "`<field>` of `<where>` must be <constraint>; got <value>".
    """

    def __init__(self, field: str, where: str, constraint: str, value: Any) -> None:
        self.field = field
        self.where = where
        self.constraint = constraint
        self.value = value
        super().__init__(f"`{field}` of `{where}` must be {constraint}; got {value!r}")


class ConfigMismatchError(PBTuneError):
    """A run was resumed with a config that differs from the one it was created with.

    ``differences`` lists ``(field, stored, given)``.
    """

    def __init__(self, message: str, differences: list[tuple[str, Any, Any]]) -> None:
        self.differences = differences
        super().__init__(message)


class StoreError(PBTuneError):
    """The population store failed (driver error, lock held too long, lost connection)."""


class NotFoundError(PBTuneError, KeyError):
    """A run, member or checkpoint does not exist."""

    def __str__(self) -> str:  # KeyError quotes its message; we do not want that
        return str(self.args[0]) if self.args else ""


class DuplicateError(PBTuneError):
    """A run or member with that name already exists with a different definition."""


class IllegalTransitionError(PBTuneError):
    """A member state change that the state machine does not allow."""


class MemberFinishedError(IllegalTransitionError):
    """A finished or failed member was asked to change."""


class SchemaVersionError(StoreError):
    """The database was written by another schema version of pbtune."""


class CheckpointError(PBTuneError):
    """A checkpoint could not be written, read or copied."""


class CheckpointWriteError(CheckpointError):
    """Writing a checkpoint to the checkpoint store failed (disk full, storage unreachable): usually
    transient, so workers retry before they give up on the member."""


class CorruptCheckpointError(CheckpointError):
    """A checkpoint's content does not match the checksum recorded when it was saved."""


class LeaseLostError(PBTuneError):
    """This worker's lease on a member expired and another worker took the member over."""
