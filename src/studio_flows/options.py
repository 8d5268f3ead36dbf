"""The options of one generation run, as one validated model.

The flow takes this model as its parameter, so a deployment's form in the Prefect UI
validates each field and shows its help text. No secret belongs here: the token comes
from the environment or a credentials Block, named by ``credentials_block``.

An evaluation run names several models (``model_ids``): every row runs once per model.

Example:
    >>> GenerateOptions(dataset_path="examples/prompts.jsonl", model_id="m").shard_size is None
    True
    >>> GenerateOptions(dataset_path="p.jsonl", model_ids=["base", "tuned"]).models
    ['base', 'tuned']
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from studio_flows.datasets import DatasetOptions


class GenerateOptions(BaseModel):
    """What to generate, where to write it, and how to treat bad rows and unknown outcomes."""

    model_config = ConfigDict(extra="forbid")

    dataset_path: str = Field(description="JSONL, CSV or Parquet file, one conversation a row")
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
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL of the results database (default: settings)"
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

    @model_validator(mode="after")
    def _some_model(self) -> GenerateOptions:
        if not self.models:
            raise ValueError("name a model: model_id, or model_ids for several")
        if any(not model.strip() for model in self.models):
            raise ValueError("a model id is empty")
        return self

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
        )
