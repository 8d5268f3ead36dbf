"""Settings: defaults, ``MODEL_STUDIO_*`` variables, validation in one sentence, secrets hidden.

Every test builds settings with ``_env_file=None`` and a cleared environment, so no
developer's ``.env`` or shell variables leak in.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from studio_flows.errors import ConfigurationError
from studio_flows.settings import DEFAULT_BASE_URL, DEFAULT_DATABASE_URL, Settings, load_settings

TOKEN = "tok-Sup3rSecret-do-not-leak"


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("MODEL_STUDIO_"):
            monkeypatch.delenv(name)


def test_defaults() -> None:
    settings = Settings(_env_file=None)
    assert settings.token is None
    assert settings.organization_id is None
    assert settings.base_url == DEFAULT_BASE_URL == "https://studio.ionos.de/api/v1"
    assert settings.database_url == DEFAULT_DATABASE_URL == "sqlite:///studio_flows.db"
    assert settings.concurrency_limit == 3
    assert settings.shard_size == 50
    assert settings.request_timeout_s > 0
    assert 0 < settings.poll_interval_s <= settings.poll_max_interval_s
    assert settings.job_deadline_s > 0
    assert settings.database_connect_timeout_s == 10
    assert settings.prefect_check_timeout_s == 10.0


def test_environment_variables_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    values = {
        "MODEL_STUDIO_TOKEN": TOKEN,
        "MODEL_STUDIO_ORGANIZATION_ID": "org-7",
        "MODEL_STUDIO_BASE_URL": "http://127.0.0.1:9999/api/v1",
        "MODEL_STUDIO_DATABASE_URL": "postgresql+psycopg://u@h/db",
        "MODEL_STUDIO_CONCURRENCY_LIMIT": "5",
        "MODEL_STUDIO_SHARD_SIZE": "20",
        "MODEL_STUDIO_REQUEST_TIMEOUT_S": "12.5",
        "MODEL_STUDIO_POLL_INTERVAL_S": "0.25",
        "MODEL_STUDIO_POLL_MAX_INTERVAL_S": "4",
        "MODEL_STUDIO_JOB_DEADLINE_S": "900",
        "MODEL_STUDIO_MAX_RETRIES": "2",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    settings = load_settings(_env_file=None)
    assert settings.token is not None and settings.token.get_secret_value() == TOKEN
    assert settings.organization_id == "org-7"
    assert settings.base_url == "http://127.0.0.1:9999/api/v1"
    assert settings.database_url == "postgresql+psycopg://u@h/db"
    assert settings.concurrency_limit == 5
    assert settings.shard_size == 20
    assert settings.request_timeout_s == 12.5
    assert settings.poll_interval_s == 0.25
    assert settings.poll_max_interval_s == 4.0
    assert settings.job_deadline_s == 900.0
    assert settings.max_retries == 2


def test_env_file_is_ignored_when_disabled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".env").write_text("MODEL_STUDIO_SHARD_SIZE=7\n")
    monkeypatch.chdir(tmp_path)
    assert Settings(_env_file=None).shard_size == 50
    assert Settings().shard_size == 7  # the file is real: disabling it is what kept it out


def test_token_is_hidden_in_repr_str_and_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODEL_STUDIO_TOKEN", TOKEN)
    settings = Settings(organization_id="org", _env_file=None)
    assert settings.token is not None and settings.token.get_secret_value() == TOKEN
    assert TOKEN not in repr(settings)
    assert TOKEN not in str(settings)
    assert TOKEN not in settings.model_dump_json()
    assert TOKEN not in repr(settings.model_dump())


@pytest.mark.parametrize("size", [1, 50, 100])
def test_shard_size_within_bounds_is_accepted(monkeypatch: pytest.MonkeyPatch, size: int) -> None:
    monkeypatch.setenv("MODEL_STUDIO_SHARD_SIZE", str(size))
    assert load_settings(_env_file=None).shard_size == size


@pytest.mark.parametrize("size", ["0", "101", "-3", "fifty"])
def test_bad_shard_size_is_one_sentence_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, size: str
) -> None:
    monkeypatch.setenv("MODEL_STUDIO_TOKEN", TOKEN)
    monkeypatch.setenv("MODEL_STUDIO_SHARD_SIZE", size)
    with pytest.raises(ConfigurationError, match="MODEL_STUDIO_SHARD_SIZE") as info:
        load_settings(_env_file=None)
    message = str(info.value)
    assert "\n" not in message
    assert "errors.pydantic.dev" not in message
    assert "validation error" not in message.lower()  # pydantic's dump starts so
    assert "pydantic" not in message.lower()
    assert TOKEN not in message
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_bad_shard_size_as_an_argument_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="MODEL_STUDIO_SHARD_SIZE"):
        load_settings(shard_size=500, _env_file=None)


def test_poll_bounds_error_names_the_variables() -> None:
    with pytest.raises(ConfigurationError) as info:
        load_settings(poll_interval_s=5.0, poll_max_interval_s=1.0, _env_file=None)
    message = str(info.value)
    assert "MODEL_STUDIO_POLL_MAX_INTERVAL_S" in message
    assert "MODEL_STUDIO_POLL_INTERVAL_S" in message
    assert "MODEL_STUDIO_SETTINGS" not in message  # no such variable
    assert "Value error" not in message


def test_require_credentials_names_both_when_both_missing() -> None:
    with pytest.raises(ConfigurationError) as info:
        Settings(_env_file=None).require_credentials()
    message = str(info.value)
    assert "MODEL_STUDIO_TOKEN" in message
    assert "MODEL_STUDIO_ORGANIZATION_ID" in message


def test_require_credentials_names_only_the_missing_token(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MODEL_STUDIO_ORGANIZATION_ID", "org-7")
    with pytest.raises(ConfigurationError) as info:
        Settings(_env_file=None).require_credentials()
    assert "MODEL_STUDIO_TOKEN" in str(info.value)
    assert "MODEL_STUDIO_ORGANIZATION_ID" not in str(info.value)


def test_require_credentials_names_only_the_missing_organisation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MODEL_STUDIO_TOKEN", TOKEN)
    with pytest.raises(ConfigurationError) as info:
        Settings(_env_file=None).require_credentials()
    message = str(info.value)
    assert "MODEL_STUDIO_ORGANIZATION_ID" in message
    assert "MODEL_STUDIO_TOKEN" not in message
    assert TOKEN not in message


def test_an_empty_token_counts_as_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODEL_STUDIO_TOKEN", "")
    monkeypatch.setenv("MODEL_STUDIO_ORGANIZATION_ID", "org-7")
    with pytest.raises(ConfigurationError, match="MODEL_STUDIO_TOKEN"):
        Settings(_env_file=None).require_credentials()


def test_require_credentials_returns_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODEL_STUDIO_TOKEN", TOKEN)
    monkeypatch.setenv("MODEL_STUDIO_ORGANIZATION_ID", "org-7")
    token, organization_id = Settings(_env_file=None).require_credentials()
    assert token.get_secret_value() == TOKEN
    assert organization_id == "org-7"


def test_a_database_connect_timeout_below_what_psycopg_honours_is_refused_by_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MODEL_STUDIO_DATABASE_CONNECT_TIMEOUT_S", "1")
    with pytest.raises(ConfigurationError, match="MODEL_STUDIO_DATABASE_CONNECT_TIMEOUT_S"):
        load_settings(_env_file=None)
