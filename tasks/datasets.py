"""Prefect task over the dataset readers: validate the whole source before anything is sent."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from studio_flows.tasks.database import resolve_database_url, resolve_source_url

from studio_flows.blocks import ResultsDatabase
from studio_flows.datasets import DatasetReport, DatasetSource, validate_dataset_once
from studio_flows.options import GenerateOptions
from studio_flows.settings import load_settings


def source_of(options: GenerateOptions, database: ResultsDatabase | None = None) -> DatasetSource:
    """The file or query ``options`` name; a query's password comes from its block, here.
    A query without a source of its own runs on the results database (``database``).

    Example:
        >>> options = GenerateOptions(sql="SELECT q FROM faq", model_id="m")
        >>> source_of(options).dataset  # doctest: +SKIP
        'sql:...'
    """

    def results_url() -> str:
        if database is not None:
            return database.get_url()
        return resolve_database_url(options.database_url, options.database_block, load_settings())

    url = resolve_source_url(options.sql, options.source_url, options.source_block, results_url)
    return options.source(url)


@task(name="validate-dataset", cache_policy=NO_CACHE)
def validate_dataset_task(
    options: GenerateOptions,
    source: DatasetSource | None = None,
    database: ResultsDatabase | None = None,
) -> DatasetReport:
    """Read the dataset once, streamed; raise DatasetError listing bad rows under 'fail'.

    ``source`` is what to read when ``options`` cannot name it (rows in memory); by default
    the file or query of ``options``. The report's ``source`` is what the run then sends.

    Example:
        >>> validate_dataset_task(options)  # doctest: +SKIP
        DatasetReport(rows=40, bad_count=0, ...)
    """
    report = validate_dataset_once(
        source if source is not None else source_of(options, database),
        options.dataset_options(),
        on_bad_rows=options.on_bad_rows,
    )
    log = get_run_logger()
    log.info(
        "%s: %d rows, %d exact duplicates, %d bad rows",
        report.source.label if report.source is not None else report.path,
        report.rows,
        report.duplicates,
        report.bad_count,
    )
    for bad in report.bad_rows:
        log.warning("skipping %s", bad)
    return report
