"""Poll planning: learn from finished jobs, use progress, back off without information."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from studio_flows.polling import DurationHistory, PollPlan


def test_history_predicts_nothing_before_a_sample() -> None:
    assert DurationHistory().predict(50) is None


def test_history_predicts_proportionally_to_the_task_count() -> None:
    history = DurationHistory()
    history.record(seconds=5.0, tasks=50)
    assert history.predict(50) == pytest.approx(5.0)
    assert history.predict(100) == pytest.approx(10.0)
    assert history.predict(0) == pytest.approx(0.1)  # at least one task


def test_history_follows_a_changing_service() -> None:
    history = DurationHistory()
    history.record(seconds=1.0, tasks=10)  # 0.1 s/task
    history.record(seconds=3.0, tasks=10)  # 0.3 s/task
    assert history.predict(10) == pytest.approx(2.0)


@pytest.mark.parametrize(("seconds", "tasks"), [(5.0, 0), (0.0, 10), (-1.0, 10)])
def test_history_ignores_meaningless_samples(seconds: float, tasks: int) -> None:
    history = DurationHistory()
    history.record(seconds=seconds, tasks=tasks)
    assert history.predict(10) is None


def test_first_delay_without_history_is_the_start_interval() -> None:
    assert PollPlan(start=0.5, maximum=10.0).first_delay(tasks=50) == 0.5


def test_first_delay_comes_from_history() -> None:
    history = DurationHistory()
    history.record(seconds=4.0, tasks=20)
    plan = PollPlan(start=0.5, maximum=10.0, history=history)
    assert plan.first_delay(tasks=20) == pytest.approx(4.0, abs=0.05)
    assert plan.first_delay(tasks=20) > 4.0  # a little late rather than early


def test_jobs_found_done_at_the_first_look_bring_the_first_poll_down_to_the_get_time() -> None:
    """A job terminal at its first poll took at most the delay plus the GET: an upper bound.

    The delay was chosen from the history, so recording the bound as the duration keeps the
    prediction near itself; after jobs of 5 s the service answers at once (latency 0, a GET
    taking 5 ms), and the first poll must come down to the order of that GET.
    """
    history = DurationHistory()
    history.record(seconds=5.0, tasks=100)
    plan = PollPlan(start=0.001, maximum=10.0, history=history)
    get_s = 0.005
    for _ in range(40):
        waited = plan.first_delay(tasks=100) + get_s
        history.record(seconds=waited, tasks=100, upper_bound=True)
    assert plan.first_delay(tasks=100) <= 2 * get_s


def test_first_delay_from_history_is_clamped_to_the_maximum() -> None:
    history = DurationHistory()
    history.record(seconds=100.0, tasks=10)
    plan = PollPlan(start=0.5, maximum=10.0, history=history)
    assert plan.first_delay(tasks=10) == 10.0


def test_backoff_without_information_doubles_to_the_maximum() -> None:
    plan = PollPlan(start=0.5, maximum=4.0)
    delays = [plan.first_delay(tasks=0)]
    delays += [plan.next_delay(elapsed=float(i), completed=0, total=0) for i in range(1, 6)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_progress_predicts_the_end() -> None:
    plan = PollPlan(start=1.0, maximum=30.0)
    plan.first_delay(tasks=50)
    # 10 of 50 after 1 s: done between 50/11 = 4.55 s and 5 s; aim early in that range.
    delay = plan.next_delay(elapsed=1.0, completed=10, total=50)
    assert delay == pytest.approx(50 / 11 + (5 - 50 / 11) / 3 - 1.0, abs=0.03)


def test_progress_prediction_is_clamped_to_the_maximum() -> None:
    plan = PollPlan(start=1.0, maximum=10.0)
    assert plan.next_delay(elapsed=1.0, completed=1, total=100) == 10.0


def test_overdue_repolls_quickly_then_backs_off() -> None:
    history = DurationHistory()
    history.record(seconds=5.0, tasks=50)  # predicts 5 s for 50 tasks
    plan = PollPlan(start=0.5, maximum=1.0, history=history)
    assert plan.first_delay(tasks=50) == pytest.approx(1.0)  # clamped 5.02
    # No progress shown yet: the history's 5 s is the prediction.
    assert plan.next_delay(elapsed=3.0, completed=0, total=50) == pytest.approx(1.0)  # clamped
    overdue = [plan.next_delay(elapsed=t, completed=0, total=50) for t in (6.0, 6.1, 6.3, 6.7)]
    assert overdue == pytest.approx([0.05, 0.1, 0.2, 0.4])
    more = [plan.next_delay(elapsed=t, completed=50, total=50) for t in (7.1, 8.0, 9.0)]
    assert more == pytest.approx([0.8, 1.0, 1.0])  # doubling stops at the maximum


def test_new_progress_resets_the_overdue_backoff() -> None:
    history = DurationHistory()
    history.record(seconds=2.0, tasks=10)
    plan = PollPlan(start=0.5, maximum=10.0, history=history)
    plan.first_delay(tasks=10)
    assert plan.next_delay(elapsed=3.0, completed=0, total=10) == pytest.approx(0.05)
    assert plan.next_delay(elapsed=3.1, completed=0, total=10) == pytest.approx(0.1)
    # Progress arrives and predicts a later end: wait for it, then start fast again if late.
    # 5 of 10 at 4 s: done between 6.67 and 8 s, aimed at 7.1 s.
    assert plan.next_delay(elapsed=4.0, completed=5, total=10) == pytest.approx(3.13, abs=0.03)
    assert plan.next_delay(elapsed=9.0, completed=10, total=10) == pytest.approx(0.05)


@given(
    start=st.floats(0.01, 5.0),
    extra=st.floats(0.0, 60.0),
    steps=st.lists(
        st.tuples(st.floats(0.001, 1e4), st.integers(0, 200), st.integers(0, 200)), max_size=20
    ),
    sample=st.one_of(st.none(), st.tuples(st.floats(0.01, 1e4), st.integers(1, 200))),
)
def test_every_delay_is_positive_and_at_most_the_maximum(
    start: float,
    extra: float,
    steps: list[tuple[float, int, int]],
    sample: tuple[float, int] | None,
) -> None:
    history = DurationHistory()
    if sample is not None:
        history.record(seconds=sample[0], tasks=sample[1])
    maximum = start + extra
    plan = PollPlan(start=start, maximum=maximum, history=history)
    assert 0 < plan.first_delay(tasks=50) <= maximum
    for elapsed, completed, total in steps:
        delay = plan.next_delay(elapsed=elapsed, completed=min(completed, total), total=total)
        assert 0 < delay <= maximum
