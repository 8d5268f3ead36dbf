"""The options of one generation run, as one validated model.

The flow takes this model as its parameter, so a deployment's form in the Prefect UI
validates each field and shows its help text. No secret belongs here: the token comes
from the environment or a credentials Block, and a database password from a
``ResultsDatabase`` block or ``MODEL_STUDIO_DATABASE_URL``. A URL given here is written
into Prefect's flow-run parameters with its password masked (:data:`RedactedUrl`).

An evaluation run names several models (``model_ids``): every row runs once per model.

Example:
    >>> GenerateOptions(dataset_path="examples/prompts.jsonl", model_id="m").shard_size is None
    True
    >>> GenerateOptions(dataset_path="p.jsonl", model_ids=["base", "tuned"]).models
    ['base', 'tuned']
"""

from __future__ import annotations

import functools
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from studio_flows.datasets import DatasetOptions, DatasetSource, FileSource, SqlSource
from studio_flows.errors import ConfigurationError
from studio_flows.judging import JudgeSpec
from studio_flows.redaction import RedactedUrl
from studio_flows.rows import GenerationParams, canonical_json, sha256_hex
from studio_flows.settings import check_database_url
from studio_flows.structured import ResponseSchema, check_json_schema


class GenerateOptions(BaseModel):
    """What to generate, where to write it, and how to treat bad rows and unknown outcomes."""

    # The form asks for a file unless a query is given. Written as if/else, not anyOf:
    # Prefect drops nested "required" keys when it checks a deployment's partial parameters
    # (the nightly one names no dataset until an operator does), but not inside lists.
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"if": {"required": ["sql"]}, "else": {"required": ["dataset_path"]}},
    )

    dataset_path: str | None = Field(
        default=None, description="JSONL, CSV or Parquet file, one conversation a row"
    )
    sql: str | None = Field(
        default=None, description="A SQL query whose rows are the dataset (instead of a file)"
    )
    source_url: RedactedUrl | None = Field(
        default=None, description="SQLAlchemy URL the query runs on (default: the results DB)"
    )
    source_block: str | None = Field(
        default=None, description="SqlAlchemyConnector block the query runs on (keeps the password)"
    )
    dataset_name: str | None = Field(
        default=None,
        description="Name the results are stored under (default: the file name, or sql:<hash>)",
    )
    template: str | None = Field(
        default=None, description="Jinja2 template of the user message, e.g. '{{ question }}'"
    )
    system_template: str | None = Field(
        default=None, description="Jinja2 template of the system message"
    )
    model_id: str | None = Field(
        default=None, min_length=1, description="Model Studio model id (or use model_ids)"
    )
    model_ids: list[str] = Field(
        default_factory=list,
        description="Several model ids: every row runs once per model (an evaluation run)",
    )
    temperature: float = Field(default=0.7, ge=0.0, le=2.0)
    max_tokens: int = Field(default=512, gt=0)
    system_prompt: str | None = Field(default=None, description="Prepended to every conversation")
    shard_size: int | None = Field(
        default=None, ge=1, le=100, description="Conversations per job (default: settings)"
    )
    database_url: RedactedUrl | None = Field(
        default=None,
        description="SQLAlchemy URL of the results database without a password (a password "
        "belongs in the database block; default: MODEL_STUDIO_DATABASE_URL)",
    )
    database_block: str | None = Field(
        default=None, description="Name of a SqlAlchemyConnector block (keeps the password)"
    )
    credentials_block: str | None = Field(
        default=None, description="Name of a ModelStudioCredentials block (else environment)"
    )
    on_bad_rows: Literal["fail", "skip"] = Field(
        default="fail", description="'fail' stops before any job; 'skip' lists and goes on"
    )
    ambiguous_policy: Literal["resubmit", "stop"] = Field(
        default="resubmit", description="A POST whose outcome is unknown: resubmit or stop"
    )
    expected_column: str | None = Field(
        default=None, description="A kept column holding the expected answer: score each model"
    )
    prompt_column: str = "prompt"
    messages_column: str = "messages"
    id_column: str | None = None
    keep_columns: list[str] = Field(
        default_factory=list,
        description="Input columns stored beside each answer (as JSON) and exported with it",
    )
    response_schema: dict[str, Any] | None = Field(
        default=None,
        description="JSON Schema (2020-12) every answer's JSON must match; shown to the model",
    )
    judge_models: list[str] = Field(
        default_factory=list,
        description="Judge models: each scores every completed answer (1-5, with a reason)",
    )
    judge_template: str | None = Field(
        default=None,
        description="Jinja2 judge prompt over the row's columns, answer, expected and model_id "
        "(default: a 1-5 rubric)",
    )
    # A pydantic model class the answers are validated with (generate_rows); its JSON
    # Schema is ``response_schema``. Not a parameter: a class has no JSON form.
    _response_model: type[BaseModel] | None = PrivateAttr(default=None)

    @field_validator("database_url", "source_url")
    @classmethod
    def _readable_url(cls, url: str | None) -> str | None:
        return url if url is None else check_database_url(url)

    @field_validator("keep_columns")
    @classmethod
    def _distinct_names(cls, names: list[str]) -> list[str]:
        return check_keep_columns(names)

    @field_validator("response_schema")
    @classmethod
    def _a_json_schema(cls, schema: dict[str, Any] | None) -> dict[str, Any] | None:
        if schema is not None:
            try:
                check_json_schema(schema)
            except ConfigurationError as err:
                raise ValueError(str(err)) from None
        return schema

    def with_response_model(self, model: type[BaseModel]) -> GenerateOptions:
        """These options, answers validated by the pydantic ``model`` (its JSON Schema
        is shown to the model and hashed into the rows' identity).

        Example:
            >>> class Verdict(BaseModel):
            ...     score: int
            >>> options = GenerateOptions(dataset_path="p.jsonl", model_id="m")
            >>> options.with_response_model(Verdict).response_schema["required"]
            ['score']
        """
        options = self.model_copy(update={"response_schema": model.model_json_schema()})
        options._response_model = model
        options.__dict__.pop("response", None)  # a copy of a cached schema is stale
        return options

    @functools.cached_property
    def response(self) -> ResponseSchema | None:
        """The response schema answers must match (None: any text is an answer)."""
        if self._response_model is not None:
            return ResponseSchema.of(self._response_model)
        return None if self.response_schema is None else ResponseSchema.of(self.response_schema)

    def generation_params(self) -> list[GenerationParams]:
        """What each model's rows are sent with, in the order of :attr:`models`."""
        schema = self.response
        return [
            GenerationParams(model, self.temperature, self.max_tokens, schema, self.template_hash)
            for model in self.models
        ]

    @property
    def template_hash(self) -> str | None:
        """The hash of the templates and system prompt rows are rendered with (None: none).

        Example:
            >>> GenerateOptions(dataset_path="p.jsonl", model_id="m").template_hash is None
            True
        """
        texts = {
            "template": self.template,
            "system_template": self.system_template,
            "system_prompt": self.system_prompt,
        }
        if not any(texts.values()):
            return None
        return sha256_hex(canonical_json(texts))

    @model_validator(mode="after")
    def _one_source(self, info: ValidationInfo) -> GenerateOptions:
        if self.dataset_path is not None and self.sql is not None:
            raise ValueError("give dataset_path or sql, not both")
        # Rows in memory (generate_rows) are the one source options cannot name.
        in_memory = bool(info.context and info.context.get("rows_in_memory"))
        if self.dataset_path is None and self.sql is None and not in_memory:
            raise ValueError("give dataset_path (a file) or sql (a query)")
        if self.sql is None and (self.source_url or self.source_block):
            raise ValueError("source_url and source_block name where sql runs; give sql too")
        return self

    @model_validator(mode="after")
    def _some_model(self) -> GenerateOptions:
        if not self.models:
            raise ValueError("name a model: model_id, or model_ids for several")
        if any(not model.strip() for model in self.models):
            raise ValueError("a model id is empty")
        return self

    @model_validator(mode="after")
    def _judges(self) -> GenerateOptions:
        if any(not judge.strip() for judge in self.judge_models):
            raise ValueError("a judge model id is empty")
        if self.judge_template is not None and not self.judge_models:
            raise ValueError("judge_template needs a judge model (judge_models)")
        return self

    @property
    def judge(self) -> JudgeSpec | None:
        """Who judges the answers and with which template (None: nobody).

        Example:
            >>> GenerateOptions(dataset_path="p.jsonl", model_id="m", judge_models=["j"]).judge
            JudgeSpec(models=('j',), template_text=None)
        """
        if not self.judge_models:
            return None
        return JudgeSpec(tuple(dict.fromkeys(self.judge_models)), self.judge_template)

    @property
    def models(self) -> list[str]:
        """Every model of the run, in the order given, each once (``model_id`` first)."""
        given = ([self.model_id] if self.model_id else []) + self.model_ids
        return list(dict.fromkeys(given))

    def dataset_options(self) -> DatasetOptions:
        """How to read the dataset."""
        return DatasetOptions(
            prompt_column=self.prompt_column,
            messages_column=self.messages_column,
            id_column=self.id_column,
            system_prompt=self.system_prompt,
            template=self.template,
            system_template=self.system_template,
            keep_columns=self._kept(),
            response_schema=self.response,
        )

    def _kept(self) -> tuple[str, ...]:
        """The kept columns, with the expected-answer column (scores read it back) and the
        columns a judge template reads."""
        expected = self.expected_column
        extra = [expected] if expected and expected not in self.keep_columns else []
        # The columns a judge template reads are kept too: judges see them beside the answer.
        judge = self.judge
        named = sorted(judge.columns()) if judge is not None else []
        extra += [name for name in named if name not in (*self.keep_columns, *extra)]
        return (*self.keep_columns, *extra)

    def source(self, sql_url: str | None = None) -> DatasetSource:
        """The dataset to read: the file, or the query run on ``sql_url`` (resolved by the
        caller from ``source_url``, ``source_block`` or the results database).

        Example:
            >>> GenerateOptions(dataset_path="data/p.jsonl", model_id="m").source().dataset
            'p.jsonl'
        """
        if self.sql is not None:
            if sql_url is None:
                raise ConfigurationError("a SQL source needs the URL of the database it runs on")
            return SqlSource(self.sql, sql_url, self.dataset_name)
        if self.dataset_path is None:
            raise ConfigurationError("give a dataset file or --sql QUERY")
        source = FileSource(self.dataset_path)
        if self.dataset_name:
            source.dataset = self.dataset_name
        return source


def check_keep_columns(names: list[str]) -> list[str]:
    """``names`` if each is a non-empty column name given once, else a ValueError saying why.

    Example:
        >>> check_keep_columns(["id", "id"])
        Traceback (most recent call last):
        ValueError: the column 'id' is named twice
    """
    seen: set[str] = set()
    for name in names:
        if not name.strip():
            raise ValueError("a column name is empty")
        if name in seen:
            raise ValueError(f"the column {name!r} is named twice")
        seen.add(name)
    return names
