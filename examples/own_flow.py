"""Use studio-flows from your own Prefect flow: answer a list of prompts, hand them on.

The flow splits the prompts into batches, maps :func:`studio_flows.generate` over them (one
Model Studio job per batch, at most three in flight, the next one starting the moment one
ends) and passes the answers to its next task. Run it against Model Studio::

    export MODEL_STUDIO_TOKEN=... MODEL_STUDIO_ORGANIZATION_ID=...
    python examples/own_flow.py --model-id meta-llama/Llama-3.3-70B-Instruct

or against the local emulator (``studio-flows emulator --port 8000`` in another terminal,
then ``MODEL_STUDIO_BASE_URL=http://127.0.0.1:8000/api/v1``, any token and organisation).

Example:
    >>> answers = answer_prompts(["Name a colour"], model_id="my-model")  # doctest: +SKIP
    >>> answers["Name a colour"]  # doctest: +SKIP
    'Blue.'
"""

from __future__ import annotations

import argparse

from prefect import flow, task, unmapped

from studio_flows import Generation, generate, prefect_api

PROMPTS = [
    "What is the capital of Portugal?",
    "Name three root vegetables.",
    "How many minutes does a soft-boiled egg take?",
    "What does HTTP 404 mean?",
    "Which planet is closest to the sun?",
    "Give a synonym for 'quick'.",
    "What is 12 times 12?",
    "Which ocean lies between Africa and Australia?",
]


@task
def pair_answers(prompts: list[str], answered: list[list[Generation]]) -> dict[str, str | None]:
    """The next step of the pipeline: each prompt with its answer (None where it failed)."""
    generations = [g for batch in answered for g in batch]
    return {prompt: g.text for prompt, g in zip(prompts, generations, strict=True)}


@flow(name="answer-prompts")
def answer_prompts(prompts: list[str], model_id: str, batch_size: int = 2) -> dict[str, str | None]:
    """Answer every prompt with ``model_id``, ``batch_size`` prompts per job."""
    batches = [prompts[i : i + batch_size] for i in range(0, len(prompts), batch_size)]
    answered = generate.map(batches, model_id=unmapped(model_id))
    return pair_answers(prompts, answered)  # type: ignore[arg-type]  # futures resolve


def main() -> None:
    parser = argparse.ArgumentParser(description="Answer a few prompts from your own flow.")
    parser.add_argument("--model-id", required=True, help="the Model Studio model to ask")
    args = parser.parse_args()
    # The Prefect server of PREFECT_API_URL, else the local one `studio-flows` commands share
    # (started on first use): not a temporary server inside this process, which Prefect
    # would start with telemetry on and its own SQLite database on every run.
    with prefect_api():
        answers = answer_prompts(PROMPTS, model_id=args.model_id)
    for prompt, answer in answers.items():
        print(f"{prompt}\n  -> {answer}")


if __name__ == "__main__":
    main()
