"""The preflight check against the emulator over a real socket."""

from __future__ import annotations

import re

import pytest

from studio_flows.client import ModelStudioClient, RetryPolicy
from studio_flows.emulator import EmulatorServer
from studio_flows.errors import ConfigurationError
from studio_flows.preflight import check_access
from tests.fixtures.prefect_server import free_port


def client_for(base_url: str, token: str) -> ModelStudioClient:
    return ModelStudioClient(
        base_url=base_url,
        token=token,
        organization_id="org-test",
        retry=RetryPolicy(max_retries=1, backoff_base_s=0.01, backoff_max_s=0.02),
        timeout_s=2.0,
    )


def test_a_reachable_service_that_takes_the_token_passes(emulator: EmulatorServer) -> None:
    with client_for(emulator.base_url, emulator.token) as client:
        check_access(client)
    assert emulator.stats()["jobs_created"] == 0


def test_a_wrong_token_is_one_sentence_naming_the_variable(emulator: EmulatorServer) -> None:
    with (
        client_for(emulator.base_url, "not-the-token") as client,
        pytest.raises(ConfigurationError, match=r"refused the token.*MODEL_STUDIO_TOKEN") as info,
    ):
        check_access(client)
    assert "not-the-token" not in str(info.value)


def test_an_unreachable_base_url_names_it(unused_tcp_port: int) -> None:
    base_url = f"http://127.0.0.1:{unused_tcp_port}/api/v1"
    with (
        client_for(base_url, "token") as client,
        pytest.raises(
            ConfigurationError, match=re.escape(f"Cannot reach Model Studio at {base_url}")
        ),
    ):
        check_access(client)


@pytest.fixture
def unused_tcp_port() -> int:
    return free_port()
