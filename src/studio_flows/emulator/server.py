"""Serving the emulator: in a thread of this process, or in the foreground."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import uvicorn
from fastapi import FastAPI
from uvicorn.config import LOGGING_CONFIG

from studio_flows.emulator.app import create_app
from studio_flows.emulator.config import Clock, EmulatorConfig
from studio_flows.emulator.responses import _DroppingH11Protocol
from studio_flows.emulator.state import EmulatorState
from studio_flows.errors import ConfigurationError


def _uvicorn_config(app: FastAPI, host: str, port: int, *, quiet: bool) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=_DroppingH11Protocol,
        ws="none",
        lifespan="off",
        access_log=False,
        log_level="warning",
        # Quiet (tests, demo): leave logging alone so uvicorn adds no handler of its own.
        log_config=None if quiet else LOGGING_CONFIG,
        timeout_graceful_shutdown=2,
    )


def serve(
    config: EmulatorConfig, host: str, port: int, *, on_listening: Callable[[], None] | None = None
) -> None:
    """Run the emulator in the foreground until Ctrl-C or SIGTERM (``studio-flows emulator``).

    ``on_listening`` is called once the port is bound, before requests are served.

    Example:
        >>> serve(EmulatorConfig(), "127.0.0.1", 8000)  # doctest: +SKIP
    """
    sock = _listening_socket(host, port)
    if on_listening is not None:
        on_listening()
    server = uvicorn.Server(_uvicorn_config(create_app(config), host, port, quiet=False))
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        # uvicorn shuts down on Ctrl-C, then re-raises the signal: stopping is the normal end.
        pass
    finally:
        sock.close()


def _listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``(host, port)``; a port in use is a :class:`ConfigurationError`."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY on accepted sockets only when
    # the listener says TCP, and without it Nagle's algorithm adds ~40 ms per response.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise ConfigurationError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None
    # Listening at once queues early connections until uvicorn serves, instead of refusing them.
    sock.listen(2048)
    return sock


class EmulatorServer:
    """The emulator on a loopback port, served by uvicorn in a background daemon thread.

    Example:
        >>> with EmulatorServer(EmulatorConfig(job_latency_s=0.05)) as server:  # doctest: +SKIP
        ...     client = ModelStudioClient(base_url=server.base_url, token=server.token,
        ...                                organization_id="org")
        ...     server.configure(rate_429=0.1)
        ...     server.stats()["jobs_created"]
        0
    """

    def __init__(
        self,
        config: EmulatorConfig | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        clock: Clock = time.monotonic,
    ) -> None:
        # ``clock``: jobs' times are read from it (a test may pass one it moves by hand).
        self.app = create_app(config or EmulatorConfig(), clock=clock)
        self.state: EmulatorState = self.app.state.emulator
        self.host = host
        self.port = port
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None

    @property
    def root_url(self) -> str:
        """``http://host:port``, where the control endpoints live."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The API base URL, prefix included: pass it as the client's ``base_url``."""
        return self.root_url + self.state.config.prefix

    @property
    def token(self) -> str:
        """The first accepted token."""
        return self.state.config.tokens[0]

    def stats(self) -> dict[str, Any]:
        """See :meth:`EmulatorState.stats`."""
        return self.state.stats()

    def jobs(self) -> list[dict[str, Any]]:
        """See :meth:`EmulatorState.jobs`."""
        return self.state.jobs()

    def configure(self, **knobs: Any) -> EmulatorConfig:
        """Change knobs at run time; raises ``pydantic.ValidationError`` for a bad one."""
        return self.state.configure(knobs)

    def reset(self) -> None:
        """Forget every job and count; re-seed."""
        self.state.reset()

    def start(self, timeout_s: float = 10.0) -> EmulatorServer:
        """Start serving; return once the port accepts connections."""
        if self._thread is not None:
            raise RuntimeError("the emulator is already running")
        # Binding here, not in uvicorn, tells us the free port the OS chose for port 0.
        sock = self._socket = _listening_socket(self.host, self.port)
        self.port = sock.getsockname()[1]
        server = uvicorn.Server(_uvicorn_config(self.app, self.host, self.port, quiet=True))
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="model-studio-emulator", daemon=True
        )
        self._server, self._thread = server, thread
        thread.start()
        deadline = time.monotonic() + timeout_s
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the emulator did not start on {self.root_url}")
            time.sleep(0.01)  # uvicorn offers no event to wait on, only this flag
        return self

    def stop(self) -> None:
        """Stop serving and wait for the thread to end."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._socket is not None:
            self._socket.close()  # uvicorn closes it too, unless it never started
        self._server, self._thread, self._socket = None, None, None

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
