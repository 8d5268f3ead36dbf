"""Judged evaluation: a judge model scores each completed answer, as ordinary paid work.

Why judge rows are generation rows: a verdict costs a Model Studio job like an answer, so
it must be paid exactly once, held to the fair-use limit, recorded before its POST and
re-attached after a kill. Those guarantees live in the identity, the ledger and the lanes
(:mod:`studio_flows.planning`, :mod:`studio_flows.jobs`); a judge row that *is* a
generation row gets all of them without a second mechanism. A judge row is

- ``row_key``: ``judge-`` and a digest of the judged answer's identity key and the judge
  template's hash, so the row is distinct per (row, answered model, template);
- the conversation: the judge template rendered over the row's kept columns, ``prompt``,
  ``answer``, ``expected`` and ``model_id`` (plus the verdict schema's instruction);
- ``model_id``: the judge, sent at temperature 0 with the verdict schema (its digest is in
  the parameters' hash).

So its identity is unique per (row, answered model, judge, template). Judge rows are stored
under the dataset name ``<dataset>#judge`` (so ``results --dataset D`` shows answers only),
and each one's verdict, parsed by the structured-answer check, is copied into
``generation_scores`` (:func:`verdicts`). A judge answer that does not match the verdict
schema is a failed judge row, so a failed score with the reason, and the next run sends it
again; a completed one is never sent again.

Example:
    >>> spec = JudgeSpec(models=("judge",))
    >>> spec.params()[0].temperature, spec.params()[0].model_id
    (0.0, 'judge')
    >>> len(spec.template_hash)
    64
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.engine import Engine

from studio_flows.datasets.templates import (
    CompiledTemplate,
    TemplateRowError,
    compile_template,
)
from studio_flows.models import Message
from studio_flows.rows import GenerationParams, Row, RowIdentity, Shard, sha256_hex
from studio_flows.statuses import RowStatus
from studio_flows.storage import LOOKUP_CHUNK, results_of_rows
from studio_flows.structured import TEMPLATE_NAME, ResponseSchema, with_instruction

# What a judge answers: a 1-5 integer score and a one-line reason.
VERDICT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "score": {"type": "integer", "minimum": 1, "maximum": 5},
        "reason": {"type": "string"},
    },
    "required": ["score", "reason"],
}

DEFAULT_JUDGE_TEMPLATE = """\
You grade an answer to a question.

Question:
{{ prompt }}
{% if expected is defined %}
Reference answer:
{{ expected }}
{% endif %}
Answer given by {{ model_id }}:
{{ answer }}

Score the answer from 1 (wrong or useless) to 5 (correct and complete). Reply with JSON
only: {"score": <integer 1-5>, "reason": "<one line>"}"""

# Names the judge template sees besides the row's kept columns.
JUDGE_NAMES = frozenset({"prompt", "answer", "expected", "model_id", TEMPLATE_NAME})
JUDGE_TEMPERATURE = 0.0
JUDGE_MAX_TOKENS = 256
JUDGE_SUFFIX = "#judge"


def judge_dataset(dataset: str) -> str:
    """The dataset name judge rows of ``dataset`` are stored under.

    Example:
        >>> judge_dataset("eval.jsonl")
        'eval.jsonl#judge'
    """
    return dataset + JUDGE_SUFFIX


@dataclass(frozen=True)
class JudgeSpec:
    """Who judges (``models``) and with which template (None: the default rubric)."""

    models: tuple[str, ...]
    template_text: str | None = None

    @functools.cached_property
    def text(self) -> str:
        """The judge template's text (the default rubric unless one was given)."""
        return self.template_text or DEFAULT_JUDGE_TEMPLATE

    @functools.cached_property
    def template(self) -> CompiledTemplate:
        """The compiled template (a syntax error is a DatasetError naming the flag)."""
        return compile_template(self.text, "--judge-template")

    @property
    def template_hash(self) -> str:
        """The hash of the template's text: part of every verdict's identity."""
        return sha256_hex(self.text)

    @functools.cached_property
    def schema(self) -> ResponseSchema:
        """The verdict's schema."""
        return ResponseSchema.of(VERDICT_SCHEMA)

    def params(self) -> list[GenerationParams]:
        """What each judge's rows are sent with, in the order of :attr:`models`."""
        return [
            GenerationParams(
                judge, JUDGE_TEMPERATURE, JUDGE_MAX_TOKENS, self.schema, self.template_hash
            )
            for judge in self.models
        ]

    def columns(self) -> frozenset[str]:
        """The input columns the template reads (kept beside each answer so it can)."""
        return self.template.columns - JUDGE_NAMES

    def conversation(self, row: Row, model: str, answer: str, expected: Any) -> list[Message]:
        """The judge conversation for ``model``'s ``answer`` to ``row``; raise
        :class:`TemplateRowError` with the reason when the template cannot render it."""
        context: dict[str, Any] = dict(row.metadata or {})
        context.update(
            prompt=row.messages[-1].content,
            answer=answer,
            expected=expected,
            model_id=model,
            response_schema=self.schema.text,
        )
        text = self.template.render(context)
        if not text.strip():
            raise TemplateRowError("the judge template rendered an empty message")
        turns = [Message(role="user", content=text)]
        if TEMPLATE_NAME in self.template.columns:
            return turns
        return with_instruction(turns, self.schema.instruction())


@dataclass(frozen=True)
class JudgeItem:
    """One completed answer to judge: the judge row for it, or why there is none."""

    dataset: str
    row_key: str
    model_id: str
    answer_key: str
    answer_id: int | None
    row: Row | None = None
    error: str | None = None

    def verdict(self, judge: str, template_hash: str, **fields: Any) -> dict[str, Any]:
        """A ``generation_scores`` record for this answer from ``judge``."""
        return {
            "dataset": self.dataset,
            "row_key": self.row_key,
            "model_id": self.model_id,
            "answer_key": self.answer_key,
            "answer_id": self.answer_id,
            "judge_model": judge,
            "template_hash": template_hash,
            **fields,
        }


@dataclass
class JudgeCounts:
    """What the judge pass found: answers to judge, and those the template could not render."""

    answers: int = 0
    not_rendered: int = 0
    by_model: dict[str, int] = field(default_factory=dict)


def judge_items(
    engine: Engine,
    rows: Iterable[Row],
    models: Sequence[str],
    *,
    params_hash: str,
    dataset: str,
    spec: JudgeSpec,
    expected_column: str | None = None,
    counts: JudgeCounts | None = None,
) -> Iterator[JudgeItem]:
    """Each completed answer of ``models`` (sent with ``params_hash``) to ``rows``, in row
    order then model order, with its judge row; lazily, one query per chunk of rows."""
    for row, results in results_of_rows(engine, rows):
        for result in results:
            if result["model_id"] not in models or result["params_hash"] != params_hash:
                continue
            if result["status"] != RowStatus.COMPLETED or result.get("result") is None:
                continue
            item = _item(row, result, dataset, spec, expected_column)
            if counts is not None:
                counts.answers += 1
                counts.not_rendered += int(item.row is None)
                counts.by_model[item.model_id] = counts.by_model.get(item.model_id, 0) + 1
            yield item


def _item(
    row: Row, result: Mapping[str, Any], dataset: str, spec: JudgeSpec, expected: str | None
) -> JudgeItem:
    model = str(result["model_id"])
    answer_key = RowIdentity(row.row_key, row.prompt_hash, model, result["params_hash"]).key
    item = JudgeItem(dataset, row.row_key, model, answer_key, result.get("id"))
    wanted = None if expected is None else (row.metadata or {}).get(expected)
    try:
        turns = spec.conversation(row, model, str(result["result"]), wanted)
    except TemplateRowError as err:
        return JudgeItem(**{**item.__dict__, "error": f"judge {err}"})
    judged = Row.from_messages(
        turns,
        line=row.line,
        row_key="judge-" + sha256_hex(f"{answer_key}:{spec.template_hash}")[:32],
        metadata={"row_key": row.row_key, "model_id": model, "answer_key": answer_key},
    )
    return JudgeItem(**{**item.__dict__, "row": judged})


def judge_shards(
    items: Iterable[JudgeItem], spec: JudgeSpec, *, dataset: str, shard_size: int
) -> Iterator[Shard]:
    """The judge rows of ``items`` in shards of ``shard_size``, once per judge (the judges'
    shards of the same answers one after another, as :func:`for_each_model` does)."""
    rows = (item.row for item in items if item.row is not None)
    params = spec.params()
    while chunk := tuple(itertools.islice(rows, shard_size)):
        for each in params:
            yield Shard(dataset=judge_dataset(dataset), params=each, rows=chunk)


def verdicts(
    engine: Engine, items: Iterable[JudgeItem], spec: JudgeSpec, *, flow_run_id: str | None
) -> Iterator[dict[str, Any]]:
    """The ``generation_scores`` records of ``items``: each judge row's stored outcome
    (completed: its score and reason; failed: the error), and a failed verdict for an
    answer the template could not render. A judge row with no stored outcome (its job did
    not end) gives none."""
    iterator = iter(items)
    while batch := list(itertools.islice(iterator, LOOKUP_CHUNK)):
        judged = [item for item in batch if item.row is not None]
        rows = [item.row for item in judged if item.row is not None]
        stored = {row.row_key: found for row, found in results_of_rows(engine, rows)}
        for item in batch:
            found = stored.get(item.row.row_key, []) if item.row is not None else []
            for params in spec.params():
                record = _verdict(item, params, found or [], spec, flow_run_id)
                if record is not None:
                    yield record


def _verdict(
    item: JudgeItem,
    params: GenerationParams,
    found: Sequence[Mapping[str, Any]],
    spec: JudgeSpec,
    flow_run_id: str | None,
) -> dict[str, Any] | None:
    judge = params.model_id
    if item.row is None:
        return item.verdict(
            judge,
            spec.template_hash,
            status=RowStatus.FAILED.value,
            error=item.error,
            flow_run_id=flow_run_id,
        )
    mine = [r for r in found if r["model_id"] == judge and r["params_hash"] == params.params_hash]
    if not mine:
        return None
    result = mine[-1]
    fields: dict[str, Any] = {"flow_run_id": result.get("flow_run_id") or flow_run_id}
    parsed = result.get("parsed")
    if result["status"] == RowStatus.COMPLETED and isinstance(parsed, Mapping):
        fields.update(status=RowStatus.COMPLETED.value, score=float(parsed["score"]))
        fields["reason"] = str(parsed.get("reason", ""))
    else:
        fields.update(status=RowStatus.FAILED.value, error=result.get("error") or "no verdict")
    return item.verdict(judge, spec.template_hash, **fields)


__all__ = [
    "DEFAULT_JUDGE_TEMPLATE",
    "VERDICT_SCHEMA",
    "JudgeCounts",
    "JudgeItem",
    "JudgeSpec",
    "judge_dataset",
    "judge_items",
    "judge_shards",
    "verdicts",
]
