"""The fair-use limit and slots against a Prefect API (``prefect_test_harness``)."""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Iterator

import pytest
from prefect.client.orchestration import get_client
from prefect.exceptions import ObjectNotFound
from studio_flows.tasks.fair_use import PrefectSlotApi, SlotPool, ensure_concurrency_limit

from studio_flows.errors import FairUseError
from tests.fixtures.cli_runs import wait_for


@pytest.fixture
def tag(prefect_harness: None) -> Iterator[str]:
    """A fresh tag name, its limit deleted afterwards."""
    name = f"test-{uuid.uuid4().hex[:8]}"
    yield name
    with get_client(sync_client=True) as client, contextlib.suppress(ObjectNotFound):
        client.delete_concurrency_limit_by_tag(name)


def limit_of(tag: str) -> int:
    with get_client(sync_client=True) as client:
        return int(client.read_concurrency_limit_by_tag(tag).concurrency_limit)


def test_a_missing_limit_is_created_with_the_settings_value(tag: str) -> None:
    assert ensure_concurrency_limit(limit=3, limit_name=f"tag:{tag}") == 3
    assert limit_of(tag) == 3


def test_an_operators_limit_is_kept_not_overwritten(tag: str) -> None:
    with get_client(sync_client=True) as client:
        client.create_concurrency_limit(tag=tag, concurrency_limit=5)

    assert ensure_concurrency_limit(limit=3, limit_name=f"tag:{tag}") == 5
    assert limit_of(tag) == 5


def test_a_second_process_pool_waits_for_the_slot_and_gets_it_when_freed(tag: str) -> None:
    """Two pools (as two processes would have) on a limit of 1, against a Prefect API."""
    ensure_concurrency_limit(limit=1, limit_name=f"tag:{tag}")
    first = SlotPool(f"tag:{tag}", api=PrefectSlotApi(), poll_s=0.05)
    second = SlotPool(f"tag:{tag}", api=PrefectSlotApi(), poll_s=0.05)
    held = first.acquire()
    got: list[object] = []

    waiter = threading.Thread(target=lambda: got.append(second.acquire()))
    waiter.start()
    wait_for(lambda: second.refusals >= 2, 20, "the pool to get there")
    assert not got

    first.release(held)
    waiter.join(timeout=20)

    assert got and second.held == 1 and first.held == 0
    second.release_all()


def test_a_missing_limit_is_an_error_not_a_free_pass(prefect_harness: None) -> None:
    pool = SlotPool(f"tag:missing-{uuid.uuid4().hex[:8]}", api=PrefectSlotApi())
    with pytest.raises(FairUseError, match="does not exist"):
        pool.acquire()
