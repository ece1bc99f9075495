"""Population stores: where members, scores and lineage live."""

from __future__ import annotations

from pbtune.store.base import CheckpointRef, ExploitWrite, PopulationStore, ScorePoint
from pbtune.store.sql import SQLStore

__all__ = ["CheckpointRef", "ExploitWrite", "PopulationStore", "SQLStore", "ScorePoint", "open_store"]


def open_store(url: str, **kwargs: object) -> PopulationStore:
    """Open the store at a SQLAlchemy URL (``sqlite:///pbt.db``, ``postgresql+psycopg://...``).

    Example:
        >>> store = open_store("sqlite://")
        >>> store.list_runs()
        ()
    """
    return SQLStore(url, **kwargs)  # type: ignore[arg-type]
