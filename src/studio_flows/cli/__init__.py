"""The ``studio-flows`` command line: demo, generate, results, emulator, serve, db, server.

One module per command group (:mod:`~studio_flows.cli.run`, :mod:`~studio_flows.cli.results`,
:mod:`~studio_flows.cli.emulator`, :mod:`~studio_flows.cli.serving`,
:mod:`~studio_flows.cli.db`, :mod:`~studio_flows.cli.server`) on one Typer app
(:mod:`~studio_flows.cli.app`). Prefect is imported only by the commands that run flows.

Exit codes: 0 every row completed, 1 some rows failed (listed), 2 bad input or
configuration (one paragraph, no traceback), 130 / 143 stopped by SIGINT / SIGTERM.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
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
    exit_code: list[int] = []
    atexit.register(_end_process, exit_code)  # runs last: after every handler Prefect adds
    try:
        try:
            app()
        except KeyboardInterrupt:
            err_console.print("interrupted")
            sys.exit(130)
    except SystemExit as done:
        code = done.code
        exit_code.append(code if isinstance(code, int) else 0 if code is None else 1)
        raise


def _end_process(exit_code: list[int]) -> None:
    """End a command that exited normally without finalising the interpreter.

    Freeing every object of the thousands of modules a flow run loads (Prefect, pydantic,
    SQLAlchemy) took 0.5-0.9 s after the last line was printed (bench/NOTES.md, item 31).
    By now Python has joined the threads that are not daemons and run every exit handler
    registered after this one (Prefect's among them); the logging handlers (registered
    before) are flushed here, and every committed row is on disk already (SQLite's WAL
    survives a process's end), so nothing is lost.
    """
    if not exit_code:
        return  # an uncaught error: Python ends as usual
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a closed pipe: nothing more to say
            stream.flush()
    os._exit(exit_code[0])


if __name__ == "__main__":
    main()
