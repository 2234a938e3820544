"""Who consumes what and may publish what, declared where the handlers are.

A handler method is marked with `@subscriber(ConsumedEvent, ..., emits=(EmittedEvent, ...))`; a
publisher outside the handlers' return values (a watch, a tracker, progress sent while a handler
runs) is declared as `Publishes(by, emits)`. `declare` reads both into a `ServiceTopology`, the one
source of the NATS permissions (`libs.events.permissions`), the consumer's filter, the documented
tables and diagram (`services.topology`). The consumer wrapper refuses a result a handler did not
declare, and a declared publisher (`Publisher.only`) refuses an event its declaration does not name.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from libs.events.catalog import EVENTS, ClusterFailed, ClusterRejected, ClusterRequested
from libs.events.envelope import Envelope, Payload

Handler = Callable[[Envelope[Any]], Awaitable[Iterable[Envelope[Any]]]]
HandlerMethod = TypeVar("HandlerMethod", bound=Callable[..., Any])

_MARK = "__vk8s_subscription__"
_CATALOG_ORDER = {event.subject: index for index, event in enumerate(EVENTS)}


def _subjects(events: Iterable[type[Payload]]) -> tuple[str, ...]:
    return tuple(sorted({event.subject for event in events}, key=_CATALOG_ORDER.__getitem__))


@dataclass(frozen=True)
class _Mark:
    consumes: tuple[str, ...]
    emits: tuple[str, ...]


def subscriber(
    *consumes: type[Payload], emits: Iterable[type[Payload]] = ()
) -> Callable[[HandlerMethod], HandlerMethod]:
    """Marks a handler method: it consumes the events `consumes` and may return (or publish while
    it runs) only `emits`, besides the `cluster.failed` its consumer wrapper may always answer with."""
    if not consumes:
        raise ValueError("subscriber: name at least one consumed event")
    mark = _Mark(consumes=_subjects(consumes), emits=_subjects(emits))

    def marked(method: HandlerMethod) -> HandlerMethod:
        setattr(method, _MARK, mark)
        return method

    return marked


@dataclass(frozen=True)
class Subscription:
    """One consumed subject: the handler method's name and the events it may emit."""

    subject: str
    handler: str
    emits: tuple[str, ...]


@dataclass(frozen=True)
class Publishes:
    """Events published outside a handler's return value, and by what."""

    by: str
    emits: tuple[str, ...]

    @classmethod
    def of(cls, by: str, *events: type[Payload]) -> Publishes:
        return cls(by=by, emits=_subjects(events))


@dataclass(frozen=True)
class ServiceTopology:
    """What one service consumes (through its durable consumer) and may publish."""

    service: str
    subscriptions: tuple[Subscription, ...]
    publishers: tuple[Publishes, ...] = ()
    kv_bucket: str | None = None
    """Its KV bucket by default (a deployment that renames it must grant the new name)."""
    answers_invalid_requests: bool = True
    relays_feed: bool = False
    """Whether it relays the events it handles on the requesters' feed (FEED_SUBJECT, core NATS)."""

    @property
    def consumes(self) -> tuple[str, ...]:
        """In the order declared: the durable consumer's filter, unchanged while the code is."""
        return tuple(subscription.subject for subscription in self.subscriptions)

    @property
    def emits(self) -> tuple[str, ...]:
        """Every event it may publish, in catalog order: the declared ones, and what its consumer
        wrapper answers an unhandleable message with."""
        declared = [subject for s in self.subscriptions for subject in s.emits]
        declared += [subject for publisher in self.publishers for subject in publisher.emits]
        declared.append(ClusterFailed.subject)
        if self.answers_invalid_requests and ClusterRequested.subject in self.consumes:
            declared.append(ClusterRejected.subject)
        return _ordered(declared)

    def publisher(self, by: str) -> Publishes:
        for publisher in self.publishers:
            if publisher.by == by:
                return publisher
        raise KeyError(f"{self.service} declares no publisher {by!r}")


def _ordered(subjects: Iterable[str]) -> tuple[str, ...]:
    return tuple(sorted(set(subjects), key=_CATALOG_ORDER.__getitem__))


def declare(
    service: str,
    handlers: type,
    *,
    publishers: Iterable[Publishes] = (),
    kv_bucket: str | None = None,
    answers_invalid_requests: bool = True,
    relays_feed: bool = False,
) -> ServiceTopology:
    """The topology of `service` from the `@subscriber` methods of its handlers class, in the order
    they are defined there."""
    subscriptions: list[Subscription] = []
    for name, attribute in vars(handlers).items():
        mark: _Mark | None = getattr(attribute, _MARK, None)
        if mark is not None:
            subscriptions += [Subscription(subject, name, mark.emits) for subject in mark.consumes]
    subjects = [subscription.subject for subscription in subscriptions]
    if not subjects:
        raise ValueError(f"{handlers.__qualname__} has no @subscriber methods")
    if len(set(subjects)) != len(subjects):
        raise ValueError(f"{handlers.__qualname__}: a subject is consumed by two methods: {subjects}")
    return ServiceTopology(
        service=service,
        subscriptions=tuple(subscriptions),
        publishers=tuple(publishers),
        kv_bucket=kv_bucket,
        answers_invalid_requests=answers_invalid_requests,
        relays_feed=relays_feed,
    )


@dataclass(frozen=True)
class Route:
    """A subscription bound to a handler object: what the consumer wrapper runs and checks."""

    subject: str
    handler: Handler
    emits: frozenset[str]


def routes(topology: ServiceTopology, handlers: object) -> tuple[Route, ...]:
    """The declared subscriptions of `topology`, bound to the methods of `handlers`."""
    return tuple(
        Route(subscription.subject, getattr(handlers, subscription.handler), frozenset(subscription.emits))
        for subscription in topology.subscriptions
    )
