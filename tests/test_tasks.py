"""The fair-use limit and slots against a Prefect API (``prefect_test_harness``)."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
from prefect.client.orchestration import get_client
from prefect.exceptions import ObjectNotFound

from tasks.limits import ensure_concurrency_limit
from tasks.slots import FairUseSlot


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
    assert ensure_concurrency_limit(limit=3, tag=tag) == 3
    assert limit_of(tag) == 3


def test_an_operators_limit_is_kept_not_overwritten(tag: str) -> None:
    with get_client(sync_client=True) as client:
        client.create_concurrency_limit(tag=tag, concurrency_limit=5)

    assert ensure_concurrency_limit(limit=3, tag=tag) == 5
    assert limit_of(tag) == 5


def wait_until(condition: object, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)  # polling a condition, not waiting for luck


def test_a_second_holder_waits_for_the_slot_and_gets_it_when_freed(tag: str) -> None:
    ensure_concurrency_limit(limit=1, tag=tag)
    first = FairUseSlot(f"tag:{tag}", poll_s=0.05)
    second = FairUseSlot(f"tag:{tag}", poll_s=0.05)
    first.hold()

    waiter = threading.Thread(target=second.hold)
    waiter.start()
    wait_until(lambda: second.refusals >= 2)
    assert not second.held

    first.release()
    waiter.join(timeout=20)

    assert second.held and not first.held
    second.release()


def test_a_holder_gives_its_slot_back_every_turn(tag: str) -> None:
    ensure_concurrency_limit(limit=1, tag=tag)
    pauses: list[float] = []
    slot = FairUseSlot(f"tag:{tag}", turn_s=0.0, poll_s=0.05, sleep=pauses.append)

    slot.hold()
    slot.hold()
    slot.hold()

    assert slot.turns == 3
    assert pauses == [slot.pause_s, slot.pause_s]
    slot.release()
    # Released for good: another holder gets the only slot at once.
    with FairUseSlot(f"tag:{tag}") as other:
        other.hold()
        assert other.refusals == 0


def test_a_missing_limit_is_an_error_not_a_free_pass(prefect_harness: None) -> None:
    slot = FairUseSlot(f"tag:missing-{uuid.uuid4().hex[:8]}")
    with pytest.raises(Exception, match="must be created"):
        slot.hold()


def test_a_busy_prefect_api_is_asked_again_not_a_failed_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Unit test of the retry decision: the Prefect call itself is replaced."""
    import httpx
    from prefect.concurrency._asyncio import ConcurrencySlotAcquisitionError

    import tasks.slots as slots

    answers = [503, 502, None]

    @contextlib.contextmanager
    def flaky_concurrency(*args: object, **kwargs: object) -> Iterator[None]:
        status = answers.pop(0)
        if status is not None:
            request = httpx.Request("POST", "http://prefect/api/v2/concurrency_limits/x")
            response = httpx.Response(status, request=request)
            cause = httpx.HTTPStatusError("busy", request=request, response=response)
            raise ConcurrencySlotAcquisitionError("unavailable") from cause
        yield

    monkeypatch.setattr(slots, "concurrency", flaky_concurrency)
    waits: list[float] = []
    slot = slots.FairUseSlot("tag:any", sleep=waits.append)

    slot.hold()

    assert slot.held and answers == [] and len(waits) == 2
    slot.release()
