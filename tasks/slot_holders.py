"""Which process on this machine holds which fair-use lease, so a dead one's come back at once.

A lease the Prefect server granted outlives its holder until it expires, and a server
without a repossessor (the local one a bare ``studio-flows generate`` starts) never takes
it back at all. So every process that holds leases keeps a small file under
``$PREFECT_HOME/studio-flows/slot-holders/`` listing them, locked with ``flock`` for as long
as the process lives. The operating system drops that lock when the process dies, however
it dies (SIGKILL, OOM, power loss), so any later process that can take the lock knows the
holder is gone and gives its leases back to the server.

Example:
    >>> holder = HolderFile(Path("/tmp/holders"), server="local")  # doctest: +SKIP
    >>> holder.record([lease_id])  # doctest: +SKIP
    >>> reclaim_dead_holders(Path("/tmp/holders"), "local", release=print)  # doctest: +SKIP
    0
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO

logger = logging.getLogger("studio_flows.slots")

# A holder file of another server whose process died is left for that server's own
# expiry; it is deleted once it is this old so the folder does not grow.
FOREIGN_FILE_MAX_AGE_S = 86_400.0


def holders_directory() -> Path:
    """``$PREFECT_HOME/studio-flows/slot-holders`` (created when missing)."""
    from prefect.settings import get_current_settings

    path = Path(get_current_settings().home) / "studio-flows" / "slot-holders"
    path.mkdir(parents=True, exist_ok=True)
    return path


class HolderFile:
    """This process's record of the leases it holds on ``server``, locked while it lives."""

    def __init__(self, directory: Path, server: str) -> None:
        self.server = server
        directory.mkdir(parents=True, exist_ok=True)
        name = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        # Locked under a name nobody scans, then renamed: a scan never sees it unlocked.
        claiming = directory / f"{name}.claiming"
        self._file: IO[str] | None = claiming.open("w+", encoding="utf-8")
        fcntl.flock(self._file.fileno(), fcntl.LOCK_EX)
        self.record([])
        self.path = directory / f"{name}.json"
        claiming.rename(self.path)
        atexit.register(self.close)

    def record(self, lease_ids: Iterable[uuid.UUID]) -> None:
        """Write the leases held now (rewritten in place, under this process's lock)."""
        if self._file is None:
            return
        body = json.dumps({"server": self.server, "leases": [str(i) for i in lease_ids]})
        self._file.seek(0)
        self._file.truncate()
        self._file.write(body)
        self._file.flush()

    def close(self) -> None:
        """Delete the file (every lease was given back) and drop the lock."""
        if self._file is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()
        self._file.close()
        self._file = None


def reclaim_dead_holders(directory: Path, server: str, release: Callable[[uuid.UUID], None]) -> int:
    """Give back, through ``release``, every lease on ``server`` of a process that is gone.

    Returns how many leases were given back. A file still locked belongs to a live process
    and is left alone.
    """
    reclaimed = 0
    for path in directory.glob("*.json"):
        with _unlocked_holder(path) as body:
            if body is None:
                continue
            if body.get("server") != server:
                if time.time() - path.stat().st_mtime > FOREIGN_FILE_MAX_AGE_S:
                    path.unlink(missing_ok=True)
                continue
            for lease in body.get("leases", []):
                release(uuid.UUID(lease))
                reclaimed += 1
            path.unlink(missing_ok=True)
    if reclaimed:
        logger.info("gave back %d fair-use slot(s) of processes that died", reclaimed)
    return reclaimed


class PeerWatch:
    """What the other processes on this machine hold, read from their holder files
    without asking the Prefect server.

    A pool refused a slot asks again at once when a peer gave a lease back (its holder
    file got shorter: a lease id always has the same length, so the size follows the
    number of leases; or it went away), and asks the server rarely while peers hold every
    slot it lacks.

    Example:
        >>> watch = PeerWatch(Path("/tmp/holders"), exclude=None, server="local")
        ... # doctest: +SKIP
        >>> watch.released(), watch.holding()  # doctest: +SKIP
        (False, 3)
    """

    def __init__(self, directory: Path, exclude: Path | None, server: str) -> None:
        self._directory = directory
        self._exclude = exclude
        self._server = server
        self._sizes = self._snapshot()

    def holding(self) -> int:
        """Leases on this pool's server that other processes' holder files list now."""
        held = 0
        for path in self._directory.glob("*.json"):
            if path == self._exclude:
                continue
            try:
                body = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):  # gone, or caught mid-write: counted next time
                continue
            if isinstance(body, dict) and body.get("server") == self._server:
                held += len(body.get("leases", []))
        return held

    def released(self) -> bool:
        """True if a peer's holder file shrank or vanished since the last call."""
        sizes = self._snapshot()
        shrank = any(sizes.get(name, 0) < size for name, size in self._sizes.items())
        self._sizes = sizes
        return shrank

    def _snapshot(self) -> dict[str, int]:
        sizes: dict[str, int] = {}
        for path in self._directory.glob("*.json"):
            if path == self._exclude:
                continue
            with contextlib.suppress(FileNotFoundError):
                sizes[path.name] = path.stat().st_size
        return sizes


def live_holders(directory: Path, exclude: Path | None = None) -> int:
    """How many other live processes on this machine hold a holder file."""
    count = 0
    for path in directory.glob("*.json"):
        if path == exclude:
            continue
        with _unlocked_holder(path) as body:
            count += body is None and path.exists()
    return count


@contextlib.contextmanager
def _unlocked_holder(path: Path):  # type: ignore[no-untyped-def]
    """Yield the file's content if its holder is dead (its lock is free), else None."""
    try:
        handle = path.open("r", encoding="utf-8")
    except FileNotFoundError:
        yield None
        return
    with handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield None
            return
        try:
            text = handle.read()
            body = json.loads(text) if text else {"leases": []}
        except json.JSONDecodeError:
            body = {"leases": []}  # killed mid-write: its leases expire on their own
        yield body if isinstance(body, dict) else {"leases": []}
