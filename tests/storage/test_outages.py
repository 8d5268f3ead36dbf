"""A results database that stops answering: retried with a bound, then one sentence."""

from __future__ import annotations

import pytest
from sqlalchemy import exc

from studio_flows.errors import ResultsDatabaseUnavailableError
from studio_flows.storage.outages import retry_while_unavailable

URL = "postgresql+psycopg://app:s3cret-pw@db.internal/results"


def refused() -> exc.OperationalError:
    return exc.OperationalError("SELECT 1", {}, OSError("connection refused\nsecond line"))


class Clock:
    """A clock the fake sleep moves forward: no real waiting."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_an_outage_shorter_than_the_bound_is_waited_out() -> None:
    clock, calls = Clock(), []

    def action() -> str:
        calls.append(1)
        if len(calls) < 4:
            raise refused()
        return "written"

    done = retry_while_unavailable(
        action, bound_s=30, url=URL, sleep=clock.sleep, clock=lambda: clock.now
    )

    assert done == "written"
    assert clock.sleeps == [0.5, 1.0, 2.0]


def test_an_outage_longer_than_the_bound_is_one_sentence_without_the_password() -> None:
    clock = Clock()

    def action() -> None:
        raise refused()

    with pytest.raises(ResultsDatabaseUnavailableError) as caught:
        retry_while_unavailable(
            action, bound_s=10, url=URL, sleep=clock.sleep, clock=lambda: clock.now
        )

    message = str(caught.value)
    assert sum(clock.sleeps) <= 10
    assert "db.internal/results did not answer for" in message
    assert "connection refused" in message and "\n" not in message
    assert "s3cret-pw" not in message


def test_an_error_of_the_statement_is_not_an_outage() -> None:
    clock = Clock()

    def action() -> None:
        raise exc.IntegrityError("INSERT", {}, Exception("duplicate key"))

    with pytest.raises(exc.IntegrityError):
        retry_while_unavailable(action, url=URL, sleep=clock.sleep, clock=lambda: clock.now)
    assert clock.sleeps == []
