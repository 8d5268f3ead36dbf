"""The Prefect API of a bare command-line run: the one local server of this ``PREFECT_HOME``.

With no ``PREFECT_API_URL``, Prefect would start a temporary server per process, as a
child in the terminal's process group: it dies with the first Ctrl-C, runs no lease
repossessor, and costs seconds on every command. Instead every bare command shares one
server per ``PREFECT_HOME`` (:mod:`studio_flows.cli.local_server_process` runs it):

- started on first use, in its own session (a Ctrl-C in the terminal never reaches it),
  non-ephemeral (its repossessor gives back the leases nobody renews), leases in files
  under ``$PREFECT_HOME`` (Prefect's filesystem lease storage), UI on, analytics off;
- reused by every later and every concurrent command: its port and pid are in
  ``$PREFECT_HOME/studio-flows/local-server.json``, written under an ``flock`` that makes
  two first runs start one server;
- replaced when it is dead or does not answer its health check;
- stopped after ``MODEL_STUDIO_LOCAL_SERVER_IDLE_S`` without a command using it, or by
  ``studio-flows server stop``.

Example:
    >>> with prefect_api(notify=print) as api_url:  # doctest: +SKIP
    ...     generate_dataset(options)
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import IO

import httpx

from studio_flows import interrupts
from studio_flows.errors import PrefectUnavailableError

START_TIMEOUT_S = 300.0
SLOW_START_NOTICE_S = 15.0
STOP_TIMEOUT_S = 15.0
LOCK_POLL_S = 0.1

SERVER_MODULE = "studio_flows.cli.local_server_process"
FILESYSTEM_LEASES = "prefect.server.concurrency.lease_storage.filesystem"
SERVER_ENVIRONMENT = {
    "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": FILESYSTEM_LEASES,
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_UI_ENABLED": "true",
    "DO_NOT_TRACK": "1",
}
# What the server must not inherit from the command that starts it: the command's own
# API setting, the ephemeral switch, and every MODEL_STUDIO_* value (the token above all).
NOT_INHERITED = ("PREFECT_API_URL", "PREFECT__SERVER_EPHEMERAL", "PREFECT__SERVER_FINAL")


@dataclass(frozen=True)
class ServerFiles:
    """The files of the local server of one ``PREFECT_HOME``.

    Example:
        >>> ServerFiles.of(Path("/home/me/.prefect")).state.name
        'local-server.json'
    """

    folder: Path

    @classmethod
    def of(cls, home: Path) -> ServerFiles:
        folder = home / "studio-flows"
        folder.mkdir(parents=True, exist_ok=True)
        return cls(folder)

    @property
    def state(self) -> Path:
        """Where the running server's pid, port and start time are recorded."""
        return self.folder / "local-server.json"

    @property
    def lock(self) -> Path:
        """Held to start, replace or stop the server (and by its idle watchdog to stop)."""
        return self.folder / "local-server.lock"

    @property
    def users(self) -> Path:
        """Shared-locked by each command while it uses the server; its mtime is the last use."""
        return self.folder / "local-server.users"

    @property
    def log(self) -> Path:
        """The server's own output (the reason a start failed)."""
        return self.folder / "local-server.log"


@dataclass(frozen=True)
class LocalServer:
    """A local server as its state file records it."""

    pid: int
    port: int
    started_at: float
    ready: bool = False  # it answered once: not answering now means it hangs

    @property
    def url(self) -> str:
        """Its Prefect UI."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.url}/api"

    def uptime(self) -> str:
        """How long it has run, e.g. ``"3 min 20 s"``."""
        seconds = int(time.time() - self.started_at)
        hours, rest = divmod(seconds, 3600)
        minutes, seconds = divmod(rest, 60)
        if hours:
            return f"{hours} h {minutes} min"
        return f"{minutes} min {seconds} s" if minutes else f"{seconds} s"


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


def _to_stderr(message: str) -> None:
    print(message, file=sys.stderr)


def _nothing() -> None:
    pass


@contextlib.contextmanager
def prefect_api(
    notify: Callable[[str], None] = _to_stderr, while_starting: Callable[[], object] = _nothing
) -> Iterator[str]:
    """The Prefect API a command uses: ``PREFECT_API_URL`` if set (checked), else a local one.

    ``while_starting`` is work that needs no Prefect API (imports): it runs while a local
    server starts, which takes seconds, or before the API is used when none has to start.

    Public as ``studio_flows.prefect_api`` for a user's own script that runs a flow with
    no Prefect server named: without it Prefect starts a temporary server inside that
    process on every run (seconds of start-up, its own SQLite, no lease repossessor),
    where inside it the flow runs on the local server every ``studio-flows`` command shares.
    Flow runs on the local server send no heartbeats (see :func:`local_prefect_api`).

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
        while_starting()
        yield configured
        return
    with local_prefect_api(notify, while_starting) as api_url:
        yield api_url


@contextlib.contextmanager
def local_prefect_api(
    notify: Callable[[str], None], while_starting: Callable[[], object] = _nothing
) -> Iterator[str]:
    """Use (starting it if needed) the local server of this ``PREFECT_HOME``; yield its API.

    The server stays on after the command: only its idle watchdog or
    ``studio-flows server stop`` stops it. ``while_starting``: see :func:`prefect_api`.
    """
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from studio_flows.settings import load_settings

    interrupts.check()  # asked to stop while Prefect loaded: start nothing
    settings = load_settings()
    files = ServerFiles.of(prefect_home())
    pending = [while_starting]  # run once: by a start, else once attached

    def run_pending() -> None:
        while pending:
            pending.pop()()

    with _using(files) as users:
        # A server that starts runs the work while it starts; a running one, after the
        # lock is let go (another command may be waiting to attach).
        server = _attach(
            files,
            notify,
            settings.local_server_idle_s,
            settings.prefect_check_timeout_s,
            run_pending,
        )
        run_pending()
        _touch(users)
        try:
            # No flow-run heartbeats here: they serve only an automation that marks silent
            # runs crashed, which a local server has only if its user made one (a killed
            # run resumes from its own records), and Prefect ends every flow run by waiting
            # up to a second for the heartbeat thread's sleep (bench/NOTES.md, item 31).
            local = {PREFECT_API_URL: server.api_url, "flows.heartbeat_frequency": None}
            with temporary_settings(updates=local):
                yield server.api_url
        finally:
            _drain_prefect_workers()
            _touch(users)


def prefect_home() -> Path:
    """This process's ``PREFECT_HOME`` (created when missing)."""
    from prefect.settings import get_current_settings

    home = Path(get_current_settings().home).expanduser()
    home.mkdir(parents=True, exist_ok=True)
    return home


def _attach(
    files: ServerFiles,
    notify: Callable[[str], None],
    idle_s: float,
    check_timeout_s: float,
    while_starting: Callable[[], object],
) -> LocalServer:
    """The running server of ``files``, started or replaced when needed (under the lock);
    ``while_starting`` runs while a server this call starts starts."""
    with _locked(files.lock):
        server = read_server(files)
        if server is not None:
            problem = _problem(files, server, check_timeout_s, notify)
            if problem is None:
                notify(
                    f"using the local Prefect server at {server.url} (up {server.uptime()}; "
                    "set PREFECT_API_URL to use another)"
                )
                return server
            notify(f"the local Prefect server at {server.url} {problem}; starting a new one")
            if _is_ours(server.pid):  # not a process that got the dead server's pid since
                _terminate(server, at_once=True)
            files.state.unlink(missing_ok=True)
        return _start(files, notify, idle_s, while_starting)


def _problem(
    files: ServerFiles, server: LocalServer, check_timeout_s: float, notify: Callable[[str], None]
) -> str | None:
    """Why ``server`` cannot be used (None: it answers), waiting for one still starting."""
    if not _is_ours(server.pid):
        return "is gone"
    if _healthy(server.port, check_timeout_s):
        return None
    if not server.ready and time.time() - server.started_at < START_TIMEOUT_S:
        # Another command started it and was stopped before it answered: wait for it.
        try:
            _wait_until_healthy(server, notify, log=None)
        except PrefectUnavailableError:
            return "did not start"
        _write_state(files, replace(server, ready=True))
        return None
    return f"did not answer its health check in {check_timeout_s:g} s"


def read_server(files: ServerFiles) -> LocalServer | None:
    """The server the state file records, or None."""
    try:
        return LocalServer(**json.loads(files.state.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None


def _start(
    files: ServerFiles,
    notify: Callable[[str], None],
    idle_s: float,
    while_starting: Callable[[], object],
) -> LocalServer:
    port = _free_port()
    notify(
        f"starting the local Prefect server of PREFECT_HOME at http://127.0.0.1:{port} "
        "(it stays on for later runs; `studio-flows server stop` stops it)"
    )
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in NOT_INHERITED and not key.startswith("MODEL_STUDIO_")
    }
    env.update(SERVER_ENVIRONMENT)
    with files.log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", SERVER_MODULE, str(files.folder), str(port), str(idle_s)],
            env=env,
            cwd=files.folder,  # not the user's folder: it may be deleted while the server runs
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C in the terminal does not reach it
        )
    server = LocalServer(pid=process.pid, port=port, started_at=time.time())
    _write_state(files, server)  # recorded at once: a command stopped now leaves it findable
    try:
        while_starting()  # the seconds the server takes to start pay for it
        _wait_until_healthy(server, notify, log=files.log, process=process)
    except PrefectUnavailableError:
        _terminate(server, at_once=True)
        files.state.unlink(missing_ok=True)
        raise
    server = replace(server, ready=True)
    _write_state(files, server)
    return server


def _wait_until_healthy(
    server: LocalServer,
    notify: Callable[[str], None],
    log: Path | None,
    process: subprocess.Popen[bytes] | None = None,
) -> None:
    noticed = False
    while not _healthy(server.port, 2.0):
        waited = time.time() - server.started_at
        exited = process.poll() is not None if process is not None else not _is_ours(server.pid)
        if exited:
            raise PrefectUnavailableError(_failed_start(log, "it exited"))
        if waited > START_TIMEOUT_S:
            raise PrefectUnavailableError(
                _failed_start(log, f"it did not answer in {START_TIMEOUT_S:.0f} s")
            )
        if waited > SLOW_START_NOTICE_S and not noticed:
            noticed = True
            notify("the local Prefect server is slow to start (a busy machine, or a first start)")
        interrupts.sleep(0.1)  # a Ctrl-C stops the wait; the server goes on starting


def stop_server(files: ServerFiles) -> LocalServer | None:
    """Stop the local server of ``files`` (None: none was running).

    Example:
        >>> stop_server(ServerFiles.of(prefect_home()))  # doctest: +SKIP
        LocalServer(pid=4242, port=40123, started_at=1765000000.0)
    """
    with _locked(files.lock):
        server = read_server(files)
        if server is not None:
            files.state.unlink(missing_ok=True)
            if _is_ours(server.pid):
                _terminate(server)
                return server
    return None


def in_use(files: ServerFiles) -> bool:
    """True while a command holds the server (its shared lock on the users file)."""
    with files.users.open("a") as users:
        try:
            fcntl.flock(users.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(users.fileno(), fcntl.LOCK_UN)
        return False


def _terminate(server: LocalServer, *, at_once: bool = False) -> None:
    """SIGTERM the server's session (SIGKILL when ``at_once`` or when it does not end)."""
    first = signal.SIGKILL if at_once else signal.SIGTERM
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(server.pid, first)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while _alive(server.pid):
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(server.pid, signal.SIGKILL)
            deadline = time.monotonic() + STOP_TIMEOUT_S
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie child of this process counts as ended)."""
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_ours(pid: int) -> bool:
    """True if ``pid`` runs and is a local server (not another process that got the pid)."""
    if not _alive(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc (macOS): trust the pid
    return SERVER_MODULE.encode() in cmdline


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path``; a Ctrl-C stops the wait for it."""
    with path.open("a") as file:
        while True:
            try:
                fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                interrupts.sleep(LOCK_POLL_S)
        yield  # closing the file drops the lock


@contextlib.contextmanager
def _using(files: ServerFiles) -> Iterator[IO[str]]:
    """Hold the shared lock that tells the idle watchdog a command uses the server."""
    with files.users.open("a") as users:
        fcntl.flock(users.fileno(), fcntl.LOCK_SH)
        yield users


def _touch(users: IO[str]) -> None:
    with contextlib.suppress(OSError):
        os.utime(users.fileno())


def _write_state(files: ServerFiles, server: LocalServer) -> None:
    partial = files.state.with_suffix(".partial")
    partial.write_text(json.dumps(asdict(server)), encoding="utf-8")
    partial.replace(files.state)


def _drain_prefect_workers(timeout_s: float = 10.0) -> None:
    """Send the run's last logs and events before the command exits.

    Prefect drains them at interpreter exit otherwise, retrying for a minute when the
    server went away meanwhile and printing "Error logging to API".
    """
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=timeout_s)
    EventsWorker.drain_all(timeout=timeout_s)


def _failed_start(log: Path | None, what: str) -> str:
    lines = log.read_text(errors="replace").strip().splitlines() if log and log.exists() else []
    tail = lines[-1][:200] if lines else ""
    detail = f": {tail}" if tail else ""
    return (
        f"The local Prefect server could not start ({what}{detail}); set PREFECT_API_URL "
        "to a running Prefect server to use that instead."
    )


def _healthy(port: int, timeout_s: float) -> bool:
    try:
        url = f"http://127.0.0.1:{port}/api/health"
        # Plain HTTP on loopback: verify=False skips loading the CA bundle (0.1-0.3 s).
        return httpx.get(url, timeout=timeout_s, verify=False).status_code == 200
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
