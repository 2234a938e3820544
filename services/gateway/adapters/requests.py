"""Requests from NATS requesters: core NATS on vk8s.requests.<namespace> (queue group, so one
replica answers each). A request within the subject's namespace goes into the stream as sent, on
cluster.requested with Nats-Msg-Id = its id (the broker's dedupe), where the gateway validates it
as any request (cluster.rejected for a bad one); the reply says stored, or why not."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from libs.events.catalog import REQUEST_SUBJECT, ClusterRequested
from services.gateway import logic

log = structlog.get_logger(__name__)


class RequestIntake:
    def __init__(self, nc: NATS, *, queue: str = "gateway", timeout_s: float = 5.0):
        self._nc = nc
        self._queue = queue
        self._timeout_s = timeout_s

    async def run(self) -> None:
        subscription = await self._nc.subscribe(f"{REQUEST_SUBJECT}.*", queue=self._queue, cb=self._answer)
        try:
            await asyncio.Event().wait()
        finally:
            await subscription.unsubscribe()

    async def _answer(self, msg: Msg) -> None:
        namespace = msg.subject.rsplit(".", 1)[1]
        try:
            document = json.loads(msg.data)
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            await self._reply(msg, {"error": f"(document): not valid JSON: {error}"})
            return
        if problems := logic.intake_problems(namespace, document):
            log.warning("Refused request", subject=msg.subject, problems=list(problems))
            await self._reply(msg, {"error": "; ".join(problems)})
            return
        try:
            ack = await self._nc.jetstream().publish(
                ClusterRequested.subject, msg.data, timeout=self._timeout_s, headers={"Nats-Msg-Id": document["id"]}
            )
        except Exception as error:  # noqa: BLE001 - the requester is told; it may send the same id again
            await self._reply(msg, {"error": f"not stored: {type(error).__name__}: {error}"})
            return
        await self._reply(msg, {"stored": True, "duplicate": bool(ack.duplicate), "id": document["id"]})

    @staticmethod
    async def _reply(msg: Msg, answer: dict[str, Any]) -> None:
        if msg.reply:
            await msg.respond(json.dumps(answer).encode())
