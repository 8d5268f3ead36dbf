"""P3 over a SQL source (issue 18): rows read from a PostgreSQL table with a template, end to
end at latency 0, against the same rows from a JSONL file in the same run.

Both runs render the same template over the same ``id, question`` rows, write their results
to a fresh PostgreSQL database each and run in a fresh child process with the emulator in
another: the ratio isolates the source (the query streamed into its snapshot, against the
file). ``p3_sql_rows_per_s`` is the SQL run's rows per second, ``p3_sql_vs_jsonl`` its
wall time over the JSONL run's.

Alone: ``python -m bench.sql_source --rows 100000`` (needs STUDIO_FLOWS_TEST_POSTGRES_URL).
"""

from __future__ import annotations

from studio_flows.cli.quiet import quiet_environment

quiet_environment()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from bench.common import MODEL, ROOT, flow_env, log, postgres_database  # noqa: E402

TEMPLATE = "Answer in one word: {{ question }}"
QUERY = "SELECT id, question FROM faq ORDER BY id"


def fill_table(database_url: str, rows: int) -> None:
    """``faq(id, question)`` with ``rows`` rows, made by the server itself (seconds at 1 M)."""
    import sqlalchemy as sa

    engine = sa.create_engine(database_url)
    with engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE faq (id BIGINT PRIMARY KEY, question TEXT)")
        connection.execute(
            sa.text(
                "INSERT INTO faq SELECT i, 'question ' || i || '?' FROM generate_series(1, :n) i"
            ),
            {"n": rows},
        )
    engine.dispose()


def write_jsonl(path: Path, rows: int) -> Path:
    """The same rows as :func:`fill_table`, as a JSONL file."""
    with path.open("w", encoding="utf-8") as out:
        for start in range(1, rows + 1, 10_000):
            stop = min(start + 10_000, rows + 1)
            out.write(
                "".join(f'{{"id": {i}, "question": "question {i}?"}}\n' for i in range(start, stop))
            )
    return path


def child(kind: str, rows: int, database_url: str, shard_size: int) -> dict[str, Any]:
    """One flow run over ``rows`` rows of ``kind`` (sql | jsonl) in this fresh process."""
    import resource
    import urllib.request

    from bench.scenarios import start_emulator_process
    from studio_flows.emulator import DEFAULT_TOKEN
    from studio_flows.options import GenerateOptions

    emulator, root = start_emulator_process(0.0)
    try:
        with tempfile.TemporaryDirectory(prefix="studio-flows-bench-sql-") as tmp:
            source: dict[str, Any] = {"sql": QUERY}
            if kind == "jsonl":
                source = {"dataset_path": str(write_jsonl(Path(tmp) / "faq.jsonl", rows))}
            else:
                fill_table(database_url, rows)
            flow_env(root + "/api/v1", DEFAULT_TOKEN, poll_start=0.001, poll_max=0.05)
            options = GenerateOptions(
                **source,
                template=TEMPLATE,
                id_column="id",
                model_id=MODEL,
                database_url=database_url,
                shard_size=shard_size,
            )
            from studio_flows.flows.generate import generate_dataset

            started = time.perf_counter()
            summary = generate_dataset(options)
            wall = time.perf_counter() - started
            with urllib.request.urlopen(root + "/_emulator/stats") as answer:
                stats = json.load(answer)
    finally:
        emulator.terminate()
        emulator.wait(10)
    assert summary.completed == rows, summary
    return {
        "kind": kind,
        "rows": rows,
        "jobs": stats["jobs_created"],
        "wall_s": round(wall, 3),
        "rows_per_s": round(rows / wall, 1),
        "ru_maxrss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def run_p3_sql(env: dict[str, str], rows: int, shard_size: int) -> dict[str, Any] | None:
    """Both children against the Prefect API ``env`` names; None without PostgreSQL."""
    runs: dict[str, Any] = {}
    for kind in ("jsonl", "sql"):
        with postgres_database() as database_url:
            if database_url is None:
                return None
            log(f"p3_sql: {rows} rows from {kind}, results on PostgreSQL")
            args = ["--child", kind, "--rows", str(rows), "--shard-size", str(shard_size)]
            done = subprocess.run(
                [sys.executable, "-m", "bench.sql_source", *args, "--db", database_url],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                check=True,
                timeout=3600,
            )
            runs[kind] = json.loads(done.stdout.decode().strip().splitlines()[-1])
    runs["p3_sql_rows_per_s"] = runs["sql"]["rows_per_s"]
    runs["p3_sql_vs_jsonl"] = round(runs["sql"]["wall_s"] / runs["jsonl"]["wall_s"], 3)
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sql_source", description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--shard-size", type=int, default=100)
    parser.add_argument("--child", choices=("sql", "jsonl"), help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.rows, args.db, args.shard_size)))
        return 0
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
        result = run_p3_sql(env, args.rows, args.shard_size)
    print(json.dumps(result, indent=2))
    return 0 if result is not None else 1


if __name__ == "__main__":
    sys.exit(main())
