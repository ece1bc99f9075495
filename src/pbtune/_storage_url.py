"""Which database URLs pbtune can open (shared by the config and the store; no SQLAlchemy import)."""

from __future__ import annotations

from typing import Any

from pbtune.errors import InvalidConfigError

_STORE_SCHEMES = ("sqlite", "postgresql")


def check_storage_url(url: Any, where: str = "config") -> str:
    """``url`` if it names a store pbtune can open (``sqlite:...`` or ``postgresql[+driver]:...``)."""
    has_scheme = isinstance(url, str) and "://" in url
    scheme = url.partition("://")[0] if has_scheme else ""
    if not has_scheme or scheme.partition("+")[0].lower() not in _STORE_SCHEMES:
        shown = f"{scheme}://..." if has_scheme else url  # never echo a password
        raise InvalidConfigError("storage", where, "a database URL such as sqlite:///pbt.db or"
                                 " postgresql+psycopg://user@host/db", shown)
    return url
