"""Which leases a rerun adopts from the ledger: only those of a holder that is gone, and
only once among reruns."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from studio_flows.tasks import generation

from studio_flows.holders import holder_is_gone, this_process
from studio_flows.settings import Settings
from studio_flows.storage import (
    generation_jobs,
    make_engine,
    open_shards,
    record_job_submitted,
    record_shard_intent,
)
from tests.fixtures.storage_rows import make_shard


def a_gone_process() -> str:
    """The holder name of a process of this machine that has ended."""
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    host, namespace, _ = this_process().rsplit("/", 2)
    return f"{host}/{namespace}/{child.stdout.strip()}"


class FakePool:
    """Records what the adoption asks of this process's slot pool."""

    def __init__(self) -> None:
        self.adopted: list[uuid.UUID] = []
        self.watched: list[str] = []

    def adopt(self, lease_id: uuid.UUID) -> Any:
        self.adopted.append(lease_id)
        return object()

    def watch(self, lease: Any, key: str, poll: Any) -> None:
        self.watched.append(key)


def test_a_holder_is_gone_only_when_it_is_a_process_of_this_machine_that_ended() -> None:
    assert holder_is_gone(a_gone_process())
    assert not holder_is_gone(this_process())
    host, namespace, _ = this_process().rsplit("/", 2)
    assert not holder_is_gone(f"another-{host}/{namespace}/999999")
    assert not holder_is_gone(f"{host}/another-{namespace}/999999")


def test_only_a_gone_holders_leases_are_adopted_and_only_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'results.db'}")
    gone = a_gone_process()
    leases = {name: str(uuid.uuid4()) for name in ("jobs", "unknown", "alive")}

    def shard(start: int, lease: str, job_id: str | None, holder: str) -> None:
        made = make_shard(2, start=start)
        record_shard_intent(engine, made, lease)
        if job_id is not None:
            record_job_submitted(engine, made.shard_key, job_id, lease)
        with engine.begin() as conn:
            conn.execute(
                sa.update(generation_jobs)
                .where(generation_jobs.c.shard_key == made.shard_key)
                .values(lease_holder=holder)
            )

    # One lease carried two jobs (the first ended, then it was handed to the second).
    shard(0, leases["jobs"], "job-1", gone)
    shard(2, leases["jobs"], "job-2", gone)
    # A lease handed on to a POST whose outcome is unknown: its orphan may still run.
    shard(4, leases["unknown"], "job-3", gone)
    shard(6, leases["unknown"], None, gone)
    # A holder that still runs keeps its lease.
    shard(8, leases["alive"], "job-4", this_process())
    pool = FakePool()
    monkeypatch.setattr(generation, "_pool", lambda settings: pool)

    assert generation.adopt_slots_of_killed_runs(engine, Settings()) == 2
    assert pool.adopted == [uuid.UUID(leases["jobs"]), uuid.UUID(leases["unknown"])]
    assert pool.watched == [f"lease {leases['jobs']}", f"lease {leases['unknown']}"]
    holders = {r.lease_holder for r in open_shards(engine) if r.lease_id != leases["alive"]}
    assert holders == {this_process()}, "the adopting run is not the holder now"
    # A second rerun finds the leases held by a live process (this one): nothing to adopt.
    assert generation.adopt_slots_of_killed_runs(engine, Settings()) == 0
