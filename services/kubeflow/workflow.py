"""One install of Kubeflow into a virtual cluster: apply in bounded rounds, wait for the CRDs,
create the user, then wait for the core to be available. Progress goes out as events."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import bcrypt
import structlog

from libs.events import PermanentError, Reason
from services.kubeflow import logic
from services.kubeflow.adapters.inner import ApplyError, InnerCluster

log = structlog.get_logger(__name__)

# step, ready, total, message
Progress = Callable[[str, int, int, str], Awaitable[None]]


@dataclass(frozen=True)
class User:
    email: str
    password: str
    user_id: str


@dataclass(frozen=True)
class InstallPlan:
    objects: Sequence[Mapping[str, Any]]
    user: User | None
    ui_node_port: int | None
    rounds: int
    round_delay_s: float
    ready_timeout_s: float
    poll_interval_s: float
    bcrypt_rounds: int
    wait_for_available: bool = True


async def install(inner: InnerCluster, plan: InstallPlan, progress: Progress) -> list[str]:
    """Returns the Deployments not available (with why) when the plan does not wait for them."""
    objects = logic.order_for_apply(plan.objects)
    extra = [logic.profile_for(plan.user.email)] if plan.user else []
    extra += [logic.ui_service(plan.ui_node_port)] if plan.ui_node_port else []
    await _apply_in_rounds(inner, [*objects, *extra], plan, progress)
    if plan.user is not None:
        await _set_dex_user(inner, plan.user, plan.bcrypt_rounds)
        await progress("user", 1, 1, f"dex user {plan.user.email} and Profile {logic.user_name(plan.user.email)}")
    expected = logic.workloads(objects)
    if not plan.wait_for_available:
        return await _unavailable_once_settled(inner, expected, plan, progress)
    await _wait_ready(inner, expected, plan, progress)
    return []


async def _unavailable_once_settled(
    inner: InnerCluster, expected: list[tuple[str, str]], plan: InstallPlan, progress: Progress
) -> list[str]:
    """What is not available, once each such Deployment's pods say why (not merely that their
    containers are being created), or after SETTLE_S."""
    deadline = time.monotonic() + logic.SETTLE_S
    while True:
        state = logic.readiness(expected, await inner.deployments())
        reasons = await inner.waiting_reasons() if state.waiting else {}
        if not logic.still_starting(state.waiting, reasons) or time.monotonic() > deadline:
            break
        await asyncio.sleep(plan.poll_interval_s)
    await progress("ready", len(state.ready), len(expected), state.message())
    return logic.unavailable(state.waiting, reasons)


async def _apply_in_rounds(
    inner: InnerCluster, objects: list[Mapping[str, Any]], plan: InstallPlan, progress: Progress
) -> None:
    """Objects that fail (a CRD not established yet, a webhook not serving yet) are retried in
    the next round; after `plan.rounds` rounds the install fails with what is still failing."""
    remaining = objects
    crds = logic.crd_names(objects)
    failures: dict[logic.ObjectKey, str] = {}
    for round_number in range(1, plan.rounds + 1):
        failures = {}
        for obj in remaining:
            try:
                await inner.apply(obj)
            except Exception as error:  # noqa: BLE001 - collected and retried next round
                failures[logic.key_of(obj)] = _reason(error)
        applied = len(objects) - len(failures)
        await progress("apply", applied, len(objects), f"round {round_number}: {len(failures)} to retry")
        if not failures:
            break
        await _wait_established(inner, crds, plan.round_delay_s)
        remaining = [o for o in remaining if logic.key_of(o) in failures]
    if failures:
        shown = "; ".join(f"{key}: {why}" for key, why in sorted(failures.items())[:5])
        raise PermanentError(
            f"{len(failures)} objects still failing after {plan.rounds} apply rounds: {shown}", reason=Reason.APPLY_FAILED
        )


async def _wait_established(inner: InnerCluster, crds: list[str], delay_s: float) -> None:
    deadline = time.monotonic() + max(delay_s, 1.0) * 6
    # Polls the inner apiserver: what it reports has no event to wait on here.
    while await inner.established(crds) and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.5)
    await asyncio.sleep(delay_s)


async def _set_dex_user(inner: InnerCluster, user: User, rounds: int) -> None:
    data = await inner.config_map_data("auth", "dex")
    if data is None or "config.yaml" not in data:
        raise PermanentError("the release has no dex ConfigMap auth/dex with config.yaml", reason=Reason.NO_DEX)
    existing = logic.current_hash(data["config.yaml"], user.email)
    if existing and bcrypt.checkpw(user.password.encode(), existing.encode()):
        return  # unchanged password: keep the hash, so a redelivery changes nothing
    password_hash = bcrypt.hashpw(user.password.encode(), bcrypt.gensalt(rounds)).decode()
    config_yaml = logic.dex_config_with_user(
        data["config.yaml"], email=user.email, password_hash=password_hash, user_id=user.user_id
    )
    await inner.apply(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "dex", "namespace": "auth"},
            "data": {**data, "config.yaml": config_yaml},
        }
    )


async def _wait_ready(
    inner: InnerCluster, expected: list[tuple[str, str]], plan: InstallPlan, progress: Progress
) -> None:
    deadline = time.monotonic() + plan.ready_timeout_s
    reported = -1
    while True:
        state = logic.readiness(expected, await inner.deployments())
        if len(state.ready) != reported:
            reported = len(state.ready)
            await progress("ready", len(state.ready), len(expected), state.message())
        if state.done:
            return
        if time.monotonic() > deadline:
            raise PermanentError(
                f"Kubeflow not ready after {plan.ready_timeout_s:.0f}s: {state.message()}", reason=Reason.KUBEFLOW_NOT_READY
            )
        await asyncio.sleep(plan.poll_interval_s)


def _reason(error: Exception) -> str:
    if isinstance(error, ApplyError):
        return str(error)
    return f"{type(error).__name__}: {error}"[:200]
