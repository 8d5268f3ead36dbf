"""The run summary: what a generation run did, as data, a table and markdown.

Example:
    >>> summary = RunSummary(dataset="d.jsonl", model_id="m", rows_in_dataset=2, completed=2)
    >>> summary.all_completed
    True
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from pydantic import BaseModel, Field

from studio_flows.jobs import JobReport
from studio_flows.scores import MCNEMAR_NAME, JudgeReport, PairedResult


class ModelSummary(BaseModel):
    """One model's share of a run (an evaluation run has one per model).

    ``wall_time_s`` runs from this model's first job start to its last job end in this run;
    the scores are set when the run names an expected-answer column.
    """

    model_id: str
    already_done: int = 0
    rows_submitted: int = 0
    completed: int = 0
    failed: int = 0
    unfinished: int = 0
    jobs: int = 0
    wall_time_s: float = 0.0
    scored_rows: int = 0
    exact_match: float | None = None
    contains: float | None = None


class JudgingSummary(BaseModel):
    """What the run's judges did (their jobs, this run) and what every stored score says.

    ``reports`` cover every stored verdict of the dataset's rows and the run's models from
    each judge with this template, not only this run's.
    """

    judges: list[str]
    template_hash: str
    answers: int = Field(default=0, description="completed answers the judges score")
    already_done: int = Field(default=0, description="verdicts a past run completed")
    rows_submitted: int = 0
    completed: int = 0
    failed: int = Field(default=0, description="verdicts that failed (retried on rerun)")
    unfinished: int = 0
    jobs: int = 0
    reports: list[JudgeReport] = Field(default_factory=list)

    def table(self) -> list[dict[str, str | int | float]]:
        """Rows for the run summary's two-column table."""
        labels = {
            "answers": "answers to judge",
            "already_done": "verdicts already done",
            "rows_submitted": "verdicts submitted",
            "completed": "verdicts completed",
            "failed": "verdicts failed",
            "unfinished": "verdicts unfinished",
            "jobs": "judge jobs",
        }
        return [{"metric": label, "value": getattr(self, key)} for key, label in labels.items()]

    def sentences(self) -> list[str]:
        """One line per paired comparison, naming the judge when there are several."""
        several = len(self.reports) > 1
        return [
            (f"{report.judge_model}: " if several else "") + pair.sentence()
            for report in self.reports
            for pair in report.paired
        ]


class RunSummary(BaseModel):
    """Counts of one run; the flow's return value and the CLI's report.

    Two units: rows of the source (``rows_in_dataset``, ``bad_rows_skipped``,
    ``duplicates``) and answers, one per (row, model) pair (the rest); ``models`` holds
    each model's share. :meth:`table` names the unit of every count.
    """

    dataset: str
    model_id: str = Field(description="the model, or the models joined by ', '")
    rows_in_dataset: int = 0
    bad_rows_skipped: int = 0
    duplicates: int = 0
    already_done: int = 0
    rows_submitted: int = 0
    completed: int = 0
    failed: int = 0
    invalid_answers: int = Field(
        default=0, description="of failed: answers that do not match the response schema"
    )
    unfinished: int = Field(default=0, description="rows of shards that raised (not persisted)")
    jobs: int = 0
    reattached: int = 0
    ambiguous_resubmitted: int = 0
    rate_limited_429: int = 0
    requests: int = Field(default=0, description="API requests this run's client sent")
    wall_time_s: float = 0.0
    bad_rows: list[str] = Field(default_factory=list, description="first bad rows skipped")
    errors: list[str] = Field(default_factory=list, description="first shard errors")
    interrupted_by: str | None = Field(default=None, description="the signal that stopped it")
    models: list[ModelSummary] = Field(default_factory=list, description="counts by model")
    judging: JudgingSummary | None = Field(default=None, description="the judges' share")
    exact_match_pairs: list[PairedResult] = Field(
        default_factory=list, description="each later model against the first, on exact match"
    )

    @property
    def rows_to_do(self) -> int:
        """Answers this run had to give: each good row once per model, less those done before.

        ``rows_in_dataset`` counts the good rows, bad rows and exact duplicates left out.

        Example:
            >>> RunSummary(dataset="d", model_id="m", rows_in_dataset=4, already_done=1).rows_to_do
            3
        """
        return max(self.rows_in_dataset * max(len(self.models), 1) - self.already_done, 0)

    @property
    def rows_in_source(self) -> int:
        """Rows read from the source: the good ones, the bad ones skipped and the exact
        duplicates left out.

        Example:
            >>> RunSummary(dataset="d", model_id="m", rows_in_dataset=3, bad_rows_skipped=1
            ...            ).rows_in_source
            4
        """
        return self.rows_in_dataset + self.bad_rows_skipped + self.duplicates

    @property
    def rows_left(self) -> int:
        """Rows still without an answer, for the next run."""
        return max(self.rows_to_do - self.completed - self.failed, 0)

    def stopped_line(self) -> str:
        """One line for a run a signal stopped: what is done and what is left."""
        noun = _answers(len(self.models))
        return (
            f"interrupted by {self.interrupted_by}: {self.completed + self.failed:,} of "
            f"{self.rows_to_do:,} {noun} done ({self.completed:,} completed, {self.failed:,} "
            f"failed), {self.rows_left:,} left; run the same command again to finish "
            "(jobs in flight are recorded and re-attached, not paid again)"
        )

    @property
    def requests_per_job(self) -> float:
        """Requests sent (POSTs, polls, retries) per job run; 0 without a job.

        Example:
            >>> RunSummary(dataset="d", model_id="m", jobs=4, requests=15).requests_per_job
            3.75
        """
        return round(self.requests / self.jobs, 2) if self.jobs else 0.0

    @property
    def all_completed(self) -> bool:
        """True when no row of this run failed or was left unfinished."""
        judged = self.judging is None or (self.judging.failed == 0 and not self.judging.unfinished)
        return self.failed == 0 and self.unfinished == 0 and judged

    def table(self) -> list[dict[str, str | int | float]]:
        """Rows for a two-column table (a Prefect table artifact, the CLI), each label
        naming its unit: rows of the source, or answers (one per row and model).

        Example:
            >>> summary = RunSummary(dataset="d", model_id="a, b", rows_in_dataset=3,
            ...     bad_rows_skipped=1, already_done=6, models=[ModelSummary(model_id="a"),
            ...     ModelSummary(model_id="b")])
            >>> for row in summary.table()[:5]:
            ...     print(f"{row['metric']}: {row['value']}")
            rows in source: 4
            bad rows skipped: 1
            exact duplicate rows: 0
            models (an answer is a row and a model): 2
            answers already done: 6
        """
        labels = {
            "rows_in_source": "rows in source",
            "bad_rows_skipped": "bad rows skipped",
            "duplicates": "exact duplicate rows",
            "models_count": "models (an answer is a row and a model)",
            "already_done": "answers already done",
            "rows_submitted": "answers submitted",
            "completed": "answers completed",
            "failed": "answers failed",
            "invalid_answers": "invalid answers",
            "unfinished": "answers unfinished",
            "jobs": "jobs",
            "reattached": "jobs re-attached",
            "ambiguous_resubmitted": "ambiguous POSTs resubmitted",
            "rate_limited_429": "429s absorbed",
            "requests_per_job": "requests a job",
            "wall_time_s": "wall time (s)",
        }
        if len(self.models) < 2:
            del labels["models_count"]  # one model: an answer is a row
        values = {"models_count": len(self.models)}
        rows: list[dict[str, str | int | float]] = [
            {"metric": label, "value": values[key] if key in values else getattr(self, key)}
            for key, label in labels.items()
        ]
        return rows + (self.judging.table() if self.judging is not None else [])

    def models_table(self) -> list[dict[str, str | int | float]]:
        """One row per model: what it answered, in how many jobs and how long; its scores.

        Example:
            >>> summary = RunSummary(dataset="d", model_id="a, b", models=[
            ...     ModelSummary(model_id="a", completed=2, jobs=1, wall_time_s=1.5),
            ...     ModelSummary(model_id="b", completed=1, failed=1, jobs=1)])
            >>> [(row["model"], row["completed"], row["failed"]) for row in summary.models_table()]
            [('a', 2, 0), ('b', 1, 1)]
        """
        scored = any(model.exact_match is not None for model in self.models)
        rows: list[dict[str, str | int | float]] = []
        for model in self.models:
            row: dict[str, str | int | float] = {
                "model": model.model_id,
                "completed": model.completed,
                "failed": model.failed,
                "unfinished": model.unfinished,
                "already done": model.already_done,
                "jobs": model.jobs,
                "wall time (s)": model.wall_time_s,
            }
            if scored:
                row["exact match"] = _rate(model.exact_match)
                row["contains expected"] = _rate(model.contains)
            rows.append(row)
        return rows

    def markdown(self) -> str:
        """A markdown report of what the summary table lacks: the outcome, bad rows, errors.

        The counts are the table artifact's (``generation-summary``); this report says in
        one line how the run ended and lists the rows and shards that need a look.

        Example:
            >>> summary = RunSummary(dataset="d.jsonl", model_id="m", completed=2, failed=1,
            ...                      errors=["shard ab12: HTTP 500"])
            >>> print(summary.markdown())
            # Generation run: `d.jsonl` with `m`
            <BLANKLINE>
            2 completed, 1 failed, 0 unfinished in 0 jobs (0.0 s): re-run to retry the rest.
            <BLANKLINE>
            ## Errors
            <BLANKLINE>
            - `shard ab12: HTTP 500`
            <BLANKLINE>
        """
        ending = "every row completed." if self.all_completed else "re-run to retry the rest."
        lines = [
            f"# Generation run: `{self.dataset}` with `{self.model_id}`",
            "",
            f"{self.completed} completed, {self.failed} failed, {self.unfinished} unfinished "
            f"in {self.jobs} job{'' if self.jobs == 1 else 's'} ({self.wall_time_s} s): {ending}",
        ]
        if len(self.models) > 1:
            lines += ["", "## By model", "", *_markdown_table(self.models_table())]
        if self.exact_match_pairs:
            lines += ["", *(f"- {pair.sentence()}" for pair in self.exact_match_pairs)]
            lines += ["", f"Paired test on exact match: {MCNEMAR_NAME}."]
        sections = (("Bad rows skipped", self.bad_rows), ("Errors", self.errors))
        for title, items in sections:
            if items:
                lines += ["", f"## {title}", ""] + [f"- `{item}`" for item in items]
        if not any(items for _, items in sections):
            lines += ["", "No bad rows and no errors."]
        if self.judging is not None:
            lines += ["", "## Scores", ""] + [report.markdown() for report in self.judging.reports]
        return "\n".join(lines) + "\n"


def _markdown_table(rows: list[dict[str, str | int | float]]) -> list[str]:
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return lines + ["| " + " | ".join(str(row[name]) for name in header) + " |" for row in rows]


def _answers(models: int) -> str:
    """The unit of answer counts: "answers", and with several models what one is.

    Example:
        >>> _answers(1), _answers(2)
        ('answers', 'answers (rows × models)')
    """
    return "answers" if models < 2 else "answers (rows × models)"


def _rate(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.1f} %"


@dataclass
class _ModelTally:
    """Counters of one model's jobs, and when its first began and its last ended."""

    completed: int = 0
    failed: int = 0
    unfinished: int = 0
    jobs: int = 0
    first_start: float | None = None
    last_end: float | None = None

    @property
    def wall_time_s(self) -> float:
        if self.first_start is None or self.last_end is None:
            return 0.0
        return round(max(self.last_end - self.first_start, 0.0), 2)


@dataclass
class RunTally:
    """Thread-safe counters the lanes update as jobs end."""

    completed: int = 0
    failed: int = 0
    invalid: int = 0
    unfinished: int = 0
    jobs: int = 0
    reattached: int = 0
    ambiguous_resubmitted: int = 0
    errors: list[str] = field(default_factory=list)
    by_model: dict[str, _ModelTally] = field(default_factory=dict)
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def started(self, model_id: str) -> None:
        """A job of ``model_id`` starts (its model's wall time starts at the first)."""
        with self._lock:
            model = self.by_model.setdefault(model_id, _ModelTally())
            if model.first_start is None:
                model.first_start = self.clock()

    def record(self, report: JobReport) -> None:
        """Count a persisted job, or a shard given up on (its rows stay unfinished)."""
        with self._lock:
            model = self.by_model.setdefault(report.model_id, _ModelTally())
            model.last_end = self.clock()
            if report.unfinished:
                self.unfinished += report.unfinished
                model.unfinished += report.unfinished
            else:
                self.completed += report.completed
                self.failed += report.failed
                self.invalid += report.invalid
                self.jobs += 1
                self.reattached += int(report.reattached)
                model.completed += report.completed
                model.failed += report.failed
                model.jobs += 1
            self.ambiguous_resubmitted += report.ambiguous_resubmits
            if report.error and len(self.errors) < 20:
                self.errors.append(report.error)

    def model_summaries(
        self, models: list[str], already_done: Counter[str], submitted: Counter[str]
    ) -> list[ModelSummary]:
        """Each of ``models``' share of the run, with what planning counted for it."""
        with self._lock:
            tallies = {model: self.by_model.get(model, _ModelTally()) for model in models}
        return [
            ModelSummary(
                model_id=model,
                already_done=already_done[model],
                rows_submitted=submitted[model],
                completed=tally.completed,
                failed=tally.failed,
                unfinished=tally.unfinished,
                jobs=tally.jobs,
                wall_time_s=tally.wall_time_s,
            )
            for model, tally in tallies.items()
        ]

    @property
    def rows_done(self) -> int:
        """Rows that reached an end in this run (completed, failed or given up)."""
        return self.completed + self.failed + self.unfinished
