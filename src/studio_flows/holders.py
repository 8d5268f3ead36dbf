"""Which process holds a fair-use lease, and whether that process is gone.

A job's row in the ledger names the lease it runs under and the process that holds it
(``host/pid-namespace/pid``). A run that re-attaches to a job whose holder is gone (killed,
on this machine) adopts the lease instead of waiting a minute for it to expire; a holder
that may still run (alive, or on another machine) keeps its lease.

Example:
    >>> holder_is_gone(this_process())
    False
"""

from __future__ import annotations

import os
import socket


def this_process() -> str:
    """This process as a lease holder: ``host/pid-namespace/pid``.

    Example:
        >>> this_process().endswith(f"/{os.getpid()}")
        True
    """
    return f"{socket.gethostname()}/{_pid_namespace()}/{os.getpid()}"


def holder_is_gone(holder: str) -> bool:
    """True only when ``holder`` is a process of this machine that no longer runs.

    Another host, another PID namespace (a container) or a live PID (perhaps reused by
    another program) is not known to be gone: its leases expire on the server instead.

    Example:
        >>> holder_is_gone("another-host/0/1"), holder_is_gone("not a holder")
        (False, False)
    """
    parts = holder.rsplit("/", 2)
    if len(parts) != 3 or parts[:2] != [socket.gethostname(), _pid_namespace()]:
        return False
    if not parts[2].isdigit() or os.name != "posix":  # Windows' os.kill(pid, 0) is a Ctrl-C
        return False
    try:
        os.kill(int(parts[2]), 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return True
    except PermissionError:  # it exists, under another user
        return False
    return False


def _pid_namespace() -> str:
    # Two containers on one host may share a hostname but not a PID namespace (Linux).
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return "-"
