"""The fake-clock replay of P6 plays the emulator's own jobs, and counts as the emulator does."""

from __future__ import annotations

from bench.jitter import SIGMA, TASKS
from bench.poll_replay import replay, timings
from studio_flows.client import ModelStudioClient
from studio_flows.emulator import EmulatorConfig, EmulatorServer
from studio_flows.models import GenerateRequest, Message
from tests.fixtures.emulator import TEST_ORGANIZATION


def test_the_replay_gives_each_job_the_time_the_emulator_gives_it() -> None:
    config = EmulatorConfig(job_latency_s=0.05, job_latency_jitter=SIGMA, uneven_tasks=True, seed=7)
    conversations = [[Message(role="user", content=f"q{t}")] for t in range(TASKS)]
    with EmulatorServer(config) as server:
        client = ModelStudioClient(
            base_url=server.base_url, token=server.token, organization_id=TEST_ORGANIZATION
        )
        with client:
            for _ in range(4):
                client.create_job(GenerateRequest(model_id="m", messages=conversations))
        recorded = [job["duration_s"] for job in server.jobs()]  # rounded to the microsecond
    replayed = [round(duration, 6) for duration, _ in timings(7, 4, mean_s=0.05)]
    assert replayed == recorded


def test_a_fixed_poller_is_replayed_look_by_look() -> None:
    # Six jobs of 1 s on three lanes, looked at every 0.4 s: three looks each, the last
    # at 1.2 s plus the GET; the next wave starts then, so the makespan is 2 x 1.2 s and a bit.
    steady = [(1.0, [0.5, 1.0])] * 6
    figures = replay(steady, interval=0.4)
    assert figures["requests_per_job"] == 4.0
    assert 1.2 < figures["ratio"] < 1.25
