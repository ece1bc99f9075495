"""Show the live population of a server: ``pbtune server-status URL`` (and ``pbtune status --server URL``)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from pbtune.server import require_extra
from pbtune.server._wire import float_from_wire
from pbtune.server.errors import ServerUnavailableError, error_from_wire

__all__ = ["fetch_population", "population_table", "show_population", "show_server_status", "read_key_file"]


def read_key_file(path: str) -> str:
    """The shared key in ``path`` (surrounding whitespace stripped).

    Raises:
        InvalidConfigError: unreadable or empty file.
    """
    from pbtune.errors import InvalidConfigError

    try:
        with open(path, encoding="utf-8") as handle:
            key = handle.read().strip()
    except OSError as exc:
        raise InvalidConfigError("auth_key_file", "pbtune server", f"a readable file ({exc.strerror})", path) from None
    if not key:
        raise InvalidConfigError("auth_key_file", "pbtune server", "a file holding a non-empty key", path)
    return key


def fetch_population(url: str, auth_key: str, *, verify: bool | str = True, timeout: float = 10.0) -> dict[str, Any]:
    """``GET {url}/population`` as a dict.

    Raises:
        ServerUnavailableError: the server cannot be reached.
        AuthenticationError: wrong key.
    """
    httpx = require_extra("httpx")
    from pbtune.server._http import tls_verify

    try:
        response = httpx.get(f"{url.rstrip('/')}/population", headers={"Authorization": f"Bearer {auth_key}"},
                             verify=tls_verify(verify), timeout=timeout)
    except httpx.TransportError as exc:
        raise ServerUnavailableError(f"cannot reach the pbtune server at {url}: {exc}") from exc
    if not response.is_success:
        try:
            body: Any = response.json()
        except ValueError:
            body = response.text
        raise error_from_wire(response.status_code, body)
    return response.json()  # type: ignore[no-any-return]


def _fmt_hparams(hparams: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in hparams.items())


def population_table(view: dict[str, Any]) -> Table:
    """A rich table of ``GET /population``'s answer (* marks the best member)."""
    table = Table(title=f"run {view['run']} (live)")
    for column in ("member", "state", "step", "score", "hparams", "client"):
        table.add_column(column, justify="right" if column in ("member", "step", "score") else "left")
    for m in view.get("members", []):
        score = m.get("score")
        shown = "-" if score is None else f"{float_from_wire(score):.6g}"
        mark = " *" if m["member_id"] == view.get("best") else ""
        gone = bool(m.get("gone"))  # its client exited without finish() or died: not `running`
        client = f"({m.get('client')}: lease expired)" if gone else m.get("client") or ""
        table.add_row(f"{m['member_id']}{mark}", "gone" if gone else m["state"], str(m["step"]), shown,
                      _fmt_hparams(m["hparams"]), client)
    return table


def show_population(url: str, auth_key: str, *, as_json: bool = False, verify: bool | str = True,
                    console: Console | None = None) -> dict[str, Any]:
    """Print the live population of the server at ``url`` as a table (or JSON); return it."""
    import json

    view = fetch_population(url, auth_key, verify=verify)
    console = console or Console()
    if as_json:
        console.print_json(json.dumps(view))
        return view
    if not view.get("created"):
        console.print(f"run {view['run']!r} is not created yet: no client has joined with a space")
        return view
    console.print(population_table(view))
    members = view["members"]
    done = sum(m["state"] in ("finished", "failed") for m in members)
    console.print(f"{done}/{len(members)} members done; mode {view['mode']}")
    return view


def show_server_status(server_url: str, auth_key_file: str, *, as_json: bool = False, cacert: str | None = None,
                       console: Console | None = None) -> dict[str, Any]:
    """What ``pbtune status --server URL --auth-key-file F`` prints (one call for the CLI).

    Raises:
        InvalidConfigError: unreadable key file.
        ServerUnavailableError / AuthenticationError / ServerError: the server could not answer.
    """
    return show_population(server_url, read_key_file(auth_key_file), as_json=as_json, verify=cacert or True,
                           console=console)
