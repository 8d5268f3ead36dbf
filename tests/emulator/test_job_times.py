"""Job times that vary: the lognormal jitter knob, uneven tasks, and the true timeline.

The emulator reads job times from a clock it is given; these tests move that clock by hand,
so every figure is exact and nothing waits.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterator

import httpx
import pytest

from studio_flows.emulator import EmulatorConfig, EmulatorServer, EmulatorState
from studio_flows.emulator.config import DEFAULT_TOKEN

ORG = "org-times"
AUTH = f"Bearer {DEFAULT_TOKEN}"
BODY = b'{"model_id": "m", "messages": [%s]}'


class HandClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def body(tasks: int) -> bytes:
    return BODY % b", ".join([b'[{"role": "user", "content": "q%d"}]' % i for i in range(tasks)])


def run_jobs(state: EmulatorState, clock: HandClock, count: int, tasks: int = 1) -> list[float]:
    """Create ``count`` jobs one after another (each after the last ended); their durations."""
    for _ in range(count):
        assert state.create_job(ORG, AUTH, body(tasks)).status_code == 200
        clock.now += 1000.0  # past any job's end: the fair-use limit never refuses
    return [job["duration_s"] for job in state.jobs()]


def test_jitter_keeps_the_mean_job_time_not_the_median() -> None:
    clock = HandClock()
    config = EmulatorConfig(job_latency_s=5.0, job_latency_jitter=0.5, seed=3)
    durations = run_jobs(EmulatorState(config, clock), clock, 2000)
    # Mean 5 s (the factor's standard deviation is 0.53, so 2000 jobs: +-0.06 s, 1 sd).
    assert statistics.fmean(durations) == pytest.approx(5.0, abs=0.25)
    # The median is 5 * exp(-0.125) = 4.41 s, and 60 % of the jobs are shorter than 5 s.
    assert statistics.median(durations) == pytest.approx(4.41, abs=0.2)
    assert sum(d < 5.0 for d in durations) / len(durations) == pytest.approx(0.6, abs=0.04)
    assert statistics.stdev(math.log(d) for d in durations) == pytest.approx(0.5, abs=0.03)


def test_without_jitter_every_job_takes_the_configured_time() -> None:
    clock = HandClock()
    config = EmulatorConfig(job_latency_s=2.0, task_latency_s=0.1, seed=3)
    assert set(run_jobs(EmulatorState(config, clock), clock, 5, tasks=10)) == {3.0}


def test_job_times_come_from_the_seed_alone_not_from_the_requests_between() -> None:
    config = EmulatorConfig(job_latency_s=5.0, job_latency_jitter=0.5, seed=9, rate_429=0.3)
    quiet_clock, busy_clock = HandClock(), HandClock()
    quiet, busy = EmulatorState(config, quiet_clock), EmulatorState(config, busy_clock)
    for _ in range(20):
        for state, clock in ((quiet, quiet_clock), (busy, busy_clock)):
            while state.create_job(ORG, AUTH, body(3)).status_code != 200:
                pass  # a random 429: the fault generator drew, the timing one did not
            clock.now += 1000.0
        for _ in range(5):  # requests only the busy emulator sees: more fault draws
            busy.read_job(ORG, "no-such-job", AUTH)
    durations = [job["duration_s"] for job in quiet.jobs()]
    assert durations == [job["duration_s"] for job in busy.jobs()]
    assert len(set(durations)) == 20
    other_clock = HandClock()
    other = EmulatorState(config.model_copy(update={"seed": 10, "rate_429": 0.0}), other_clock)
    assert run_jobs(other, other_clock, 20, tasks=3) != durations


def _progress(state: EmulatorState, clock: HandClock, job_id: str, at: list[float]) -> list[int]:
    start = clock.now
    seen = []
    for offset in at:
        clock.now = start + offset
        answer = state.read_job(ORG, job_id, AUTH)
        seen.append(int(answer.body.decode().split('"completed_tasks":')[1].split(",")[0]))
    return seen


def test_uneven_tasks_end_at_seeded_points_inside_the_job() -> None:
    clock = HandClock()
    config = EmulatorConfig(job_latency_s=10.0, uneven_tasks=True, seed=5)
    state = EmulatorState(config, clock)
    created = state.create_job(ORG, AUTH, body(10))
    job_id = created.body.decode().split('"job_id":"')[1].split('"')[0]
    steps = [0.05 * i for i in range(201)]  # every 50 ms from 0 to 10 s
    seen = _progress(state, clock, job_id, steps)
    even = [min(9, int(t * 10 / 10.0)) if t < 10.0 else 10 for t in steps]
    assert seen == sorted(seen)  # tasks only ever finish
    assert seen != even  # not the steady schedule
    assert seen[-1] == 10 and max(seen[:-1]) <= 9  # the last task ends with the job
    # The 9 inner points are spread over the job, not bunched at its start or end.
    assert 0 < seen[steps.index(5.0)] < 9


def test_even_tasks_keep_the_steady_schedule() -> None:
    clock = HandClock()
    state = EmulatorState(EmulatorConfig(job_latency_s=10.0, seed=5), clock)
    job_id = state.create_job(ORG, AUTH, body(10)).body.decode().split('"job_id":"')[1][:36]
    assert _progress(state, clock, job_id, [0.5, 1.0, 4.99, 9.99, 10.0]) == [0, 1, 4, 9, 10]


@pytest.fixture
def timed_server() -> Iterator[tuple[EmulatorServer, HandClock]]:
    clock = HandClock()
    config = EmulatorConfig(job_latency_s=4.0, job_latency_jitter=0.5, uneven_tasks=True, seed=2)
    with EmulatorServer(config, clock=clock) as server:
        yield server, clock


def test_the_jobs_endpoint_gives_each_jobs_true_start_and_end(
    timed_server: tuple[EmulatorServer, HandClock],
) -> None:
    server, clock = timed_server
    api = f"{server.base_url}/organizations/{ORG}/generate"
    headers = {"Authorization": AUTH, "Content-Type": "application/json"}
    ids = []
    for offset in (0.0, 0.5, 1.25):
        clock.now = 1000.0 + offset
        ids.append(httpx.post(api, content=body(4), headers=headers).json()["job_id"])
    timeline = httpx.get(f"{server.root_url}/_emulator/jobs").json()["jobs"]
    assert [job["job_id"] for job in timeline] == ids
    assert [job["created_s"] for job in timeline] == [0.0, 0.5, 1.25]
    for job in timeline:
        assert job["tasks"] == 4
        assert job["end_s"] == pytest.approx(job["created_s"] + job["duration_s"])
        # The service agrees: running just before that end, finished just after it (the
        # timeline is rounded to the microsecond).
        for at, status in ((-0.001, "RUNNING"), (0.00001, "FINISHED")):
            clock.now = 1000.0 + job["end_s"] + at
            seen = httpx.get(f"{api}/{job['job_id']}", headers=headers).json()
            assert seen["job_status"] == status
    assert len({job["duration_s"] for job in timeline}) == 3  # jittered
    assert server.jobs() == timeline


def test_reset_forgets_the_timeline_and_replays_the_same_times(
    timed_server: tuple[EmulatorServer, HandClock],
) -> None:
    server, clock = timed_server
    first = run_jobs(server.state, clock, 5, tasks=4)
    server.reset()
    assert server.jobs() == []
    assert run_jobs(server.state, clock, 5, tasks=4) == first
