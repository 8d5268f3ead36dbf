"""`studio-flows generate --judge-model`: a judge scores every answer, exactly once.

Through the installed CLI against the emulator over a socket. With ``json_answers`` the
emulator answers a judge's rubric (a prompt asking for a ``"reason"``) with
``{"score": 1 + len(prompt) % 5, "reason": ...}``, shaped by the prompt's words: a row
whose prompt says ``invalid`` gets a judge answer with a score that is not an integer,
one that says ``no json`` gets a judge answer with no JSON at all (the judge prompt quotes
the answer, which quotes the row's prompt).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from studio_flows.emulator import EmulatorServer
from studio_flows.storage import make_engine
from tests.fixtures.cli_runs import (
    SECRET_TOKEN,
    STUDIO_FLOWS,
    CliResult,
    cli_env,
    kill_group,
    run_cli,
    start_cli,
    summary_value,
    wait_for,
)

MODELS = ("base", "tuned")
JUDGE = "judge"
PROMPTS = {
    "plain": "what is two?",
    "fenced": "fenced: what is three?",
    "bare": "bare: what is four?",
    "other": "what is seven?",
    "invalid": "invalid: what is five?",
    "none": "no json: what is six?",
}
INVALID = "answer does not match the response schema: "


def _dataset(path: Path) -> Path:
    lines = (json.dumps({"id": key, "prompt": prompt}) for key, prompt in PROMPTS.items())
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def _judged_run(
    emulator: EmulatorServer, prefect_server: str, tmp_path: Path, job_latency_s: float
) -> tuple[Path, str, dict[str, str]]:
    """The dataset, results URL and environment of a judged run on the session's server."""
    emulator.configure(tokens=[SECRET_TOKEN], json_answers=True, job_latency_s=job_latency_s)
    database_url = f"sqlite:///{tmp_path / 'results.db'}"
    env = cli_env(emulator, tmp_path / "prefect", api_url=prefect_server)
    return _dataset(tmp_path / "eval.jsonl"), database_url, env


def _generate(
    dataset: Path, database_url: str, env: dict[str, str], cwd: Path, *extra: str
) -> CliResult:
    assert STUDIO_FLOWS is not None
    args = [STUDIO_FLOWS, "generate", str(dataset), "--database-url", database_url]
    for model in MODELS:
        args += ["--model-id", model]
    args += ["--judge-model", JUDGE, "--id-column", "id", "--shard-size", "2", "--no-progress"]
    return run_cli([*args, *extra], env, cwd)


def _query(database_url: str, sql: str) -> list[dict[str, Any]]:
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(sa.text(sql))]
    finally:
        engine.dispose()


def _scores(database_url: str) -> dict[tuple[str, str], dict[str, Any]]:
    rows = _query(database_url, "SELECT * FROM generation_scores ORDER BY id")
    pairs = [(str(r["row_key"]), str(r["model_id"])) for r in rows]
    assert len(pairs) == len(set(pairs)), "an answer has two verdicts"
    return {(str(r["row_key"]), str(r["model_id"])): r for r in rows}


def _judge_rows(database_url: str) -> list[dict[str, Any]]:
    rows = _query(
        database_url,
        "SELECT row_key, status, messages, metadata FROM generation_results "
        f"WHERE model_id = '{JUDGE}' ORDER BY id",
    )
    for row in rows:
        for name in ("messages", "metadata"):
            if isinstance(row[name], str):
                row[name] = json.loads(row[name])
    return rows


def test_judges_score_every_answer_once_and_a_rerun_sends_only_the_failed_verdicts(
    emulator: EmulatorServer, prefect_server: str, tmp_path: Path
) -> None:
    dataset, database_url, env = _judged_run(emulator, prefect_server, tmp_path, 0.3)

    planned = _generate(dataset, database_url, env, tmp_path, "--dry-run")
    assert planned.returncode == 0, planned
    assert summary_value(planned.stdout, "jobs that would be submitted") == 6, planned
    assert summary_value(planned.stdout, "verdicts that would be submitted") == 12, planned
    assert summary_value(planned.stdout, "judge jobs that would be submitted") == 6, planned
    assert emulator.stats()["jobs_created"] == 0

    first = _generate(dataset, database_url, env, tmp_path)

    # Every answer completed; 4 verdicts (2 rows x 2 models) failed: exit 1, retry later.
    assert first.returncode == 1, first
    assert summary_value(first.stdout, "answers completed") == 12, first
    assert summary_value(first.stdout, "verdicts completed") == 8, first
    assert summary_value(first.stdout, "verdicts failed") == 4, first
    assert summary_value(first.stdout, "judge jobs") == 6, first
    stats = emulator.stats()
    assert stats["jobs_created"] == 6 + 6  # answers, then verdicts, 2 a job
    assert stats["max_active_jobs"] <= 3  # one fair-use limit over answers and verdicts
    scores = _scores(database_url)
    assert len(scores) == 12
    judged = {
        (r["metadata"]["row_key"], r["metadata"]["model_id"]): r for r in _judge_rows(database_url)
    }
    for (row_key, model), verdict in scores.items():
        assert verdict["judge_model"] == JUDGE
        prompt = judged[(row_key, model)]["messages"][-1]["content"]
        assert f"Answer given by {model}:" in prompt and PROMPTS[row_key] in prompt
        if row_key in ("invalid", "none"):
            assert (verdict["status"], verdict["score"]) == ("failed", None), verdict
        else:
            assert verdict["status"] == "completed", verdict
            assert verdict["score"] == 1 + len(prompt) % 5  # valid, fenced and bare alike
            assert verdict["reason"] == f"{len(prompt)} characters"
    assert (
        scores[("invalid", "base")]["error"] == INVALID + "$.score: 'high' is not of type 'integer'"
    )
    assert scores[("none", "tuned")]["error"] == INVALID + "no JSON value found"
    assert "tuned wins " in first.stdout and " against base (p = " in first.stdout, first

    replanned = _generate(dataset, database_url, env, tmp_path, "--dry-run")
    assert summary_value(replanned.stdout, "answers that would be submitted") == 0, replanned
    assert summary_value(replanned.stdout, "verdicts that would be submitted") == 4, replanned
    assert summary_value(replanned.stdout, "judge jobs that would be submitted") == 2, replanned

    second = _generate(dataset, database_url, env, tmp_path)

    # Only the failed verdicts are sent again (they fail again: the emulator is
    # deterministic); no answer and no completed verdict is paid twice.
    assert second.returncode == 1, second
    assert summary_value(second.stdout, "verdicts already done") == 8, second
    assert summary_value(second.stdout, "verdicts submitted") == 4, second
    assert emulator.stats()["jobs_created"] == 12 + 2
    assert len(_judge_rows(database_url)) == 12
    again = _scores(database_url)
    assert {key: v["id"] for key, v in again.items() if v["status"] == "completed"} == {
        key: v["id"] for key, v in scores.items() if v["status"] == "completed"
    }


def test_a_judge_template_sees_the_row_and_a_changed_template_is_new_paid_work(
    emulator: EmulatorServer, prefect_server: str, tmp_path: Path
) -> None:
    dataset, database_url, env = _judged_run(emulator, prefect_server, tmp_path, 0.1)
    template = (
        'Row {{ id }}, {{ model_id }} said: {{ answer }}. JSON {"score": 1-5, "reason": "..."}'
    )

    first = _generate(dataset, database_url, env, tmp_path, "--judge-template", template)

    assert first.returncode == 1, first  # the invalid and no-json rows' verdicts
    prompts = {
        r["metadata"]["row_key"] + r["metadata"]["model_id"]: r["messages"][-1]["content"]
        for r in _judge_rows(database_url)
    }
    assert prompts["plaintuned"].startswith("Row plain, tuned said: ")
    jobs = emulator.stats()["jobs_created"]

    second = _generate(dataset, database_url, env, tmp_path)  # the default rubric

    assert summary_value(second.stdout, "verdicts already done") == 0, second
    assert summary_value(second.stdout, "verdicts submitted") == 12, second
    assert emulator.stats()["jobs_created"] == jobs + 6
    assert len(_scores_all(database_url)) == 24


def _scores_all(database_url: str) -> list[dict[str, Any]]:
    return _query(database_url, "SELECT * FROM generation_scores")


@pytest.mark.parametrize("flag", [["--judge-template", "{{ answer"], ["--judge-template", "x"]])
def test_a_bad_judge_template_or_one_without_a_judge_is_one_sentence_and_exit_2(
    emulator: EmulatorServer, tmp_path: Path, flag: list[str]
) -> None:
    dataset = _dataset(tmp_path / "eval.jsonl")
    env = cli_env(emulator, tmp_path / "prefect")
    assert STUDIO_FLOWS is not None
    args = [STUDIO_FLOWS, "generate", str(dataset), "--model-id", "m", "--no-progress", *flag]
    if flag[1] != "x":
        args += ["--judge-model", JUDGE]

    result = run_cli(args, env, tmp_path)

    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    assert "--judge-template" in result.stderr or "judge" in result.stderr, result
    assert len(result.stderr.strip().splitlines()) == 1, result
    assert emulator.stats()["jobs_created"] == 0


def _judge_jobs(database_url: str) -> list[dict[str, Any]]:
    try:
        return _query(
            database_url,
            f"SELECT status, job_id FROM generation_jobs WHERE model_id = '{JUDGE}'",
        )
    except sa.exc.SQLAlchemyError:
        return []  # the schema is being created


def _judge_job_in_flight(database_url: str) -> bool:
    """A judge job was POSTed and recorded, and no POST is under way (a kill then leaves
    no POST of unknown outcome, which the ambiguous policy would pay again)."""
    jobs = _judge_jobs(database_url)
    statuses = {job["status"] for job in jobs}
    return "submitted" in statuses and not statuses & {"pending", "ambiguous"}


def test_a_sigkill_during_the_verdicts_then_a_rerun_reattaches_and_pays_each_once(
    emulator: EmulatorServer, prefect_server: str, tmp_path: Path
) -> None:
    dataset, database_url, env = _judged_run(emulator, prefect_server, tmp_path, 3.0)
    assert STUDIO_FLOWS is not None
    args = [STUDIO_FLOWS, "generate", str(dataset), "--database-url", database_url]
    for model in MODELS:
        args += ["--model-id", model]
    args += ["--judge-model", JUDGE, "--id-column", "id", "--shard-size", "2", "--no-progress"]

    process = start_cli(args, env, tmp_path)
    wait_for(
        lambda: _judge_job_in_flight(database_url) or process.poll() is not None,
        180,
        "a judge job in flight",
    )
    assert process.poll() is None, "the run ended before a judge job was in flight"
    kill_group(process)
    created_at_kill = emulator.stats()["jobs_created"]

    rerun = run_cli(args, env, tmp_path)

    assert rerun.returncode == 1, rerun  # the invalid and no-json rows' verdicts
    assert created_at_kill >= 6 + 1  # every answer job, and a judge job, before the kill
    assert summary_value(rerun.stdout, "answers submitted") == 0, rerun
    assert summary_value(rerun.stdout, "verdicts failed") == 4, rerun
    assert emulator.stats()["jobs_created"] == 6 + 6  # every job once, re-attached or new
    assert emulator.stats()["max_active_jobs"] <= 3
    assert len(_judge_rows(database_url)) == 12
    scores = _scores(database_url)
    assert sorted(v["status"] for v in scores.values()) == ["completed"] * 8 + ["failed"] * 4
