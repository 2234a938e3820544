"""The one envelope every event travels in, and the payload base class.

The JSON form is camelCase: {"id", "type", "schemaVersion", "time", "clusterId",
"correlationId", "causationId", "data"}. `type` is also the NATS subject.
"""

from __future__ import annotations

import functools
import uuid
from datetime import datetime
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

# Derived event ids are uuid5 in this namespace, so a redelivered cause yields the same ids
# and the broker's Nats-Msg-Id dedupe drops the repeats.
EVENT_ID_NAMESPACE = uuid.UUID("6f7c3f52-2a55-4c57-9c36-0a6c1d3b8b11")

ID_MAX_LENGTH = 128
CLUSTER_ID_PATTERN = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?/[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"


class EventModel(BaseModel):
    """Frozen, strict, camelCase on the wire: the base of payloads and of their parts."""

    model_config = ConfigDict(
        frozen=True, extra="forbid", populate_by_name=True, alias_generator=to_camel
    )


class Payload(EventModel):
    """Base of every event payload. Subclasses set `subject` and, when they change shape, `version`."""

    subject: ClassVar[str]
    version: ClassVar[int] = 1


P = TypeVar("P", bound=Payload)
# The payload of an event that another causes: its own type, not the cause's.
Caused = TypeVar("Caused", bound=Payload)


class Envelope(BaseModel, Generic[P]):
    model_config = ConfigDict(
        frozen=True, extra="forbid", populate_by_name=True, alias_generator=to_camel
    )

    id: str = Field(min_length=1, max_length=ID_MAX_LENGTH, description="Unique event id; the Nats-Msg-Id.")
    type: str = Field(description="Event type, equal to the NATS subject.")
    schema_version: int = Field(ge=1, description="Version of the payload schema.")
    time: AwareDatetime
    cluster_id: str = Field(
        pattern=CLUSTER_ID_PATTERN, description="The virtual cluster: '<namespace>/<name>'."
    )
    correlation_id: str = Field(min_length=1, max_length=ID_MAX_LENGTH)
    causation_id: str | None = Field(default=None, max_length=ID_MAX_LENGTH)
    data: P

    @classmethod
    def new(
        cls,
        data: P,
        *,
        cluster_id: str,
        now: datetime,
        event_id: str | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
    ) -> Envelope[P]:
        """Starts a new causal chain (a request from outside the pipeline), or answers a message that
        could not be read as an event, with what could be read of its ids."""
        event_id = event_id or str(uuid.uuid4())
        return envelope_of(type(data))(
            id=event_id,
            type=data.subject,
            schema_version=data.version,
            time=now,
            cluster_id=cluster_id,
            correlation_id=correlation_id or event_id,
            causation_id=causation_id,
            data=data,
        )

    def follow(self, data: Caused, *, now: datetime, key: str = "") -> Envelope[Caused]:
        """An event caused by this one. Its id is derived from this id, the new type and `key`,
        so handling this event twice publishes the same ids (deduplicated by the broker)."""
        derived = uuid.uuid5(EVENT_ID_NAMESPACE, f"{self.id}/{data.subject}/{key}")
        return envelope_of(type(data))(
            id=str(derived),
            type=data.subject,
            schema_version=data.version,
            time=now,
            cluster_id=self.cluster_id,
            correlation_id=self.correlation_id,
            causation_id=self.id,
            data=data,
        )

    def to_json(self) -> bytes:
        return self.model_dump_json(by_alias=True).encode()

    def log_context(self) -> dict[str, Any]:
        return {
            "event_id": self.id,
            "event_type": self.type,
            "cluster_id": self.cluster_id,
            "correlation_id": self.correlation_id,
        }


@functools.cache
def envelope_of(model: type[Payload]) -> type[Envelope[Any]]:
    """Envelope[model], built once: parametrising a generic model on every event is costly."""
    return Envelope[model]  # type: ignore[valid-type]


def cluster_id_of(namespace: str, name: str) -> str:
    return f"{namespace}/{name}"
