"""How a handler tells the consumer wrapper what to do with a message it could not handle."""

from __future__ import annotations

from dataclasses import dataclass


class TransientError(Exception):
    """Worth retrying: the message is nak'ed and redelivered after `delay` seconds
    (the wrapper's backoff when None), until the consumer's delivery limit."""

    def __init__(self, message: str, *, delay: float | None = None, reason: str = "Transient"):
        super().__init__(message)
        self.delay = delay
        self.reason = reason


class PermanentError(Exception):
    """Retrying cannot help: the message is terminated and a failure event is published."""

    def __init__(self, message: str, *, reason: str = "Permanent"):
        super().__init__(message)
        self.reason = reason


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
