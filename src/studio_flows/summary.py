"""The run summary: what a generation run did, as data, a table and markdown.

Example:
    >>> summary = RunSummary(dataset="d.jsonl", model_id="m", rows_in_dataset=2, completed=2)
    >>> summary.all_completed
    True
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from pydantic import BaseModel, Field

from studio_flows.jobs import JobReport


class RunSummary(BaseModel):
    """Counts of one run; the flow's return value and the CLI's report."""

    dataset: str
    model_id: str
    rows_in_dataset: int = 0
    bad_rows_skipped: int = 0
    duplicates: int = 0
    already_done: int = 0
    rows_submitted: int = 0
    completed: int = 0
    failed: int = 0
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

    @property
    def rows_to_do(self) -> int:
        """Rows of the dataset this run had to answer (not bad, duplicate or done before)."""
        return max(
            self.rows_in_dataset - self.bad_rows_skipped - self.duplicates - self.already_done, 0
        )

    @property
    def rows_left(self) -> int:
        """Rows still without an answer, for the next run."""
        return max(self.rows_to_do - self.completed - self.failed, 0)

    def stopped_line(self) -> str:
        """One line for a run a signal stopped: what is done and what is left."""
        return (
            f"interrupted by {self.interrupted_by}: {self.completed + self.failed:,} of "
            f"{self.rows_to_do:,} rows done ({self.completed:,} completed, {self.failed:,} "
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
        return self.failed == 0 and self.unfinished == 0

    def table(self) -> list[dict[str, str | int | float]]:
        """Rows for a two-column table (a Prefect table artifact, the CLI)."""
        labels = {
            "rows_in_dataset": "rows in dataset",
            "bad_rows_skipped": "bad rows skipped",
            "duplicates": "exact duplicates",
            "already_done": "already done",
            "rows_submitted": "rows submitted",
            "completed": "completed",
            "failed": "failed",
            "unfinished": "unfinished",
            "jobs": "jobs",
            "reattached": "jobs re-attached",
            "ambiguous_resubmitted": "ambiguous POSTs resubmitted",
            "rate_limited_429": "429s absorbed",
            "requests_per_job": "requests a job",
            "wall_time_s": "wall time (s)",
        }
        return [{"metric": label, "value": getattr(self, key)} for key, label in labels.items()]

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
        sections = (("Bad rows skipped", self.bad_rows), ("Errors", self.errors))
        for title, items in sections:
            if items:
                lines += ["", f"## {title}", ""] + [f"- `{item}`" for item in items]
        if not any(items for _, items in sections):
            lines += ["", "No bad rows and no errors."]
        return "\n".join(lines) + "\n"


@dataclass
class RunTally:
    """Thread-safe counters the lanes update as jobs end."""

    completed: int = 0
    failed: int = 0
    unfinished: int = 0
    jobs: int = 0
    reattached: int = 0
    ambiguous_resubmitted: int = 0
    errors: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, report: JobReport) -> None:
        """Count a persisted job, or a shard given up on (its rows stay unfinished)."""
        with self._lock:
            if report.unfinished:
                self.unfinished += report.unfinished
            else:
                self.completed += report.completed
                self.failed += report.failed
                self.jobs += 1
                self.reattached += int(report.reattached)
            self.ambiguous_resubmitted += report.ambiguous_resubmits
            if report.error and len(self.errors) < 20:
                self.errors.append(report.error)

    @property
    def rows_done(self) -> int:
        """Rows that reached an end in this run (completed, failed or given up)."""
        return self.completed + self.failed + self.unfinished
