"""Files that ship with studio-flows: the example datasets of ``studio-flows demo``.

A wheel carries them inside the package, in ``model_studio/examples/`` (pyproject.toml's
``force-include``); a clone or an editable install keeps them in the repository's top-level
``examples/`` folder. :func:`examples_dir` finds whichever of the two is there.

Example:
    >>> (examples_dir() / "prompts.jsonl").is_file()
    True
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

EXAMPLE_DATASETS = ("prompts.jsonl", "prompts.csv", "prompts.parquet")


def examples_dir() -> Path:
    """The folder holding the example datasets, in an installed wheel or in a clone.

    When neither holds them this is the wheel's folder, so the dataset reader names the
    missing file in its usual one-line error (no exception at import time).

    Example:
        >>> sorted(p.name for p in examples_dir().glob("prompts.*"))
        ['prompts.csv', 'prompts.jsonl', 'prompts.parquet']
    """
    bundled = _bundled_examples()
    for candidate in (bundled, _source_tree_examples()):
        if (candidate / EXAMPLE_DATASETS[0]).is_file():
            return candidate
    return bundled


def _bundled_examples() -> Path:
    # A wheel is always unpacked on disk, so the package's resource folder is a real path.
    return Path(str(files("model_studio").joinpath("examples")))


def _source_tree_examples() -> Path:
    # An editable install imports model_studio/ from the clone, whose root holds examples/.
    return Path(__file__).resolve().parents[1] / "examples"
