"""The options of one generation run, as one validated model.

The flow takes this model as its parameter, so a deployment's form in the Prefect UI
validates each field and shows its help text. No secret belongs here: the token comes
from the environment or a credentials Block, named by ``credentials_block``.

Example:
    >>> GenerateOptions(dataset_path="examples/prompts.jsonl", model_id="m").shard_size is None
    True
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from studio_flows.datasets import DatasetOptions


class GenerateOptions(BaseModel):
    """What to generate, where to write it, and how to treat bad rows and unknown outcomes."""

    model_config = ConfigDict(extra="forbid")

    dataset_path: str = Field(description="JSONL, CSV or Parquet file, one conversation a row")
    model_id: str = Field(min_length=1, description="Model Studio model id")
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
    prompt_column: str = "prompt"
    messages_column: str = "messages"
    id_column: str | None = None
    keep_columns: list[str] = Field(
        default_factory=list,
        description="Input columns stored beside each answer (as JSON) and exported with it",
    )

    @field_validator("keep_columns")
    @classmethod
    def _distinct_names(cls, names: list[str]) -> list[str]:
        return check_keep_columns(names)

    def dataset_options(self) -> DatasetOptions:
        """How to read the dataset."""
        return DatasetOptions(
            prompt_column=self.prompt_column,
            messages_column=self.messages_column,
            id_column=self.id_column,
            system_prompt=self.system_prompt,
            keep_columns=tuple(self.keep_columns),
        )


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
