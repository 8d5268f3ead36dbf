"""The HTTP answers the emulator sends, a dropped connection among them."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import Response
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from studio_flows.emulator.config import DROP_CONNECTION_EXTENSION


class _Drop(Response):
    """A 'response' that closes the connection without sending a byte.

    Starlette calls a response as an ASGI app; this one asks the server, through the scope
    extension installed by :class:`_DroppingH11Protocol`, to abort the transport, then
    waits until the server has noticed the disconnect. Returning earlier would make
    uvicorn log "returned without starting response" and try to send a 500.
    """

    def __init__(self) -> None:
        super().__init__(status_code=500)  # never sent

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        drop = scope.get("extensions", {}).get(DROP_CONNECTION_EXTENSION)
        if drop is None:
            raise RuntimeError(
                "dropping a connection needs the emulator's uvicorn protocol: "
                "run the app with EmulatorServer or serve()"
            )
        drop()
        while (await receive())["type"] != "http.disconnect":
            pass


class _DroppingH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, plus a way for the app to close a connection unanswered.

    ASGI has no message for "close without a response": an app that returns without
    answering gets a 500 from uvicorn. So each request's scope gets the extension
    :data:`DROP_CONNECTION_EXTENSION`, a callable that aborts this connection's transport.
    The client then sees the socket close (``httpx.RemoteProtocolError``) or reset
    (``httpx.ReadError``), never a status code.
    """

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        app: ASGIApp = self.app

        async def app_with_drop(scope: Scope, receive: Receive, send: Send) -> None:
            scope.setdefault("extensions", {})[DROP_CONNECTION_EXTENSION] = transport.abort
            await app(scope, receive, send)

        self.app = app_with_drop


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse(body, status_code=status, headers=headers)


def _seconds_header(seconds: float) -> str:
    """``Retry-After`` text: ``2`` for whole seconds, else a decimal such as ``0.25``."""
    if float(seconds).is_integer():
        return str(int(seconds))
    return format(seconds, "f").rstrip("0").rstrip(".")  # never "1e-05": clients parse floats
