"""An exec the API server does not start (429, 500, a reset before the websocket opens) is the
API server's trouble: the step's tries are not spent, the message is retried later."""

from __future__ import annotations

import aiohttp
import pytest
from kubernetes.aio import client

from libs.events import TransientError
from services.bootstrap import logic, workflow
from services.bootstrap.adapters.node_exec import ExecUnavailable, NodeExec
from tests.integration.bootstrap.test_secrets_stay_out import JOIN, TOKEN, target
from tests.support.apiserver_faults import ApiserverFaultProxy


async def test_refused_execs_are_unavailable_not_failed(
    faulty_api: tuple[ApiserverFaultProxy, client.ApiClient], namespace: str
) -> None:
    proxy, api = faulty_api
    node_exec = NodeExec(api, "vnode", timeout_s=30)
    proxy.inject(60)
    # The proxy's first two faults of a period (a reset, the third, aiohttp retries at once).
    for _ in range(2):
        with pytest.raises(ExecUnavailable):
            await node_exec.run(namespace, "p", ["true"])
    assert proxy.injected["429"] == proxy.injected["500"] == 1, proxy.injected
    proxy.inject(0)
    with pytest.raises(aiohttp.WSServerHandshakeError) as missing:  # passed on: no such pod
        await node_exec.run(namespace, "p", ["true"])
    assert missing.value.status == 404


async def test_a_step_the_api_server_refuses_is_retried_later_and_says_no_secret(
    faulty_api: tuple[ApiserverFaultProxy, client.ApiClient], namespace: str
) -> None:
    proxy, api = faulty_api
    tries: list[str] = []

    async def progress(step: workflow.StepProgress) -> None:
        tries.append(step.status)

    runner = workflow.StepRunner(NodeExec(api, "vnode", timeout_s=30), progress, attempts=3, backoff_s=0.01)
    proxy.inject(60)
    with pytest.raises(TransientError) as unavailable:
        await runner.run(target(namespace, "p"), "kubeadm-join", logic.join_args(JOIN, "w"))
    assert tries == ["Running"], "no try spent, no failure reported"
    assert unavailable.value.reason == "ExecUnavailable"
    assert "429" in str(unavailable.value) and TOKEN not in str(unavailable.value)
