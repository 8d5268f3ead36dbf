"""Shared fixtures live in tests/fixtures/, one module per real service."""

pytest_plugins = [
    "tests.fixtures.emulator",
    "tests.fixtures.databases",
    "tests.fixtures.harness",
    "tests.fixtures.hung_server",
    "tests.fixtures.prefect_server",
    "tests.fixtures.private_postgres",
    "tests.fixtures.redis_server",
    "tests.fixtures.signals",
    "tests.fixtures.cli_runs",  # last: it imports the emulator fixtures' module
]
