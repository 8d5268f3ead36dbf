"""The response schema in the conversation: appended to the system message, or placed by a
template; a template's ``response_schema`` is the schema, not a column of the row."""

from __future__ import annotations

from studio_flows.datasets import DatasetOptions, MemorySource, read_rows
from studio_flows.rows import GenerationParams, Row
from studio_flows.structured import ResponseSchema

SCHEMA = ResponseSchema.of({"type": "object", "required": ["score"]})


def _conversation(options: DatasetOptions, row: dict[str, object]) -> list[tuple[str, str]]:
    (read,) = list(read_rows(MemorySource([row]), options, dedup=False))
    assert isinstance(read, Row), read
    return [(m.role, m.content) for m in read.messages]


def test_the_schema_is_appended_to_the_system_message_or_starts_one() -> None:
    with_system = DatasetOptions(system_prompt="Be brief.", response_schema=SCHEMA)
    alone = DatasetOptions(response_schema=SCHEMA)

    assert _conversation(with_system, {"prompt": "Hi"}) == [
        ("system", f"Be brief.\n\n{SCHEMA.instruction()}"),
        ("user", "Hi"),
    ]
    assert _conversation(alone, {"prompt": "Hi"}) == [
        ("system", SCHEMA.instruction()),
        ("user", "Hi"),
    ]


def test_a_template_that_places_the_schema_gets_it_and_no_instruction() -> None:
    options = DatasetOptions(
        template="Rate {{ question }} as {{ response_schema }}", response_schema=SCHEMA
    )

    assert _conversation(options, {"question": "this"}) == [("user", f"Rate this as {SCHEMA.text}")]


def test_without_a_schema_the_identity_is_what_it_always_was() -> None:
    # sha256 of {"max_tokens":512,"temperature":0.7}: every stored row's hash before schemas.
    before = "750840bae40e3f1d53184926d2f4b2b4a2717185f0f97588b64afc751999df94"
    assert GenerationParams("m", 0.7, 512).params_hash == before
    assert GenerationParams("m", 0.7, 512, SCHEMA).params_hash != before
    reordered = ResponseSchema.of({"required": ["score"], "type": "object"})
    assert GenerationParams("m", response_schema=reordered).params_hash == (
        GenerationParams("m", response_schema=SCHEMA).params_hash
    )
