"""The Prefect API of a bare command-line run: a local server this process owns.

With no ``PREFECT_API_URL``, Prefect would start a temporary server as a child in the
terminal's process group. That child dies with the first Ctrl-C, before the run could
give its fair-use slots back; it keeps leases in memory, so nobody ever frees them; it
gives up after 20 s on a busy machine; and it is orphaned when its parent is killed. This
server differs in four ways:

- its own session: a Ctrl-C in the terminal reaches the command, not the server, and the
  command stops the server last;
- leases in files under ``$PREFECT_HOME`` (Prefect's filesystem lease storage), so a later
  run can give back the slots of a run that died (:mod:`studio_flows.tasks.slot_holders`);
- the time a busy machine needs to start (a first start migrates the database), saying so
  when it is slow;
- a watchdog in the server process: it stops when the command that started it is gone.

Example:
    >>> with local_prefect_api(notify=print) as api_url:  # doctest: +SKIP
    ...     generate_dataset(options)
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx

from studio_flows import interrupts
from studio_flows.errors import PrefectUnavailableError
from studio_flows.tasks.slots import LOCAL_SERVER_ENV

START_TIMEOUT_S = 300.0
SLOW_START_NOTICE_S = 15.0
STOP_TIMEOUT_S = 10.0

SERVER_MODULE = "studio_flows.cli.local_server"
FILESYSTEM_LEASES = "prefect.server.concurrency.lease_storage.filesystem"
SERVER_ENVIRONMENT = {
    "PREFECT_UI_ENABLED": "0",
    "PREFECT__SERVER_EPHEMERAL": "1",
    "PREFECT__SERVER_FINAL": "1",
    "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": FILESYSTEM_LEASES,
    "PREFECT_SERVER_LOGGING_LEVEL": "CRITICAL",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
}


def check_prefect_api(api_url: str, timeout_s: float = 10.0) -> None:
    """Raise :class:`PrefectUnavailableError` unless ``api_url`` answers its health check.

    ``timeout_s`` bounds each phase (connect, send, read): a server that accepts the
    connection and never answers fails the check like one that refuses it.
    """
    try:
        response = httpx.get(f"{api_url.rstrip('/')}/health", timeout=timeout_s)
        response.raise_for_status()
    except httpx.HTTPError as err:
        raise PrefectUnavailableError(
            f"The Prefect API at PREFECT_API_URL={api_url} does not answer "
            f"({_describe(err, timeout_s)}); start that server, or unset PREFECT_API_URL "
            "to run with a local one."
        ) from None


@contextlib.contextmanager
def prefect_api(notify: Callable[[str], None]) -> Iterator[str]:
    """The Prefect API a command uses: ``PREFECT_API_URL`` if set (checked), else a local one.

    Example:
        >>> with prefect_api(notify=print) as api_url:  # doctest: +SKIP
        ...     print(api_url)
        http://127.0.0.1:40123/api
    """
    from prefect.settings import get_current_settings

    from studio_flows.settings import load_settings

    configured = get_current_settings().api.url
    if configured:
        check_prefect_api(configured, load_settings().prefect_check_timeout_s)
        yield configured
        return
    with local_prefect_api(notify) as api_url:
        yield api_url


@contextlib.contextmanager
def local_prefect_api(notify: Callable[[str], None]) -> Iterator[str]:
    """Start a local Prefect server for this command, yield its API URL, stop it last."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    interrupts.check()  # asked to stop while Prefect loaded: start nothing
    notify("starting a local Prefect server for this run (set PREFECT_API_URL to use yours)")
    server = _start(notify)
    api_url = f"http://127.0.0.1:{server.port}/api"
    os.environ[LOCAL_SERVER_ENV] = api_url
    try:
        with temporary_settings(updates={PREFECT_API_URL: api_url}):
            yield api_url
    finally:
        _drain_prefect_workers()
        os.environ.pop(LOCAL_SERVER_ENV, None)
        server.stop()


def _drain_prefect_workers(timeout_s: float = 10.0) -> None:
    """Send the run's last logs and events while the server still listens.

    Prefect drains them at interpreter exit otherwise, against a stopped server, retrying
    for a minute and printing "Error logging to API".
    """
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=timeout_s)
    EventsWorker.drain_all(timeout=timeout_s)


class _ServerProcess:
    """The server's process (leader of its own session) and the port it listens on."""

    def __init__(self, port: int, log: Path) -> None:
        self.port = port
        self.log = log
        env = {**os.environ, **SERVER_ENVIRONMENT}
        env.pop("PREFECT_API_URL", None)
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "studio_flows.cli.local_server",
                    str(os.getpid()),
                    str(port),
                ],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def stop(self, *, at_once: bool = False) -> None:
        """Stop the server (``at_once``: SIGKILL, for one that never answered: no client
        holds anything there yet, and its database writes are transactions)."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL if at_once else signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        with contextlib.suppress(OSError):
            self.log.unlink()


def _start(notify: Callable[[str], None]) -> _ServerProcess:
    log = Path(tempfile.mkstemp(prefix="studio-flows-prefect-", suffix=".log")[1])
    server = _ServerProcess(_free_port(), log)
    started = time.monotonic()
    noticed = False
    try:
        while not _healthy(server.port):
            waited = time.monotonic() - started
            if server.process.poll() is not None:
                raise PrefectUnavailableError(_failed_start(server, "it exited"))
            if waited > START_TIMEOUT_S:
                raise PrefectUnavailableError(
                    _failed_start(server, f"it did not answer in {START_TIMEOUT_S:.0f} s")
                )
            if waited > SLOW_START_NOTICE_S and not noticed:
                noticed = True
                notify(
                    "the local Prefect server is slow to start (a busy machine, or a first start)"
                )
            interrupts.sleep(0.1)  # a Ctrl-C here stops the start (and the server) at once
    except BaseException:
        server.stop(at_once=True)
        raise
    return server


def _failed_start(server: _ServerProcess, what: str) -> str:
    tail = server.log.read_text(errors="replace").strip().splitlines()[-1:] or [""]
    detail = f": {tail[0][:200]}" if tail[0] else ""
    return (
        f"The local Prefect server could not start ({what}{detail}); set PREFECT_API_URL "
        "to a running Prefect server to use that instead."
    )


def _healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _describe(err: httpx.HTTPError, timeout_s: float) -> str:
    if isinstance(err, httpx.HTTPStatusError):
        return f"HTTP {err.response.status_code}"
    if isinstance(err, httpx.TimeoutException):
        return f"no answer within {timeout_s:g} s, MODEL_STUDIO_PREFECT_CHECK_TIMEOUT_S"
    return str(err) or type(err).__name__


# ------------------------------------------------------------------- the server process


def _watch_parent(parent_pid: int) -> None:
    """Stop this server once the command that started it is gone (SIGKILL, OOM)."""
    while os.getppid() == parent_pid:
        time.sleep(0.5)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(STOP_TIMEOUT_S)
    os._exit(0)


def _serve(parent_pid: int, port: int) -> None:
    import uvicorn

    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()
    uvicorn.run(
        "prefect.server.api.server:create_app",
        factory=True,
        host="127.0.0.1",
        port=port,
        log_level="error",
        lifespan="on",
    )


if __name__ == "__main__":
    _serve(int(sys.argv[1]), int(sys.argv[2]))
