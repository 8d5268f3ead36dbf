"""Dropping a throw-away PostgreSQL database that a benchmark or a test made.

``DROP DATABASE … WITH (FORCE)`` ends the database's other sessions, but only those a
non-superuser owner may signal: an autovacuum worker (it starts after a large write, such
as P3's million rows) belongs to the superuser, and ``FORCE`` then fails with
``InsufficientPrivilege``. A plain ``DROP DATABASE`` stops autovacuum itself and only
fails while a session of ours is still open, which ``FORCE`` may end: so try the plain
drop first, then ``FORCE``, and again a moment later.
"""

from __future__ import annotations

import time

import sqlalchemy as sa

DROP_TRIES = 10


def drop_database(admin: sa.Engine, name: str, *, tries: int = DROP_TRIES) -> None:
    """Drop ``name`` through ``admin`` (an AUTOCOMMIT engine on another database).

    Example:
        >>> drop_database(admin, "studio_flows_bench_1234")  # doctest: +SKIP
    """
    failure: sa.exc.DBAPIError | None = None
    for attempt in range(tries):
        if attempt:
            time.sleep(1.0)  # an autovacuum worker or a closing session is still on it
        for force in ("", " WITH (FORCE)"):
            try:
                with admin.connect() as conn:
                    conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}"{force}')
                return
            except sa.exc.DBAPIError as err:
                failure = err
    assert failure is not None
    raise failure
