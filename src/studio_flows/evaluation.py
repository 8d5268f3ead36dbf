"""Comparing models over one dataset: answers side by side, one line per row, and scores.

An evaluation run sends every row once per model. What it leaves is read back here as
:class:`Answers` (one input row with each model's stored result), from a source's rows or
from the results stored under a dataset name, and turned into

- wide records (:func:`wide_records`): one per row, an ``answer:<model>`` and a
  ``status:<model>`` column per model, empty where a model has no answer (never dropped);
- scores (:class:`Scores`) against an expected-answer column the run kept: *exact match*
  (the answer equals the expected one once both are normalised) and *contains* (the
  normalised answer contains the normalised expected one). Normalised: case folded,
  punctuation dropped, whitespace collapsed. A row with no answer from a model counts as a
  miss for it; a row without an expected value is not scored. With several models, each
  after the first is paired with the first on exact match (:meth:`Scores.mcnemar`);
- a markdown table of the first rows, one answer per model (:func:`side_by_side_markdown`);
- judged scores (:func:`judged_scores`): a ``score:<model>`` column per judged model in the
  wide records.

Example:
    >>> row = Answers("r1", "Capital of France?", {"expected": "Paris"},
    ...     {"a": {"status": "completed", "result": "Paris."}, "b": {"status": "failed"}})
    >>> wide_records([row], ["a", "b"], kept=["expected"])[0]["answer:a"]
    'Paris.'
    >>> scores = Scores.of([row], ["a", "b"], expected="expected")
    >>> scores["a"].exact_match, scores["b"].exact_match
    (1.0, 0.0)
"""

from __future__ import annotations

import itertools
import re
import unicodedata
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.engine import Engine

from studio_flows.kept_columns import kept_column_name
from studio_flows.rows import Row
from studio_flows.scores import PairedResult, mcnemar
from studio_flows.statuses import RowStatus
from studio_flows.storage import (
    iter_latest_by_row,
    latest_per_model,
    read_scores,
    results_of_rows,
    stored_model_ids,
)

Record = dict[str, Any]
_SPACES = re.compile(r"\s+")
# Rows read ahead to learn the kept columns: a run keeps the same columns for every row.
_LOOKAHEAD = 1000


@dataclass(frozen=True)
class Answers:
    """One input row and each model's stored result for it (by model id)."""

    row_key: str
    prompt: str
    metadata: Mapping[str, Any] | None
    by_model: Mapping[str, Record]
    line: int | None = None

    @classmethod
    def of_row(cls, row: Row, results: Sequence[Record]) -> Answers:
        """A source row and its results (the latest completed of each model wins)."""
        return cls(
            row_key=row.row_key,
            prompt=row.messages[-1].content,
            metadata=row.metadata,
            by_model={r["model_id"]: r for r in latest_per_model(results)},
            line=row.line,
        )

    @classmethod
    def of_results(cls, results: Sequence[Record]) -> Answers:
        """The stored results of one row (read back by dataset name), one per model."""
        first = results[0]
        metadata = next((r["metadata"] for r in results if r.get("metadata")), None)
        return cls(
            row_key=first["row_key"],
            prompt=first["messages"][-1]["content"] if first["messages"] else "",
            metadata=metadata,
            by_model={r["model_id"]: r for r in results},
        )

    def answer(self, model: str) -> str | None:
        """The model's answer, or None if it has none (failed or never ran)."""
        found = self.by_model.get(model)
        if found is None or found.get("status") != RowStatus.COMPLETED:
            return None
        return found.get("result")


def wide_columns(models: Sequence[str], kept: Sequence[str], *, with_line: bool) -> list[str]:
    """The columns of a wide export, in order.

    Example:
        >>> wide_columns(["a", "b"], ["id"], with_line=False)
        ['row_key', 'id', 'prompt', 'answer:a', 'status:a', 'answer:b', 'status:b']
    """
    lead = ["line", "row_key"] if with_line else ["row_key"]
    per_model = [f"{kind}:{model}" for model in models for kind in ("answer", "status")]
    return [*lead, *(wide_name(name) for name in kept), "prompt", *per_model]


def wide_name(kept: str) -> str:
    """The wide view's column for the kept input column ``kept`` (as in the long export,
    and ``prompt`` too becomes ``input_prompt``).

    Example:
        >>> wide_name("expected"), wide_name("status"), wide_name("prompt")
        ('expected', 'input_status', 'input_prompt')
    """
    return "input_prompt" if kept == "prompt" else kept_column_name(kept)


def wide_records(
    rows: Iterable[Answers], models: Sequence[str], *, kept: Sequence[str]
) -> list[Record]:
    """One record per row (see :func:`iter_wide_records`), as a list."""
    return list(iter_wide_records(rows, models, kept=kept))


def iter_wide_records(
    rows: Iterable[Answers], models: Sequence[str], *, kept: Sequence[str]
) -> Iterator[Record]:
    """One record per row: its key, kept columns, prompt, and each model's answer and status.

    A model with no stored result for a row has an empty answer and status.
    """
    for row in rows:
        record: Record = {"row_key": row.row_key}
        if row.line is not None:
            record["line"] = row.line
        metadata = row.metadata or {}
        for name in kept:
            record[wide_name(name)] = metadata.get(name)
        record["prompt"] = row.prompt
        for model in models:
            found = row.by_model.get(model) or {}
            record[f"answer:{model}"] = found.get("result") or found.get("error")
            record[f"status:{model}"] = found.get("status")
        yield record


def wide_results(
    engine: Engine,
    *,
    dataset: str | None = None,
    rows: Iterable[Row] | None = None,
    model_id: str | None = None,
) -> tuple[list[str], Iterator[Record]]:
    """The columns and records (streamed) of a wide view of stored results.

    One answer per (row, model): the latest completed, else the latest written. By
    ``dataset`` name (rows in the order first sent), or for the source
    ``rows`` (in their order, with ``line``, those never run included with empty answers).
    The models are ``model_id``, else every model with stored results (of that dataset, or
    of the whole table for ``rows``), sorted; the kept columns are the keys the first rows'
    ``metadata`` holds.

    Example:
        >>> from studio_flows.storage import make_engine
        >>> columns, records = wide_results(make_engine("sqlite://"), dataset="d")
        >>> columns, list(records)
        (['row_key', 'prompt'], [])
    """
    named = [model_id] if model_id else None
    models = named or stored_model_ids(engine, dataset=None if rows is not None else dataset)
    if rows is None:
        grouped = iter_latest_by_row(engine, dataset=dataset)
        answers = (Answers.of_results(results) for results in grouped)
    else:
        answers = (Answers.of_row(row, found) for row, found in results_of_rows(engine, rows))
    ahead = list(itertools.islice(answers, _LOOKAHEAD))
    kept = sorted({key for row in ahead for key in (row.metadata or {})})
    columns = wide_columns(models, kept, with_line=rows is not None)
    records = iter_wide_records(itertools.chain(ahead, answers), models, kept=kept)
    scores = judged_scores(engine, models, dataset=None if rows is not None else dataset)
    scored = [model for model in models if model in scores]
    if not scored:
        return columns, records
    return columns + [f"score:{m}" for m in scored], _with_scores(records, scored, scores)


def judged_scores(
    engine: Engine, models: Sequence[str], *, dataset: str | None = None
) -> dict[str, dict[str, float]]:
    """``{model: {row_key: score}}``: each row's judged score, the mean over its judges'
    latest completed verdicts (of ``dataset``'s rows, or of every dataset).

    Example:
        >>> from studio_flows.storage import make_engine
        >>> judged_scores(make_engine("sqlite://"), ["a"], dataset="d")
        {}
    """
    latest: dict[tuple[str, str, str], float] = {}
    for verdict in read_scores(engine, dataset=dataset, models=models, status="completed"):
        if verdict["score"] is not None:
            key = (verdict["model_id"], verdict["row_key"], verdict["judge_model"])
            latest[key] = float(verdict["score"])
    judged: dict[str, dict[str, list[float]]] = {}
    for (model, row_key, _judge), score in latest.items():
        judged.setdefault(model, {}).setdefault(row_key, []).append(score)
    return {
        model: {row: round(sum(found) / len(found), 2) for row, found in rows.items()}
        for model, rows in judged.items()
    }


def _with_scores(
    records: Iterator[Record], models: Sequence[str], scores: Mapping[str, Mapping[str, float]]
) -> Iterator[Record]:
    for record in records:
        for model in models:
            record[f"score:{model}"] = scores[model].get(record["row_key"])
        yield record


def normalise(text: str) -> str:
    """Case folded, punctuation dropped, whitespace collapsed: what scores compare.

    Example:
        >>> normalise("  The  Eiffel-Tower! ")
        'the eiffeltower'
    """
    kept = "".join(c for c in text.casefold() if not unicodedata.category(c).startswith("P"))
    return _SPACES.sub(" ", kept).strip()


@dataclass
class ModelScore:
    """How often one model's answers matched the expected ones."""

    scored_rows: int = 0
    exact: int = 0
    contained: int = 0
    # Against the first model: rows only this one matches exactly, and the reverse.
    exact_wins: int = 0
    exact_losses: int = 0

    @property
    def exact_match(self) -> float:
        """Share of scored rows whose normalised answer equals the expected one."""
        return self.exact / self.scored_rows if self.scored_rows else 0.0

    @property
    def contains(self) -> float:
        """Share of scored rows whose normalised answer contains the expected one."""
        return self.contained / self.scored_rows if self.scored_rows else 0.0


@dataclass
class Scores:
    """Scores by model, accumulated row by row (:meth:`add`) or at once (:meth:`of`)."""

    models: Sequence[str]
    expected: str
    by_model: dict[str, ModelScore] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.by_model = {model: ModelScore() for model in self.models}

    @classmethod
    def of(cls, rows: Iterable[Answers], models: Sequence[str], *, expected: str) -> Scores:
        """The scores of ``rows`` against their ``expected`` column."""
        scores = cls(models, expected)
        for row in rows:
            scores.add(row)
        return scores

    def add(self, row: Answers) -> None:
        """Score one row (rows without an expected value are left out)."""
        value = (row.metadata or {}).get(self.expected)
        if value is None or str(value).strip() == "":
            return
        expected = normalise(str(value))
        right: dict[str, bool] = {}
        for model, score in self.by_model.items():
            score.scored_rows += 1
            answer = normalise(row.answer(model) or "")
            right[model] = bool(answer) and answer == expected
            score.exact += int(right[model])
            score.contained += int(bool(answer) and expected in answer)
        # Paired with the first model on this row (counted as rows go: no row is kept).
        first = right[self.models[0]]
        for model in self.models[1:]:
            score = self.by_model[model]
            score.exact_wins += int(right[model] and not first)
            score.exact_losses += int(first and not right[model])

    def mcnemar(self) -> list[PairedResult]:
        """Each model after the first against the first on exact match (McNemar's test).

        Example:
            >>> row = Answers("r1", "Capital?", {"expected": "Paris"},
            ...     {"a": {"status": "failed"}, "b": {"status": "completed", "result": "Paris"}})
            >>> Scores.of([row], ["a", "b"], expected="expected").mcnemar()[0].sentence()
            'b wins 1, ties 0, loses 0 against a on exact match (p = 1.0000)'
        """
        pairs = []
        for model in self.models[1:]:
            score = self.by_model[model]
            ties = score.scored_rows - score.exact_wins - score.exact_losses
            found = mcnemar(
                self.models[0], model, wins=score.exact_wins, ties=ties, losses=score.exact_losses
            )
            pairs.append(found)
        return pairs

    def __getitem__(self, model: str) -> ModelScore:
        return self.by_model[model]


def side_by_side_markdown(
    rows: Sequence[Answers], models: Sequence[str], *, kept: Sequence[str], width: int = 80
) -> str:
    """A markdown table of ``rows``: the input, kept columns, then one answer per model.

    Example:
        >>> row = Answers("r1", "Hi?", None, {"a": {"status": "completed", "result": "Hello"}})
        >>> print(side_by_side_markdown([row], ["a", "b"], kept=[]))
        | prompt | a | b |
        | --- | --- | --- |
        | Hi? | Hello |  |
        <BLANKLINE>
    """
    header = ["prompt", *kept, *models]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for row in rows:
        metadata = row.metadata or {}
        cells = [row.prompt, *(metadata.get(name) for name in kept)]
        cells += [_answer_cell(row, model) for model in models]
        lines.append("| " + " | ".join(_cell(value, width) for value in cells) + " |")
    return "\n".join(lines) + "\n"


def _answer_cell(row: Answers, model: str) -> str:
    found = row.by_model.get(model)
    if found is None:
        return ""
    if found.get("status") == RowStatus.COMPLETED:
        return str(found.get("result") or "")
    return f"({found.get('status')}: {found.get('error') or ''})"


def _cell(value: object, width: int) -> str:
    text = "" if value is None else str(value)
    text = _SPACES.sub(" ", text).replace("|", "\\|").strip()
    return text if len(text) <= width else text[: width - 1] + "…"


@dataclass
class Comparison:
    """What an evaluation run's rows show once they are read back: samples and scores."""

    samples: list[Answers]
    scores: Scores | None


def compare_models(
    engine: Engine,
    rows: Iterable[Row],
    models: Sequence[str],
    *,
    params_hash: str,
    expected: str | None = None,
    samples: int = 5,
) -> Comparison:
    """Read back the results of ``rows`` for ``models`` (sent with ``params_hash``).

    Keeps the first ``samples`` rows for a side-by-side view and, with ``expected``,
    scores every row; one pass over ``rows``, one query per thousand of them.

    Example:
        >>> from studio_flows.storage import make_engine
        >>> compare_models(make_engine("sqlite://"), [], ["a"], params_hash="h").samples
        []
    """
    comparison = Comparison([], Scores(models, expected) if expected else None)
    for row, results in results_of_rows(engine, rows):
        mine = [r for r in results if r["model_id"] in models and r["params_hash"] == params_hash]
        answers = Answers.of_row(row, mine)
        if len(comparison.samples) < samples:
            comparison.samples.append(answers)
        elif comparison.scores is None:
            break
        if comparison.scores is not None:
            comparison.scores.add(answers)
    return comparison
