"""The ``pbtune`` command's entry point (also ``python -m pbtune``).

For ``pbtune run`` on local workers it starts the workers' zygote first, and has it import the
config's trainable, so that process imports pbtune's worker code and the user's model (torch...)
while this one imports the CLI (see :mod:`pbtune.engine._zygote`).
"""

from __future__ import annotations

import sys


def _config_trainable(args: list[str]) -> str | None:
    """The trainable named by ``pbtune run``'s config file, read ahead of the CLI; None if unsure
    (the CLI reads the config again and reports its errors)."""
    paths = [arg for arg in args if arg.endswith((".json", ".yaml", ".yml")) and not arg.startswith("-")]
    if len(paths) != 1:
        return None
    try:
        from pbtune.config import load_config

        trainable = load_config(paths[0]).trainable
    except Exception:  # noqa: BLE001 - a guess only: the CLI reads the config itself
        return None
    return trainable if isinstance(trainable, str) else None


def main() -> None:
    argv = sys.argv[1:]
    if argv[:1] == ["run"] and not any(arg.startswith("--launcher") for arg in argv):
        from pbtune.engine import _zygote

        _zygote.prestart(_config_trainable(argv[1:]))
    from pbtune.cli import command_app

    command_app(argv)(prog_name="pbtune")


if __name__ == "__main__":
    main()
