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
    # The command prints its own summary; Prefect's run logs stay in the Prefect UI/API.
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "PREFECT_LOGGING_SERVER_LEVEL": "CRITICAL",
    "PREFECT_SERVER_LOGGING_LEVEL": "CRITICAL",
    "PREFECT_LOGGING_INTERNAL_LEVEL": "CRITICAL",
}


def quiet_environment(verbose: bool = False) -> None:
    """Set quiet defaults for Prefect and silence warnings, unless ``verbose``."""
    for name, value in QUIET_ENVIRONMENT.items():
        if verbose and "LEVEL" in name:
            continue
        os.environ.setdefault(name, value)
    if not verbose:
        warnings.filterwarnings("ignore")
        logging.getLogger("uvicorn").setLevel(logging.CRITICAL)
