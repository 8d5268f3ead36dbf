"""`studio-flows server status|stop`: the local Prefect server of this ``PREFECT_HOME``."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

import typer

from studio_flows.cli.app import _clear_errors, app, console

server_app = typer.Typer(
    name="server",
    help="The local Prefect server bare runs share (one per PREFECT_HOME): status, stop.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(server_app)


@dataclass(frozen=True)
class LeaseLine:
    """One lease of a concurrency limit, as the local server's lease files keep it."""

    lease_id: uuid.UUID
    slots: int
    expires_in_s: float
    holder: str

    def __str__(self) -> str:
        return (
            f"lease {str(self.lease_id)[:8]}: {self.slots} slot(s), {self.holder}, "
            f"expires in {self.expires_in_s:.0f} s"
        )


@server_app.command("status")
def status_command() -> None:
    """Print the local server's URL (its Prefect UI), uptime and the fair-use slots' holders."""
    from studio_flows.cli.local_server import ServerFiles, _healthy, prefect_home, read_server

    with _clear_errors():
        home = prefect_home()
        server = read_server(ServerFiles.of(home))
        if server is None:
            console.print(f"No local Prefect server runs for PREFECT_HOME={home}.")
            return
        if not _healthy(server.port, 5.0):
            console.print(
                f"The local Prefect server at {server.url} (pid {server.pid}) does not answer; "
                "the next run replaces it."
            )
            raise typer.Exit(1)
        console.print(
            f"Local Prefect server of PREFECT_HOME={home}: {server.url} "
            f"(pid {server.pid}, up {server.uptime()})",
            highlight=False,
            soft_wrap=True,
        )
        for line in _limit_lines(server.api_url):
            console.print(line, highlight=False, soft_wrap=True)


@server_app.command("stop")
def stop_command() -> None:
    """Stop the local server (the next bare run starts a new one)."""
    from studio_flows.cli.local_server import ServerFiles, in_use, prefect_home, stop_server

    with _clear_errors():
        home = prefect_home()
        files = ServerFiles.of(home)
        busy = in_use(files)
        server = stop_server(files)
        if server is None:
            console.print(f"No local Prefect server runs for PREFECT_HOME={home}.")
            return
        note = " (a run was still using it)" if busy else ""
        console.print(
            f"Stopped the local Prefect server at {server.url} after {server.uptime()}{note}.",
            highlight=False,
            soft_wrap=True,
        )


def _limit_lines(api_url: str) -> list[str]:
    """A line per global concurrency limit, then a line per lease that holds its slots."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api_url}), get_client(sync_client=True) as c:
        limits = c.read_global_concurrency_limits(limit=100)
    if not limits:
        return ["No concurrency limit yet (the first run creates tag:model-studio)."]
    lines = []
    for limit in limits:
        lines.append(f"{limit.name}: {limit.active_slots} of {limit.limit} slots taken")
        lines += [f"  {lease}" for lease in _leases_of(limit.id)]
    return lines


def _leases_of(limit_id: uuid.UUID) -> list[LeaseLine]:
    """The live leases of ``limit_id`` in the local server's lease files."""
    from prefect.server.concurrency.lease_storage.filesystem import ConcurrencyLeaseStorage
    from prefect.utilities.asyncutils import run_coro_as_sync

    async def read() -> list[LeaseLine]:
        storage = ConcurrencyLeaseStorage()
        found = []
        for lease_id in await storage.read_active_lease_ids(limit=1000):
            lease = await storage.read_lease(lease_id)
            if lease is None or limit_id not in lease.resource_ids:
                continue
            found.append(
                LeaseLine(
                    lease_id=lease_id,
                    slots=lease.metadata.slots if lease.metadata else 0,
                    expires_in_s=lease.expiration.timestamp() - time.time(),
                    holder=_holder(lease),
                )
            )
        return found

    return run_coro_as_sync(read()) or []


def _holder(lease: object) -> str:
    """Who the lease's taker named (the task run, else the flow run), as the server keeps it."""
    held_by = getattr(getattr(lease, "metadata", None), "holder", None)
    return f"held by {held_by.type} {held_by.id}" if held_by is not None else "holder not recorded"
