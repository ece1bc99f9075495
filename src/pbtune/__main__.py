"""The ``pbtune`` command's entry point (also ``python -m pbtune``).

For ``pbtune run`` on local workers it starts the workers' zygote first, so that process imports
pbtune's worker code while this one imports the CLI (see :mod:`pbtune.engine._zygote`).
"""

from __future__ import annotations

import sys


def main() -> None:
    argv = sys.argv[1:]
    if argv[:1] == ["run"] and not any(arg.startswith("--launcher") for arg in argv):
        from pbtune.engine import _zygote

        _zygote.prestart()
    from pbtune.cli import app

    app(prog_name="pbtune")


if __name__ == "__main__":
    main()
