"""studio-flows: batch generation with IONOS AI Model Studio, every answer kept in SQL.

The public API. Names that need Prefect (the credentials Block, the tasks and flows) are
imported when first used, so ``import studio_flows`` and the core modules
(``studio_flows.client``, ``studio_flows.errors``, ...) stay light.

Example:
    >>> import studio_flows
    >>> studio_flows.__version__
    '0.1.0'
    >>> "generate_dataset" in studio_flows.__all__
    True
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("studio-flows")
except PackageNotFoundError:  # imported from a folder that was never installed
    __version__ = "0.0.0"

# name -> the module that defines it
_PUBLIC = {
    "AsyncModelStudioClient": "studio_flows.client",
    "ModelStudioClient": "studio_flows.client",
    "Settings": "studio_flows.settings",
    "GenerateOptions": "studio_flows.options",
    "RunSummary": "studio_flows.summary",
    "EmulatorConfig": "studio_flows.emulator",
    "EmulatorServer": "studio_flows.emulator",
    "StudioFlowsError": "studio_flows.errors",
    "ConfigurationError": "studio_flows.errors",
    "DatasetError": "studio_flows.errors",
    "ModelStudioError": "studio_flows.errors",
    "JobFailedError": "studio_flows.errors",
    "JobDeadlineExceededError": "studio_flows.errors",
    "RequestRejectedError": "studio_flows.errors",
    "RunInterrupted": "studio_flows.errors",
    "FairUseError": "studio_flows.errors",
    "SlotWaitTimeoutError": "studio_flows.errors",
    "SlotDeadlockError": "studio_flows.errors",
    "GenerationJobFailed": "studio_flows.errors",
    "GenerationJobCancelled": "studio_flows.errors",
    "GenerationJobTimedOut": "studio_flows.errors",
    "Generation": "studio_flows.generation",
    "GenerationJob": "studio_flows.generation",
    "GenerationResult": "studio_flows.generation",
    "ModelStudioCredentials": "studio_flows.blocks",
    "submit_generation_job": "studio_flows.tasks.generation",
    "wait_for_generation_job": "studio_flows.tasks.generation",
    "generate": "studio_flows.tasks.generation",
    "read_results": "studio_flows.tasks.generation",
    "read_scores": "studio_flows.tasks.scores",
    "export_training_set": "studio_flows.tasks.generation",
    "generate_dataset": "studio_flows.flows.generate",
    "generate_rows": "studio_flows.flows.rows",
    "prefect_api": "studio_flows.cli.local_server",
}

__all__ = [
    "AsyncModelStudioClient",
    "ConfigurationError",
    "DatasetError",
    "EmulatorConfig",
    "EmulatorServer",
    "FairUseError",
    "GenerateOptions",
    "Generation",
    "GenerationJob",
    "GenerationJobCancelled",
    "GenerationJobFailed",
    "GenerationJobTimedOut",
    "GenerationResult",
    "JobDeadlineExceededError",
    "JobFailedError",
    "ModelStudioClient",
    "ModelStudioCredentials",
    "ModelStudioError",
    "RequestRejectedError",
    "RunInterrupted",
    "RunSummary",
    "Settings",
    "SlotDeadlockError",
    "SlotWaitTimeoutError",
    "StudioFlowsError",
    "__version__",
    "export_training_set",
    "generate",
    "generate_dataset",
    "generate_rows",
    "prefect_api",
    "read_results",
    "read_scores",
    "submit_generation_job",
    "wait_for_generation_job",
]

if TYPE_CHECKING:
    from studio_flows.blocks import ModelStudioCredentials
    from studio_flows.cli.local_server import prefect_api
    from studio_flows.client import AsyncModelStudioClient, ModelStudioClient
    from studio_flows.emulator import EmulatorConfig, EmulatorServer
    from studio_flows.errors import (
        ConfigurationError,
        DatasetError,
        FairUseError,
        GenerationJobCancelled,
        GenerationJobFailed,
        GenerationJobTimedOut,
        JobDeadlineExceededError,
        JobFailedError,
        ModelStudioError,
        RequestRejectedError,
        RunInterrupted,
        SlotDeadlockError,
        SlotWaitTimeoutError,
        StudioFlowsError,
    )
    from studio_flows.flows.generate import generate_dataset
    from studio_flows.flows.rows import generate_rows
    from studio_flows.generation import Generation, GenerationJob, GenerationResult
    from studio_flows.options import GenerateOptions
    from studio_flows.settings import Settings
    from studio_flows.summary import RunSummary
    from studio_flows.tasks.generation import (
        export_training_set,
        generate,
        read_results,
        submit_generation_job,
        wait_for_generation_job,
    )
    from studio_flows.tasks.scores import read_scores


def __getattr__(name: str) -> Any:
    """Import a public name from its module on first use (Prefect loads slowly)."""
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'studio_flows' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])
