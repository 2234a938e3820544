"""Subject <-> payload model registry: decoding, and the JSON Schemas published as the contract."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import ValidationError

from libs.api.validation import field_path
from libs.events.envelope import CLUSTER_ID_PATTERN, ID_MAX_LENGTH, Envelope, Payload, envelope_of
from libs.events.errors import InvalidEvent, Problem


def problems_from(error: ValidationError) -> list[Problem]:
    return [
        Problem(field_path(e["loc"]), e["msg"].removeprefix("Value error, "))
        for e in error.errors(include_url=False, include_context=False)
    ]


class Registry:
    def __init__(self, payloads: Iterable[type[Payload]]):
        self._models: dict[str, type[Payload]] = {}
        for model in payloads:
            if model.subject in self._models:
                raise ValueError(f"subject {model.subject!r} registered twice")
            self._models[model.subject] = model

    def subjects(self) -> list[str]:
        return sorted(self._models)

    def model_for(self, subject: str) -> type[Payload]:
        try:
            return self._models[subject]
        except KeyError:
            raise KeyError(f"no event model for subject {subject!r}") from None

    def subject_of(self, model: type[Payload]) -> str:
        if self._models.get(model.subject) is not model:
            raise KeyError(f"{model.__name__} is not registered")
        return model.subject

    def decode(self, subject: str, raw: bytes) -> Envelope[Any]:
        """Parses and validates a message; raises InvalidEvent naming every problem found."""
        try:
            document = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InvalidEvent(subject, [Problem("", f"not valid JSON: {exc}")], None) from None
        if not isinstance(document, Mapping):
            raise InvalidEvent(subject, [Problem("", "must be a JSON object (the event envelope)")], None)
        cluster_id = _cluster_id_hint(document)
        ids = {"event_id": _id_hint(document, "id"), "correlation_id": _id_hint(document, "correlationId")}
        model = self._models.get(subject)
        if model is None:
            raise InvalidEvent(subject, [Problem("type", f"unknown event type {subject!r}")], cluster_id, **ids)
        problems: list[Problem] = []
        if document.get("type") != subject:
            problems.append(Problem("type", f"must be {subject!r}, the subject it was published on"))
        if document.get("schemaVersion") != model.version:
            problems.append(
                Problem("schemaVersion", f"must be {model.version} for {subject!r}, got {document.get('schemaVersion')!r}")
            )
        try:
            envelope = envelope_of(model).model_validate(document)
        except ValidationError as exc:
            problems.extend(problems_from(exc))
            envelope = None
        if envelope is not None and (named := _named_cluster(envelope.data)) and named != envelope.cluster_id:
            problems.append(Problem("clusterId", f"must be {named!r}, the data's namespace/name"))
        if problems or envelope is None:
            raise InvalidEvent(subject, problems, cluster_id, **ids)
        return envelope

    def json_schema(self, subject: str) -> dict[str, Any]:
        model = self.model_for(subject)
        schema = envelope_of(model).model_json_schema(by_alias=True)
        schema["$id"] = f"https://vk8s.skt.co.kr/schemas/events/{subject}.v{model.version}.json"
        schema["title"] = subject
        props = schema["properties"]
        props["type"] = {"const": subject, "type": "string", "description": props["type"].get("description", "")}
        props["schemaVersion"] = {"const": model.version, "type": "integer"}
        if model.__doc__:
            schema["description"] = " ".join(model.__doc__.split())
        return schema


def _named_cluster(data: Payload) -> str | None:
    """`<namespace>/<name>` of a payload that names its cluster (requests, acceptances, updates)."""
    name, namespace = getattr(data, "name", None), getattr(data, "namespace", None)
    return f"{namespace}/{name}" if isinstance(name, str) and isinstance(namespace, str) else None


def _id_hint(document: Mapping[str, Any], key: str) -> str | None:
    """An id field of an invalid event, if it is one the envelope would take (1-128 characters)."""
    value = document.get(key)
    return value if isinstance(value, str) and 1 <= len(value) <= ID_MAX_LENGTH else None


def _cluster_id_hint(document: Mapping[str, Any]) -> str | None:
    """The cluster an invalid event was about, if it can be told, so its rejection reaches its status."""
    candidate = document.get("clusterId")
    if isinstance(candidate, str) and re.match(CLUSTER_ID_PATTERN, candidate):
        return candidate
    data = document.get("data")
    if isinstance(data, Mapping):
        name, namespace = data.get("name"), data.get("namespace", "default")
        if isinstance(name, str) and isinstance(namespace, str):
            candidate = f"{namespace}/{name}"
            if re.match(CLUSTER_ID_PATTERN, candidate):
                return candidate
    return None
