"""The PBT server and its HTTP client: members in other processes and on other machines.

The server needs FastAPI and uvicorn, the client httpx (``pip install 'pbtune[server]'``);
they are imported only when used.

Example::

    # on one machine
    from pbtune.server import PBTServer
    PBTServer(8000, key, True, host="0.0.0.0", storage="sqlite:///pbt.db").serve()  # serves at construction

    # in each training script
    from pbtune.server import PBTClient
    client = PBTClient("server-host", 8000, key, "space.csv")
"""

from __future__ import annotations

import importlib
from typing import Any

from pbtune.server.errors import (
    AuthenticationError,
    GenerationTimeoutError,
    GenerationWaitError,
    PopulationFullError,
    ServerError,
    ServerUnavailableError,
)
from pbtune.server.space_files import load_space_file, parse_space_csv

__all__ = [
    "AuthenticationError",
    "GenerationTimeoutError",
    "GenerationWaitError",
    "PBTClient",
    "PBTServer",
    "PopulationFullError",
    "ServerError",
    "ServerUnavailableError",
    "create_app",
    "load_space_file",
    "parse_space_csv",
    "require_extra",
]

_LAZY = {
    "PBTClient": "pbtune.server.client",
    "PBTServer": "pbtune.server.runner",
    "create_app": "pbtune.server.app",
}
_EXTRA_MODULES = ("fastapi", "uvicorn", "httpx", "starlette", "pydantic", "anyio")


def require_extra(module_name: str) -> Any:
    """Import a server module, turning a missing optional dependency into an actionable error."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] in _EXTRA_MODULES:
            raise ModuleNotFoundError(
                f"the pbtune server and client need {exc.name}: pip install 'pbtune[server]'", name=exc.name
            ) from exc
        raise


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'pbtune.server' has no attribute {name!r}")
    return getattr(require_extra(module_name), name)
