"""The values that flow between datasets, the client and storage: rows, identities, shards.

A row's identity is ``(row_key, prompt_hash, model_id, params_hash)``:
the same conversation sent to the same model with the same parameters is the same paid
work, whichever run, process or machine sends it. Hashes are sha256 of canonical JSON
(sorted keys, no whitespace, UTF-8), so they are stable across runs and machines.

Example:
    >>> params = GenerationParams(model_id="m", temperature=0.7, max_tokens=64)
    >>> row = Row.from_messages([Message(role="user", content="Hi")], line=1)
    >>> row.identity(params).model_id
    'm'
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson

from studio_flows.models import GenerateRequest, Message
from studio_flows.statuses import RowStatus

if TYPE_CHECKING:
    from studio_flows.structured import ResponseSchema

Messages = tuple[Message, ...]

# The longest row id the results table stores; a longer one is a bad row, refused before
# any job is paid for (it could never be written back).
MAX_ROW_KEY_LENGTH = 255


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace: one spelling per value."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def sha256_hex(text: str) -> str:
    """Hex sha256 of ``text`` encoded as UTF-8."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def messages_payload(messages: Sequence[Message]) -> list[dict[str, str]]:
    """The JSON form of a conversation, as sent and as stored."""
    return [{"role": m.role, "content": m.content} for m in messages]


def prompt_hash(messages: Sequence[Message]) -> str:
    """Stable hash of a conversation's content: sha256 of its :func:`canonical_json`.

    orjson writes those very bytes for a conversation (strings only: the tests compare
    both for every code point) in a fifth of the time; it was the largest cost of reading.
    """
    payload = orjson.dumps(messages_payload(messages), option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(payload).hexdigest()


class RowIdentity(NamedTuple):
    """What makes two rows the same paid work."""

    row_key: str
    prompt_hash: str
    model_id: str
    params_hash: str

    @property
    def key(self) -> str:
        """The identity in 32 hex characters: what the results table is unique on.

        The first 128 bits of the sha256 of the identity's JSON (a collision is ~1e-21 likely
        at a billion rows). Example:
            >>> RowIdentity("r", "p", "m", "h").key
            'c74e185035aa543ec90b355c53f2a328'
        """
        return hashlib.sha256(orjson.dumps(tuple(self))).hexdigest()[:32]


@dataclass(frozen=True)
class GenerationParams:
    """Everything sent with a conversation besides the conversation itself, and the
    response schema its answer must match (None: any text is an answer)."""

    model_id: str
    temperature: float = 0.7
    max_tokens: int = 512
    response_schema: ResponseSchema | None = None
    # The hash of the templates the rows were rendered with (None: none). Recorded beside
    # each result, not part of the identity: a template already changes the conversation.
    template_hash: str | None = field(default=None, compare=False)

    @functools.cached_property
    def params_hash(self) -> str:
        """Hash of every sent parameter except the model (which has its own column), and of
        the response schema when there is one (a changed schema is new paid work; without
        one the hash is what it always was, so no stored row is paid again).

        Cached: every row's identity needs it, and hashing it anew was half of planning.

        Example:
            >>> GenerationParams("m").params_hash[:12]
            '750840bae40e'
        """
        hashed: dict[str, Any] = {
            "temperature": float(self.temperature),
            "max_tokens": self.max_tokens,
        }
        if self.response_schema is not None:
            hashed["response_schema"] = self.response_schema.digest
        return sha256_hex(canonical_json(hashed))


@dataclass(frozen=True)
class Row:
    """One conversation read from a dataset.

    ``row_key`` is the user's id column when given, else the conversation's hash.
    ``line`` is the 1-based line (JSONL, CSV record start) or row number (Parquet).
    ``metadata`` holds the input columns a user keeps (JSON values), stored beside the
    answer; it is not part of the row's identity.
    """

    row_key: str
    messages: Messages
    line: int
    prompt_hash: str
    metadata: Mapping[str, Any] | None = None

    @classmethod
    def from_messages(
        cls,
        messages: Sequence[Message],
        *,
        line: int,
        row_key: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Row:
        """Build a row, defaulting its key to the conversation's hash."""
        digest = prompt_hash(messages)
        return cls(
            row_key=row_key or digest,
            messages=tuple(messages),
            line=line,
            prompt_hash=digest,
            metadata=metadata,
        )

    def identity(self, params: GenerationParams) -> RowIdentity:
        """This row's identity when sent with ``params``."""
        return RowIdentity(self.row_key, self.prompt_hash, params.model_id, params.params_hash)


@dataclass(frozen=True)
class BadRow:
    """A row that cannot be sent, with where it is and why."""

    file: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"


def shard_key_for(identities: Sequence[RowIdentity]) -> str:
    """Deterministic key of a shard: a hash of its rows' identities, in order."""
    return sha256_hex(canonical_json([list(identity) for identity in identities]))[:32]


@dataclass(frozen=True)
class Shard:
    """Consecutive rows sent as one job; ``rows[i]`` is answered by ``task_index`` i."""

    dataset: str
    params: GenerationParams
    rows: tuple[Row, ...]

    @property
    def identities(self) -> list[RowIdentity]:
        """Row identities in task-index order."""
        return [row.identity(self.params) for row in self.rows]

    @functools.cached_property
    def shard_key(self) -> str:
        """Deterministic: the same rows with the same parameters give the same key."""
        return shard_key_for(self.identities)

    def request(self) -> GenerateRequest:
        """The POST body of this shard's job."""
        return GenerateRequest(
            model_id=self.params.model_id,
            messages=[list(row.messages) for row in self.rows],
            temperature=self.params.temperature,
            max_tokens=self.params.max_tokens,
        )


@dataclass(frozen=True)
class ResultRecord:
    """One answered (or failed) row, ready to be written."""

    identity: RowIdentity
    task_index: int
    messages: Messages
    status: RowStatus
    result: str | None
    error: str | None
    metadata: Mapping[str, Any] | None = None
    # The answer's JSON value, when the run has a response schema and the answer matches it.
    parsed: Any = None
