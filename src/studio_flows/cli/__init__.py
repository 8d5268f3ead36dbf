"""The ``studio-flows`` command line: demo, generate, results, emulator, serve, db, server.

One module per command group (:mod:`~studio_flows.cli.run`, :mod:`~studio_flows.cli.results`,
:mod:`~studio_flows.cli.emulator`, :mod:`~studio_flows.cli.serving`,
:mod:`~studio_flows.cli.db`, :mod:`~studio_flows.cli.server`) on one Typer app
(:mod:`~studio_flows.cli.app`). Prefect is imported only by the commands that run flows.

Exit codes: 0 every row completed, 1 some rows failed (listed), 2 bad input or
configuration (one paragraph, no traceback), 130 / 143 stopped by SIGINT / SIGTERM.
"""

from __future__ import annotations

import sys

from studio_flows.cli.quiet import quiet_environment

# Prefect reads its settings from the environment when imported: quiet it first.
quiet_environment()

from studio_flows.cli import (  # noqa: E402  (registers commands)
    db,
    emulator,
    results,
    run,
    scores,
    server,
    serving,
    training,
)
from studio_flows.cli.app import app, err_console  # noqa: E402

__all__ = [
    "app",
    "db",
    "emulator",
    "main",
    "results",
    "run",
    "scores",
    "server",
    "serving",
    "training",
]


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
