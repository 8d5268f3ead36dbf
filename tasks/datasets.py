"""Prefect task over the dataset reader: validate the whole file before anything is sent."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from studio_flows.datasets import DatasetReport, validate_dataset_once
from studio_flows.options import GenerateOptions


@task(name="validate-dataset", cache_policy=NO_CACHE)
def validate_dataset_task(options: GenerateOptions) -> DatasetReport:
    """Read the dataset once, streamed; raise DatasetError listing bad rows under 'fail'.

    Example:
        >>> validate_dataset_task(options)  # doctest: +SKIP
        DatasetReport(rows=40, bad_count=0, ...)
    """
    report = validate_dataset_once(
        options.dataset_path, options.dataset_options(), on_bad_rows=options.on_bad_rows
    )
    log = get_run_logger()
    log.info(
        "%s: %d rows, %d exact duplicates, %d bad rows",
        options.dataset_path,
        report.rows,
        report.duplicates,
        report.bad_count,
    )
    for bad in report.bad_rows:
        log.warning("skipping %s", bad)
    return report
