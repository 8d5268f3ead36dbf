"""Poll planning: learn durations and their spread, read progress, spend a request budget.

Jobs here run on a fake clock: a job is a duration and the times its tasks end, and a
look at ``t`` sees the tasks ended by then (the emulator's rule), so every figure below
is exact and the same on any machine.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from studio_flows.polling import (
    EVEN,
    UNIFORM,
    DurationHistory,
    PollPlan,
    equal_mass_points,
    plan_polls,
    price_for,
)

TASKS = 10


@dataclass(frozen=True)
class FakeJob:
    seconds: float
    task_ends: list[float]  # ascending; the last is ``seconds``

    def completed(self, at: float) -> int:
        if at >= self.seconds:
            return len(self.task_ends)
        return min(len(self.task_ends) - 1, sum(1 for end in self.task_ends if end <= at))


def steady_job(seconds: float, tasks: int = TASKS) -> FakeJob:
    return FakeJob(seconds, [seconds * (i + 1) / tasks for i in range(tasks)])


def jittered_jobs(count: int, *, mean: float, sigma: float, seed: int) -> list[FakeJob]:
    """Lognormal durations of the given mean; tasks end at uniform points inside each."""
    rng = random.Random(seed)
    jobs = []
    for _ in range(count):
        seconds = mean * math.exp(rng.gauss(0.0, sigma) - sigma * sigma / 2)
        ends = [*sorted(rng.uniform(0.0, seconds) for _ in range(TASKS - 1)), seconds]
        jobs.append(FakeJob(seconds, ends))
    return jobs


@dataclass
class Outcome:
    late_s: float  # mean seconds from a job's end to the look that saw it done
    requests: float  # mean requests a job, the POST included


def poll_ours(
    jobs: list[FakeJob],
    budget: float | None = None,
    *,
    silent: bool = False,
    history: DurationHistory | None = None,
) -> Outcome:
    """Run ``jobs`` one after another with our poller, learning as a client does.

    ``silent``: the service shows ``completed_tasks`` 0 until the end (the quiet style).
    """
    history = DurationHistory() if history is None else history
    late = requests = 0.0
    for job in jobs:
        plan = PollPlan(start=0.5, maximum=10.0, history=history, budget=budget)
        now = plan.first_delay(tasks=TASKS)
        requests += 2  # the POST and the first look
        running_until, seen_running = 0.0, False
        while now < job.seconds:
            running_until, seen_running = now, True
            completed = 0 if silent else job.completed(now)
            now += plan.next_delay(elapsed=now, completed=completed, total=TASKS)
            requests += 1
        late += now - job.seconds
        plan.learn(running_until=running_until, done_by=now, tasks=TASKS, seen_running=seen_running)
    return Outcome(late / len(jobs), requests / len(jobs))


def poll_fixed(jobs: list[FakeJob], interval: float) -> Outcome:
    """A poller that looks every ``interval`` seconds after the POST."""
    looks = [math.ceil(job.seconds / interval - 1e-9) for job in jobs]
    late = sum(n * interval - job.seconds for n, job in zip(looks, jobs, strict=True))
    return Outcome(late / len(jobs), 1 + sum(looks) / len(jobs))


# --- the history ---------------------------------------------------------------------------


def test_history_predicts_nothing_before_a_sample() -> None:
    assert DurationHistory().predict(50) is None
    assert DurationHistory().prior(50) is None


def test_history_predicts_proportionally_to_the_task_count() -> None:
    history = DurationHistory()
    history.record(seconds=5.0, tasks=50)
    assert history.predict(50) == pytest.approx(5.0)
    assert history.predict(100) == pytest.approx(10.0)
    assert history.predict(0) == pytest.approx(0.1)  # at least one task


def test_history_learns_the_spread_of_job_times() -> None:
    steady, varied = DurationHistory(), DurationHistory()
    for seconds in (5.0, 5.0, 5.0, 5.0):
        steady.record(seconds=seconds, tasks=10)
    for seconds in (2.5, 5.0, 10.0, 5.0):
        varied.record(seconds=seconds, tasks=10)
    steady_prior, varied_prior = steady.prior(10), varied.prior(10)
    assert steady_prior is not None and varied_prior is not None
    assert steady_prior[1] < 0.01
    # The sample spread of log(2.5, 5, 10, 5) is 0.57; the next job's is a little wider.
    assert 0.566 < varied_prior[1] < 0.7


def test_history_follows_a_changing_service() -> None:
    history = DurationHistory()
    for _ in range(40):
        history.record(seconds=1.0, tasks=10)
    for _ in range(40):
        history.record(seconds=3.0, tasks=10)
    assert history.predict(10) == pytest.approx(3.0)


@pytest.mark.parametrize(("seconds", "tasks"), [(5.0, 0), (0.0, 10), (-1.0, 10)])
def test_history_ignores_meaningless_samples(seconds: float, tasks: int) -> None:
    history = DurationHistory()
    history.record(seconds=seconds, tasks=tasks)
    assert history.predict(10) is None


@pytest.mark.parametrize(
    ("jobs", "winner"),
    [
        ([steady_job(5.0)] * 6, EVEN),
        (jittered_jobs(8, mean=5.0, sigma=0.5, seed=3), UNIFORM),
    ],
)
def test_history_learns_how_progress_behaves(jobs: list[FakeJob], winner: str) -> None:
    history = DurationHistory()
    for job in jobs:
        plan = PollPlan(start=0.5, maximum=10.0, history=history, budget=6.0)
        now, running_until = plan.first_delay(tasks=TASKS), 0.0
        while now < job.seconds:
            running_until = now
            now += plan.next_delay(elapsed=now, completed=job.completed(now), total=TASKS)
        plan.learn(running_until=running_until, done_by=now, tasks=TASKS, seen_running=True)
    weights = history.model_weights()
    assert max(weights, key=lambda model: weights[model]) == winner


def test_a_count_that_stays_at_zero_is_silence_not_slow_progress() -> None:
    """A service that shows completed_tasks only at the end: its 0 must not push looks later."""
    history = DurationHistory()
    for _ in range(4):
        history.record_window(low=4.9, high=5.1, tasks=TASKS)
    counted, blank = (PollPlan(start=0.5, maximum=10.0, history=history) for _ in range(2))
    counted.first_delay(tasks=TASKS)
    blank.first_delay(tasks=TASKS)
    delay = counted.next_delay(elapsed=2.0, completed=0, total=TASKS)
    assert delay == blank.next_delay(elapsed=2.0, completed=0, total=0)
    assert 2.0 + delay < 5.3


def test_steady_jobs_without_progress_are_seen_soon_after_their_end_within_the_budget() -> None:
    outcome = poll_ours([steady_job(5.0)] * 15, silent=True)
    assert outcome.late_s <= 0.05 * 5.0
    assert outcome.requests <= 2 + 5.0 / 2


# --- planning on a distribution ------------------------------------------------------------


def test_equal_mass_points_split_the_mass_evenly() -> None:
    points = [(1.0, 0.25), (2.0, 0.25), (3.0, 0.5)]
    assert equal_mass_points(points, count=4) == [1.0, 2.0, 3.0, 3.0]


def test_one_look_goes_to_the_latest_end_and_free_looks_to_every_end() -> None:
    ends = [1.0, 2.0, 3.0, 4.0]
    assert plan_polls(ends, price=1e6) == (4.0, 1.0)
    when, looks = plan_polls(ends, price=0.0)
    assert when == 1.0
    assert looks == pytest.approx(1 + 0.75 + 0.5 + 0.25)  # one look per end still possible


@pytest.mark.parametrize("looks", [1.5, 2.0, 3.0, 6.0])
def test_the_price_of_a_look_is_set_to_spend_the_budget(looks: float) -> None:
    ends = [5.0 * math.exp(0.5 * (i - 16) / 8) for i in range(32)]
    price = price_for(ends, looks)
    assert plan_polls(ends, price)[1] <= looks
    # A clearly cheaper price would spend more than the budget: the price is not wasteful.
    assert plan_polls(ends, price / 2)[1] > looks * 0.8


# --- one job's plan --------------------------------------------------------------------------


def test_first_delay_without_history_is_the_start_interval() -> None:
    assert PollPlan(start=0.5, maximum=10.0).first_delay(tasks=50) == 0.5


def test_without_information_looks_every_start_interval_then_a_share_of_the_age() -> None:
    """Doubling would see a first job of 5 s only at 7.5 s; a share of its age, by 5.75."""
    plan = PollPlan(start=0.5, maximum=4.0)
    delays = [plan.first_delay(tasks=0)]
    delays += [plan.next_delay(elapsed=t, completed=0, total=0) for t in (0.5, 1.0, 10.0, 40.0)]
    assert delays == pytest.approx([0.5, 0.5, 0.5, 1.5, 4.0])


def test_steady_history_puts_the_first_look_just_after_the_end() -> None:
    history = DurationHistory()
    for _ in range(5):
        history.record(seconds=4.0, tasks=20)
    delay = PollPlan(start=0.5, maximum=10.0, history=history).first_delay(tasks=20)
    assert 3.95 < delay < 4.1


def test_varied_history_looks_early_to_see_the_progress() -> None:
    history = DurationHistory()
    for seconds in (2.5, 5.0, 10.0, 5.0, 4.0, 6.0):
        history.record(seconds=seconds, tasks=10)
    delay = PollPlan(start=0.5, maximum=10.0, history=history).first_delay(tasks=10)
    assert delay < 0.7 * history.predict(10)  # type: ignore[operator]


def test_first_delay_from_history_is_clamped_to_the_maximum() -> None:
    history = DurationHistory()
    history.record(seconds=100.0, tasks=10)
    plan = PollPlan(start=0.5, maximum=10.0, history=history)
    assert plan.first_delay(tasks=10) == 10.0


def test_even_progress_without_history_places_the_next_look_in_its_window() -> None:
    history = DurationHistory()
    for job in [steady_job(5.0)] * 4:  # teach it that tasks end evenly, then forget the pace
        plan = PollPlan(start=0.5, maximum=10.0, history=history, budget=6.0)
        now, running_until = plan.first_delay(tasks=TASKS), 0.0
        while now < job.seconds:
            running_until = now
            now += plan.next_delay(elapsed=now, completed=job.completed(now), total=TASKS)
        plan.learn(running_until=running_until, done_by=now, tasks=TASKS, seen_running=True)
    fresh = DurationHistory()
    fresh._model_scores = dict(history._model_scores)
    plan = PollPlan(start=1.0, maximum=30.0, history=fresh)
    plan.first_delay(tasks=50)
    # 10 of 50 after 1 s, evenly: the job ends in (50/11, 5] s = (4.55, 5].
    delay = plan.next_delay(elapsed=1.0, completed=10, total=50)
    assert 50 / 11 - 1.0 < delay <= 5.0 - 1.0 + 0.03


def test_progress_prediction_is_clamped_to_the_maximum() -> None:
    # 1 of 100 after 1 s: the end is far; with one look to spend it waits the longest.
    plan = PollPlan(start=1.0, maximum=10.0, budget=2.0)
    assert plan.next_delay(elapsed=1.0, completed=1, total=100) == 10.0


def test_a_job_past_every_end_believed_is_looked_at_soon_and_then_less_often() -> None:
    history = DurationHistory()
    for _ in range(5):
        history.record(seconds=0.01, tasks=10)  # jobs of 10 ms: nothing to plan
    plan = PollPlan(start=0.5, maximum=1.0, history=history)
    assert plan.first_delay(tasks=10) == pytest.approx(0.011, abs=0.002)
    overdue = [plan.next_delay(elapsed=t, completed=0, total=10) for t in (0.1, 0.2, 0.4, 0.8)]
    assert overdue == pytest.approx([0.05, 0.1, 0.2, 0.4])


def test_jobs_found_done_at_the_first_look_bring_the_first_poll_down_to_the_get_time() -> None:
    """A job terminal at its first poll took at most the delay plus the GET: an upper bound.

    After jobs of 5 s the service answers at once (a GET taking 5 ms); within a few hundred
    jobs the first poll must come down to the order of that GET, or every job would idle
    its slot.
    """
    history = DurationHistory()
    history.record(seconds=5.0, tasks=100)
    get_s = 0.005
    for _ in range(200):
        plan = PollPlan(start=0.001, maximum=10.0, history=history)
        waited = plan.first_delay(tasks=100) + get_s
        plan.learn(running_until=0.0, done_by=waited, tasks=100, seen_running=False)
    assert PollPlan(start=0.001, maximum=10.0, history=history).first_delay(tasks=100) <= 2 * get_s


# --- the budget, on jobs whose times vary -------------------------------------------------


def test_steady_jobs_are_seen_soon_after_their_end_within_the_fair_use_budget() -> None:
    outcome = poll_ours([steady_job(5.0)] * 15)
    assert outcome.late_s <= 0.03 * 5.0
    assert outcome.requests <= 2 + 5.0 / 2


@pytest.mark.parametrize("budget", [3.0, 4.5, 6.0, 10.0])
def test_a_budget_is_not_overspent(budget: float) -> None:
    jobs = jittered_jobs(30, mean=5.0, sigma=0.5, seed=11)
    # Jobs that outlive every look planned cost a few more, and an early look for progress
    # counts as half a look: at most 15 % more at the smallest budget.
    assert poll_ours(jobs, budget=budget).requests <= budget * 1.15


def test_a_larger_budget_buys_less_lateness() -> None:
    jobs = jittered_jobs(30, mean=5.0, sigma=0.5, seed=5)
    late = [poll_ours(jobs, budget=budget).late_s for budget in (3.0, 4.5, 6.0, 10.0)]
    assert late == sorted(late, reverse=True)


@pytest.mark.parametrize("budget", [3.0, 4.5, 6.0, 10.0])
def test_varied_jobs_are_seen_sooner_than_by_a_fixed_interval_at_the_same_requests(
    budget: float,
) -> None:
    """Lognormal times (sigma 0.5, mean 5 s), tasks ending at uniform points: six runs.

    The fixed poller's interval is the shortest that spends no more requests than ours over
    the same jobs. One run's figure depends on where its times fall on the fixed grid, so
    the comparison is over all six runs' jobs.
    """
    runs = [jittered_jobs(30, mean=5.0, sigma=0.5, seed=seed) for seed in range(1, 7)]
    mine = [poll_ours(jobs, budget=budget) for jobs in runs]
    requests = sum(outcome.requests for outcome in mine) / len(mine)
    every_job = [job for jobs in runs for job in jobs]
    interval = 0.05
    while poll_fixed(every_job, interval).requests > requests:
        interval *= 1.01
    late = sum(outcome.late_s for outcome in mine) / len(mine)
    assert late < poll_fixed(every_job, interval).late_s


@given(
    start=st.floats(0.01, 5.0),
    extra=st.floats(0.0, 60.0),
    steps=st.lists(
        st.tuples(st.floats(0.001, 1e4), st.integers(0, 200), st.integers(0, 200)), max_size=12
    ),
    sample=st.one_of(st.none(), st.tuples(st.floats(0.01, 1e4), st.integers(1, 200))),
    budget=st.one_of(st.none(), st.floats(1.0, 20.0)),
)
# Up to 12 looks, each planned one step ahead: a case is tens of milliseconds of CPU, and
# more on a shared machine; the property is about the delays, not their cost.
@settings(deadline=None)
def test_every_delay_is_positive_and_at_most_the_maximum(
    start: float,
    extra: float,
    steps: list[tuple[float, int, int]],
    sample: tuple[float, int] | None,
    budget: float | None,
) -> None:
    history = DurationHistory()
    if sample is not None:
        history.record(seconds=sample[0], tasks=sample[1])
    maximum = start + extra
    plan = PollPlan(start=start, maximum=maximum, history=history, budget=budget)
    assert 0 < plan.first_delay(tasks=50) <= maximum
    for elapsed, completed, total in sorted(steps):
        delay = plan.next_delay(elapsed=elapsed, completed=min(completed, total), total=total)
        assert 0 < delay <= maximum
