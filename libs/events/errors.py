"""How a handler tells the consumer wrapper what to do with a message it could not handle."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from libs.events.reasons import Reason

# Longest error sentence put into an event (and from there the status); the log has the rest.
MESSAGE_MAX_CHARS = 300


class TransientError(Exception):
    """Worth retrying: the message is nak'ed and redelivered after `delay` seconds
    (the wrapper's backoff when None), until the consumer's delivery limit."""

    def __init__(self, message: str, *, delay: float | None = None, reason: Reason = Reason.TRANSIENT):
        super().__init__(message)
        self.delay = delay
        self.reason = reason


class PermanentError(Exception):
    """Retrying cannot help: the message is terminated and a failure event is published."""

    def __init__(self, message: str, *, reason: Reason = Reason.PERMANENT):
        super().__init__(message)
        self.reason = reason


class UndeclaredEvent(PermanentError):
    """A handler or publisher produced an event its service's topology does not declare (a bug):
    nothing of it is published, and the cause fails instead."""

    def __init__(self, message: str):
        super().__init__(message, reason=Reason.UNDECLARED_EVENT)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an input, at a field path such as `data.spec.nodes[0].name`."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class InvalidEvent(Exception):
    """A message that does not decode into its subject's model."""

    def __init__(
        self,
        subject: str,
        problems: list[Problem],
        cluster_id: str | None,
        *,
        event_id: str | None = None,
        correlation_id: str | None = None,
    ):
        super().__init__("; ".join(str(p) for p in problems))
        self.subject = subject
        self.problems = problems
        # What could be read of the message, so an answer to it can name it (each None when unusable).
        self.cluster_id = cluster_id
        self.event_id = event_id
        self.correlation_id = correlation_id


def plain_message(error: BaseException) -> str:
    """An error as one line a person can act on, for events and the status: an HTTP API error
    (kubernetes' ApiException) as its status and the server's own message, anything else as its
    first line. The whole error, headers and all, belongs in the log only."""
    status, reason = getattr(error, "status", None), getattr(error, "reason", None)
    if isinstance(status, int) and isinstance(reason, str):
        detail = _server_message(getattr(error, "body", None))
        text = f"the API server answered {status} {reason}" + (f": {detail}" if detail else "")
    else:
        lines = str(error).strip().splitlines()
        text = lines[0] if lines else type(error).__name__
    return text if len(text) <= MESSAGE_MAX_CHARS else text[: MESSAGE_MAX_CHARS - 3] + "..."


def _server_message(body: Any) -> str | None:
    """`message` of the Status document an API server sends with an error."""
    try:
        document = json.loads(body) if isinstance(body, (str, bytes)) else None
    except ValueError:
        return None
    message = document.get("message") if isinstance(document, dict) else None
    return " ".join(message.split()) if isinstance(message, str) else None
