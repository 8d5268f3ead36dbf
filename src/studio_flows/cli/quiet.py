"""Keep library noise out of what a command-line user reads.

Imported before Prefect: Prefect reads its settings from the environment at import time.
Every value here is a default; a variable the user set wins.
"""

from __future__ import annotations

import logging
import os
import warnings

QUIET_ENVIRONMENT = {
    # No network on many machines: telemetry would only fail (and say so).
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    # The command prints its own summary and errors. Prefect's run logs still reach the
    # Prefect API (the UI shows them); only its console and debug stream handlers are muted,
    # and the temporary server's own logs (it may log a "database is locked" on start).
    "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "CRITICAL",
    "PREFECT_LOGGING_HANDLERS_DEBUG_LEVEL": "CRITICAL",
    "PREFECT_SERVER_LOGGING_LEVEL": "CRITICAL",
    # Job status changes logged by the core reach the run's logs in the Prefect UI.
    "PREFECT_LOGGING_EXTRA_LOGGERS": "studio_flows",
}


def quiet_environment(verbose: bool = False) -> None:
    """Set quiet defaults for Prefect and silence warnings, unless ``verbose``."""
    for name, value in QUIET_ENVIRONMENT.items():
        if verbose and name.endswith("_LEVEL"):
            continue
        os.environ.setdefault(name, value)
    if not verbose:
        warnings.filterwarnings("ignore")
        logging.getLogger("uvicorn").setLevel(logging.CRITICAL)
