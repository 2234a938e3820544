"""Resources a vNode asks for and a node offers, and the taints and tolerations that decide where it may go."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from libs.api.models import Toleration as TolerationSpec

HARD_EFFECTS = frozenset({"NoSchedule", "NoExecute"})


@dataclass(frozen=True, slots=True)
class Resources:
    gpus: int = 0
    cpu_millis: int = 0
    memory_bytes: int = 0
    pods: int = 0

    def __add__(self, other: Resources) -> Resources:
        return Resources(
            self.gpus + other.gpus,
            self.cpu_millis + other.cpu_millis,
            self.memory_bytes + other.memory_bytes,
            self.pods + other.pods,
        )

    def __sub__(self, other: Resources) -> Resources:
        return Resources(
            self.gpus - other.gpus,
            self.cpu_millis - other.cpu_millis,
            self.memory_bytes - other.memory_bytes,
            self.pods - other.pods,
        )

    def beyond(self, other: Resources) -> Resources:
        """What this needs on top of `other`, per resource (never below zero)."""
        return Resources(
            max(0, self.gpus - other.gpus),
            max(0, self.cpu_millis - other.cpu_millis),
            max(0, self.memory_bytes - other.memory_bytes),
            max(0, self.pods - other.pods),
        )

    def covers(self, need: Resources) -> bool:
        return (
            self.gpus >= need.gpus
            and self.cpu_millis >= need.cpu_millis
            and self.memory_bytes >= need.memory_bytes
            and self.pods >= need.pods
        )

    def exceeds_somewhere(self, other: Resources) -> bool:
        """True when any amount is larger than the other's (capacity that grew)."""
        return (
            self.gpus > other.gpus
            or self.cpu_millis > other.cpu_millis
            or self.memory_bytes > other.memory_bytes
            or self.pods > other.pods
        )


NOTHING = Resources()


@dataclass(frozen=True, slots=True)
class Taint:
    key: str
    value: str = ""
    effect: str = "NoSchedule"

    def __str__(self) -> str:
        return f"{self.key}={self.value}:{self.effect}" if self.value else f"{self.key}:{self.effect}"


@dataclass(frozen=True, slots=True)
class Toleration:
    key: str = ""
    operator: Literal["Exists", "Equal"] = "Equal"
    value: str = ""
    effect: str = ""

    @classmethod
    def from_spec(cls, spec: TolerationSpec) -> Toleration:
        return cls(spec.key or "", spec.operator or "Equal", spec.value or "", spec.effect or "")

    def tolerates(self, taint: Taint) -> bool:
        # The Kubernetes rules: an empty effect matches every effect, an empty key with Exists
        # matches every taint, Exists ignores the value.
        if self.effect and self.effect != taint.effect:
            return False
        if not self.key:
            return self.operator == "Exists"
        if self.key != taint.key:
            return False
        return self.operator == "Exists" or self.value == taint.value


def tolerated(taints: Iterable[Taint], tolerations: tuple[Toleration, ...]) -> bool:
    return all(any(t.tolerates(taint) for t in tolerations) for taint in taints)
