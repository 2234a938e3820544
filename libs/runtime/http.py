"""The operator endpoints of every service: /metrics, /healthz, /readyz (plus routes a service adds)."""

from __future__ import annotations

import asyncio
import hmac
import inspect
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import SecretStr

ReadinessCheck = Callable[[], bool | Awaitable[bool]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _unauthorized(reason: str) -> web.Response:
    return web.json_response({"error": reason}, status=401, headers={"WWW-Authenticate": "Bearer"})


class OperatorServer:
    def __init__(self, registry: CollectorRegistry, host: str, port: int):
        self._registry = registry
        self._host = host
        self._port = port
        self._checks: dict[str, ReadinessCheck] = {}
        self.app = web.Application()
        self.app.router.add_get("/metrics", self._metrics)
        self.app.router.add_get("/healthz", self._healthz)
        self.app.router.add_get("/readyz", self._readyz)
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    def require_token(self, prefix: str, token: SecretStr | None, setting: str) -> None:
        """Paths under `prefix` answer only requests with `Authorization: Bearer <token>`; with no
        token configured they answer none (401 naming `setting`). The operator endpoints stay open."""

        @web.middleware
        async def bearer_token(request: web.Request, handler: Handler) -> web.StreamResponse:
            if not request.path.startswith(prefix):
                return await handler(request)
            if token is None or not token.get_secret_value():
                return _unauthorized(f"this API is disabled: {setting} is not set")
            scheme, _, given = request.headers.get("Authorization", "").partition(" ")
            expected = token.get_secret_value().encode()
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected):
                return _unauthorized("a bearer token is required (Authorization: Bearer <token>)")
            return await handler(request)

        self.app.middlewares.append(bearer_token)

    def add_readiness_check(self, name: str, check: ReadinessCheck) -> None:
        self._checks[name] = check

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        server = site._server  # the bound port, when 0 asked for any free one
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else self._port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _metrics(self, _: web.Request) -> web.Response:
        body = generate_latest(self._registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, _: web.Request) -> web.Response:
        # Answering at all proves the event loop is not wedged.
        return web.json_response({"status": "ok"})

    async def _readyz(self, _: web.Request) -> web.Response:
        results: dict[str, bool] = {}
        for name, check in self._checks.items():
            try:
                outcome = check()
                if inspect.isawaitable(outcome):
                    outcome = await asyncio.wait_for(outcome, timeout=2.0)
                results[name] = bool(outcome)
            except Exception:  # noqa: BLE001 - a failing check means not ready
                results[name] = False
        ready = all(results.values())
        return web.json_response({"ready": ready, "checks": results}, status=200 if ready else 503)
