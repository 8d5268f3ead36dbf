"""The local Prefect server's own process: Prefect's ``prefect server start``, plus a watchdog.

Started by :mod:`studio_flows.cli.local_server` in a session of its own as
``python -m studio_flows.cli.local_server_process FOLDER PORT IDLE_S``. It runs Prefect's
own ``prefect server start`` in the foreground, in this process (``--background`` would
hand the server's output to a pipe that closes at once and leave no place for the
watchdog), and a thread that stops the server once no command has used it for ``IDLE_S``.

Example:
    >>> serve(Path("/home/me/.prefect/studio-flows"), 40123, 3600.0)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import sys
import threading
import time
from pathlib import Path

from studio_flows.cli.local_server import ServerFiles, in_use, read_server

LONGEST_CHECK_S = 30.0


def serve(folder: Path, port: int, idle_s: float) -> None:
    """Run the server on ``127.0.0.1:port`` until it is idle for ``idle_s`` or signalled."""
    files = ServerFiles(folder)
    threading.Thread(target=_watch_idle, args=(files, idle_s), daemon=True).start()
    from prefect.cli import app

    sys.argv = [
        "prefect",
        "server",
        "start",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--ui",
        "--analytics-off",
        "--log-level",
        "WARNING",
    ]
    app()


def _watch_idle(files: ServerFiles, idle_s: float) -> None:
    """SIGTERM this process once no command used it for ``idle_s`` (uvicorn ends gracefully)."""
    check_s = min(max(idle_s / 4, 0.1), LONGEST_CHECK_S)
    last_use = time.time()
    while True:
        time.sleep(check_s)
        try:
            lock = files.lock.open("a")
        except FileNotFoundError:  # its PREFECT_HOME was deleted: no command finds it again
            os.kill(os.getpid(), signal.SIGTERM)
            return
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # a command starts, replaces or stops a server: look later
            lock.close()
            continue
        if in_use(files):
            last_use = time.time()
        else:
            with contextlib.suppress(OSError):
                last_use = max(last_use, files.users.stat().st_mtime)
        if time.time() - last_use < idle_s:
            lock.close()
            continue
        # Idle: forget the server and stop, keeping the lock until this process ends, so
        # the next command starts a new server only once this one let go of its database.
        _forget(files)
        os.kill(os.getpid(), signal.SIGTERM)
        return


def _forget(files: ServerFiles) -> None:
    """Remove the state file if it still names this process."""
    server = read_server(files)
    if server is not None and server.pid == os.getpid():
        with contextlib.suppress(OSError):
            files.state.unlink()


if __name__ == "__main__":
    serve(Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]))
