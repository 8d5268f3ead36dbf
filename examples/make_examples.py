"""Regenerate examples/prompts.{jsonl,csv,parquet}: the same 40 conversations in each format.

Run from the repository root: ``.venv/bin/python examples/make_examples.py [OUTPUT_DIR]``.
Each row has an ``id``; a row is either a ``prompt`` (one user message) or ``messages``
(a conversation, some with a system message, some multi-turn). In the CSV, ``messages``
is a JSON string; in the Parquet file it is a list of ``{role, content}`` structs.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any

PROMPTS: list[tuple[str, str]] = [
    ("geo-001", "What is the capital of Australia, and why is it not Sydney?"),
    ("geo-002", "Which river flows through Budapest?"),
    ("geo-003", "Name the three largest deserts in the world by area."),
    ("geo-004", "How many countries share a border with Germany? List them."),
    ("geo-005", "Why does Iceland have so much geothermal energy?"),
    ("geo-006", "What is the highest mountain in Africa, and how tall is it?"),
    ("geo-007", "Explain in two sentences what a fjord is."),
    ("geo-008", "Which US state has the longest coastline?"),
    ("cook-001", "How long should I boil an egg for a runny yolk?"),
    ("cook-002", "What can I use instead of buttermilk in pancakes?"),
    ("cook-003", "Why does bread dough need to rest before baking?"),
    ("cook-004", "Give me a simple recipe for a vinaigrette, with proportions."),
    ("cook-005", "Is it safe to refreeze chicken that has thawed in the fridge?"),
    ("cook-006", "What is the difference between baking soda and baking powder?"),
    ("cook-007", "How do I keep basil fresh for more than a few days?"),
    ("cook-008", 'What does "al dente" mean, and how do I test for it?'),
    ("code-001", "What is the difference between a list and a tuple in Python?"),
    ("code-002", "Explain what a SQL LEFT JOIN returns, with a small example."),
    ("code-003", "How do I undo the last git commit but keep my changes?"),
    ("code-004", "Write a Python function that checks whether a string is a palindrome."),
    ("code-005", "What does the HTTP status code 429 mean, and how should a client react?"),
    ("code-006", "Why is floating-point 0.1 + 0.2 not exactly 0.3?"),
    ("code-007", "In a CSV file, how are commas and quotes inside a field escaped?"),
    ("code-008", "What is a race condition? Give an everyday analogy."),
    ("misc-001", "Suggest three names for a bakery in Berlin."),
    ("misc-002", 'Translate "Where is the train station?" into French, German and Spanish.'),
    ("misc-003", "Summarise the rules of chess castling in one paragraph."),
    ("misc-004", "What are the health benefits of a 20-minute walk every day?"),
]

SYSTEM_CONVERSATIONS: list[tuple[str, list[dict[str, str]]]] = [
    (
        "sys-001",
        [
            {"role": "system", "content": "You are a concise travel guide. Answer in 3 bullets."},
            {"role": "user", "content": "What should I see in Lisbon in one day?"},
        ],
    ),
    (
        "sys-002",
        [
            {"role": "system", "content": "You are a patient chef who explains every step."},
            {"role": "user", "content": "How do I make a roux for a béchamel sauce?"},
        ],
    ),
    (
        "sys-003",
        [
            {"role": "system", "content": "You are a senior Python reviewer. Be direct."},
            {"role": "user", "content": "Is `except Exception: pass` ever acceptable?"},
        ],
    ),
    (
        "sys-004",
        [
            {"role": "system", "content": "Antworte immer auf Deutsch."},
            {"role": "user", "content": "Was ist der längste Fluss Europas?"},
        ],
    ),
]

MULTI_TURN: list[tuple[str, list[dict[str, str]]]] = [
    (
        "chat-001",
        [
            {"role": "user", "content": "What is the capital of Canada?"},
            {"role": "assistant", "content": "The capital of Canada is Ottawa."},
            {"role": "user", "content": "Which province is it in?"},
        ],
    ),
    (
        "chat-002",
        [
            {"role": "user", "content": "I have eggs, spinach and feta. What can I cook?"},
            {"role": "assistant", "content": "A spinach and feta omelette, or a quick frittata."},
            {"role": "user", "content": "How long does the frittata need in the oven?"},
        ],
    ),
    (
        "chat-003",
        [
            {"role": "system", "content": "You are a helpful programming tutor."},
            {"role": "user", "content": "What does `yield` do in Python?"},
            {
                "role": "assistant",
                "content": "It turns a function into a generator that produces values lazily.",
            },
            {"role": "user", "content": "Can you show a generator that reads a file line by line?"},
        ],
    ),
    (
        "chat-004",
        [
            {"role": "user", "content": "Recommend a hike near Innsbruck."},
            {"role": "assistant", "content": "The Nordkette trail, reachable by cable car."},
            {"role": "user", "content": "Is it suitable for children, and when does it close?"},
        ],
    ),
    (
        "chat-005",
        [
            {"role": "system", "content": "Reply in plain language for a beginner."},
            {"role": "user", "content": "What is an API?"},
            {
                "role": "assistant",
                "content": "A menu of requests one program offers to another, like a waiter.",
            },
            {"role": "user", "content": "And what is a REST API, then?"},
        ],
    ),
    (
        "chat-006",
        [
            {"role": "user", "content": "How many time zones does Russia have?"},
            {"role": "assistant", "content": "Russia spans eleven time zones."},
            {"role": "user", "content": "Which country has the most, counting overseas areas?"},
        ],
    ),
    (
        "chat-007",
        [
            {"role": "user", "content": "Convert 180 °C to Fahrenheit."},
            {"role": "assistant", "content": "180 °C is 356 °F."},
            {"role": "user", "content": "Is that the right temperature for roasting potatoes?"},
        ],
    ),
    (
        "chat-008",
        [
            {"role": "user", "content": "Explain Big-O notation briefly."},
            {
                "role": "assistant",
                "content": "It describes how an algorithm's cost grows with its input size.",
            },
            {"role": "user", "content": "What is the Big-O of binary search, and why?"},
        ],
    ),
]


def records() -> list[dict[str, Any]]:
    """The 40 rows, interleaved so every format mixes prompts and conversations."""
    rows: list[dict[str, Any]] = [{"id": key, "prompt": text} for key, text in PROMPTS]
    conversations = SYSTEM_CONVERSATIONS + MULTI_TURN
    for position, (key, messages) in enumerate(conversations):
        rows.insert(position * 3 + 1, {"id": key, "messages": messages})
    assert len(rows) == 40, len(rows)
    return rows


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "prompt", "messages"])
        for row in rows:
            messages = row.get("messages")
            writer.writerow(
                [
                    row["id"],
                    row.get("prompt", ""),
                    json.dumps(messages, ensure_ascii=False) if messages else "",
                ]
            )


def write_parquet(path: Path, rows: list[dict[str, Any]]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    message = pa.struct([("role", pa.string()), ("content", pa.string())])
    schema = pa.schema(
        [("id", pa.string()), ("prompt", pa.string()), ("messages", pa.list_(message))]
    )
    table = pa.Table.from_pylist(
        [
            {"id": row["id"], "prompt": row.get("prompt"), "messages": row.get("messages")}
            for row in rows
        ],
        schema=schema,
    )
    pq.write_table(table, path)


def main(folder: Path) -> None:
    rows = records()
    folder.mkdir(parents=True, exist_ok=True)
    write_jsonl(folder / "prompts.jsonl", rows)
    write_csv(folder / "prompts.csv", rows)
    write_parquet(folder / "prompts.parquet", rows)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent)
