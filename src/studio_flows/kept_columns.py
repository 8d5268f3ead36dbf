"""Kept input columns (``--keep-columns``) as export and table columns: names and kinds.

A row's kept columns are stored as one JSON object (``generation_results.metadata``); an
export (``studio-flows results``) and :func:`~studio_flows.tasks.generation.read_results`
show each as a column after the result columns (:data:`RESULT_COLUMNS`).

- Named as in the input, in the alphabetical order of those names (the rows of a
  selection may keep different ones: a column is there if any row kept it, null where a
  row did not).
- A name that is already a result column (``status``, ``result``, ``line``, ...) or
  ``metadata`` is exported as ``input_<name>`` (``input_status``): the answer's own columns
  keep their meaning whatever the input held.
- Typed from the values stored: all booleans, all integers, all numbers (integers and
  floats), else text, where a value that is not a string is its JSON text.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import pyarrow as pa

# The result columns of every export and results table, in order.
RESULT_COLUMNS = (
    "dataset", "row_key", "model_id", "status", "task_index", "messages", "result", "parsed",
    "error", "job_id", "shard_key", "temperature", "max_tokens", "flow_run_id", "completed_at",
    "created_at",
)  # fmt: skip

KeptKind = Literal["boolean", "integer", "number", "string"]
# Names a kept column cannot take as they are: the export's own columns.
RESERVED_NAMES = frozenset({"line", "metadata", *RESULT_COLUMNS})


def parsed_text(value: Any) -> str | None:
    """A checked answer's JSON value (``parsed``) as the text a string column holds.

    Example:
        >>> parsed_text({"score": 3}), parsed_text(None)
        ('{"score": 3}', None)
    """
    return None if value is None else json.dumps(value, ensure_ascii=False)


def kept_column_name(name: str) -> str:
    """The column a kept input column ``name`` is exported as.

    Example:
        >>> kept_column_name("expected"), kept_column_name("status")
        ('expected', 'input_status')
    """
    return f"input_{name}" if name in RESERVED_NAMES else name


def _kind(value: Any) -> KeptKind | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer" if -(2**63) <= value < 2**63 else "number"
    if isinstance(value, float):
        return "number"
    return "string"


def _merged(old: KeptKind | None, new: KeptKind | None) -> KeptKind | None:
    if old is None or old == new:
        return new
    if new is None:
        return old
    return "number" if {old, new} == {"integer", "number"} else "string"


@dataclass(frozen=True)
class KeptColumns:
    """The kept input columns of a selection of results, and the kind of each.

    Example:
        >>> kept = KeptColumns.of([{"id": 7, "status": "ok"}, {"id": 8, "note": [1]}, None])
        >>> kept.columns
        ('id', 'note', 'input_status')
        >>> kept.values({"id": 8, "note": [1]}, text=True)
        {'id': '8', 'note': '[1]', 'input_status': ''}
    """

    kinds: dict[str, KeptKind | None] = field(default_factory=dict)

    @classmethod
    def of(cls, metadata: Iterable[Mapping[str, Any] | None]) -> KeptColumns:
        """The columns and kinds found in the ``metadata`` of every row."""
        kinds: dict[str, KeptKind | None] = {}
        for kept in metadata:
            for name, value in (kept or {}).items():
                kinds[name] = _merged(kinds.get(name), _kind(value))
        return cls(dict(sorted(kinds.items())))

    @property
    def columns(self) -> tuple[str, ...]:
        """The exported column names, after the result columns."""
        return tuple(kept_column_name(name) for name in self.kinds)

    def values(self, metadata: Mapping[str, Any] | None, *, text: bool = False) -> dict[str, Any]:
        """A row's kept values by exported name; ``text`` for CSV (None is empty)."""
        kept = metadata or {}
        out: dict[str, Any] = {}
        for name, kind in self.kinds.items():
            value = kept.get(name)
            if text:
                value = "" if value is None else _as_text(value)
            elif kind == "number" and value is not None:
                value = float(value)
            elif kind in (None, "string") and value is not None:
                value = _as_text(value)
            out[kept_column_name(name)] = value
        return out

    def fields(self) -> list[pa.Field]:
        """The Arrow fields of the kept columns (all nullable)."""
        import pyarrow as pa  # imported here: JSONL and CSV exports need no pyarrow

        arrow = {"boolean": pa.bool_(), "integer": pa.int64(), "number": pa.float64()}
        return [
            pa.field(kept_column_name(name), arrow.get(kind or "string", pa.string()))
            for name, kind in self.kinds.items()
        ]


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
