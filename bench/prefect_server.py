"""A real ``prefect server start`` on a loopback port, for benchmarks and tests alike.

``prefect_test_harness`` runs an ephemeral server inside the calling process: it cannot be
reached by a worker in another process and never reclaims leases. :class:`PrefectServer`
starts the real thing, set up as measured on these machines: its own ``PREFECT_HOME``, a
SQLite database and filesystem lease storage in a temporary folder, analytics off, its own
process group (so ``uvicorn`` children go down with it), ``/api/health`` polled until it
answers. ``env()`` gives the environment a CLI or worker subprocess needs to talk to it;
``restart()`` keeps the database and lease files (for SIGKILL-recovery tests).

It lives in ``bench/`` because the benchmarks use it and must not import ``tests/``; the
pytest fixtures around it are in ``tests/fixtures/prefect_server.py``. It is not
``studio_flows.cli.local_server``: that one is the product's private server of a bare
``studio-flows generate`` (a watchdog on its parent, ephemeral settings, no ``--workers``,
no services, no restart on the same database), and a ``studio_flows.testing`` module would
ship in the wheel as public API for what only this repository runs.

Example:
    >>> with tempfile.TemporaryDirectory() as home:  # doctest: +SKIP
    ...     server = PrefectServer(Path(home)).start()
    ...     subprocess.run(["studio-flows", "generate", "p.jsonl"], env=server.env())
    ...     server.stop()
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from bench.common import free_port

PREFECT_CLI = [sys.executable, "-m", "prefect"]
STARTUP_TIMEOUT_S = 90.0  # ~10 s on a fresh database here; CI machines can be slower


def stop_process_group(process: subprocess.Popen[bytes], timeout_s: float = 15.0) -> None:
    """SIGTERM the process group of ``process``, SIGKILL it if it lingers."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=timeout_s)


class PrefectServer:
    """One ``prefect server start`` process; its state lives under ``home``."""

    def __init__(
        self,
        home: Path,
        port: int | None = None,
        *,
        server_env: dict[str, str] | None = None,
        workers: int = 1,
    ) -> None:
        self.home = home
        self.port = port or free_port()
        # Settings of the server only (its database, lease storage, messaging).
        self.server_env = server_env or {}
        self.workers = workers
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = home / "server.log"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def env(self, **extra: str) -> dict[str, str]:
        """Environment for a subprocess (CLI, worker) that talks to this server."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update(
            PREFECT_HOME=str(self.home / "client"),
            PREFECT_API_URL=self.api_url,
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            DO_NOT_TRACK="1",
        )
        env.update(extra)
        return env

    def _server_env(self) -> dict[str, str]:
        env = self.env(
            PREFECT_HOME=str(self.home / "server"),
            PREFECT_SERVER_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{self.home}/server.db",
            # Leases on disk survive a restart; the in-memory default would leak held slots.
            PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE=(
                "prefect.server.concurrency.lease_storage.filesystem"
            ),
            PREFECT_UI_ENABLED="false",
        )
        env.update(self.server_env)
        del env["PREFECT_API_URL"]
        return env

    def start(self) -> PrefectServer:
        """Start the server and return once ``/api/health`` answers."""
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError("the Prefect server is already running")
        self.home.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    *PREFECT_CLI,
                    *("server", "start", "--host", "127.0.0.1", "--port", str(self.port)),
                    *("--workers", str(self.workers)),
                ],
                env=self._server_env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stop() takes uvicorn too
            )
        try:
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def prepare(self) -> None:
        """Start and stop once with one API worker: it migrates the database and registers
        the block types. Two workers starting on a fresh database each do both, and one
        fails on a duplicate key (measured with Prefect 3.9.1)."""
        workers, self.workers = self.workers, 1
        try:
            self.start()
            self.stop()
        finally:
            self.workers = workers

    def start_services(self) -> subprocess.Popen[bytes]:
        """``prefect server services start`` (a server with ``--workers`` > 1 runs none)."""
        with (self.home / "services.log").open("ab") as log:
            return subprocess.Popen(
                [*PREFECT_CLI, "server", "services", "start"],
                env=self._server_env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def _wait_healthy(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"prefect server exited with {self.process.returncode}:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(f"{self.api_url}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.25)
        raise TimeoutError(
            f"prefect server not healthy after {STARTUP_TIMEOUT_S:.0f} s:\n{self.log_tail()}"
        )

    def stop(self) -> None:
        """Stop the server's whole process group."""
        if self.process is not None:
            stop_process_group(self.process)

    def restart(self) -> PrefectServer:
        """Stop and start again on the same port, database and lease storage."""
        self.stop()
        return self.start()

    def log_tail(self, lines: int = 40) -> str:
        """The end of the server's output, for failure messages."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "<no server log>"
