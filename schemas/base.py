"""The base every wire message derives from."""

import time
import uuid
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

SCHEMA_VERSION = 1

RoundId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
DeviceId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
Digest = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


def now_ms() -> int:
    """Wall-clock time in integer milliseconds, the only time unit on the wire."""
    return time.time_ns() // 1_000_000


def new_id() -> str:
    """A fresh message id, used to deduplicate at-least-once deliveries."""
    return uuid.uuid4().hex


class Message(BaseModel):
    """Frozen, strict about unknown fields, stamped with schema version, id and time."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: int = SCHEMA_VERSION
    msg_id: str = Field(default_factory=new_id, max_length=64)
    ts_ms: int = Field(default_factory=now_ms, ge=0)
