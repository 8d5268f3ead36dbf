"""Files that ship with studio-flows: the example datasets of ``studio-flows demo``.

The repository's top-level ``examples/`` folder installs as ``studio_flows.examples``
(pyproject.toml's package-dir), in a wheel and in an editable install alike.

Example:
    >>> (examples_dir() / "prompts.jsonl").is_file()
    True
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

EXAMPLE_DATASETS = ("prompts.jsonl", "prompts.csv", "prompts.parquet", "eval.jsonl")


def examples_dir() -> Path:
    """The installed folder holding the example datasets.

    Example:
        >>> sorted(p.name for p in examples_dir().glob("prompts.*"))
        ['prompts.csv', 'prompts.jsonl', 'prompts.parquet']
    """
    # A wheel is always unpacked on disk, so the package's folder is a real path.
    return Path(str(files("studio_flows.examples")))
