"""An exec the API server does not start (429, 500, a reset before the websocket opens) is the
API server's trouble: the step's tries are not spent, the message is retried later. One cut
while its command runs has no exit status: a failed try, never a success."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from kubernetes.aio import client

from libs.events import TransientError
from services.bootstrap import logic, workflow
from services.bootstrap.adapters.node_exec import ExecInterrupted, ExecUnavailable, NodeExec
from tests.integration.bootstrap.test_secrets_stay_out import JOIN, TOKEN, target
from tests.support.apiserver_faults import ApiserverFaultProxy
from tests.support.wait import eventually
from vk8s.testbed.config import FAKE_NODE_ANNOTATION


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


async def test_an_exec_cut_mid_command_is_not_taken_for_success(
    faulty_api: tuple[ApiserverFaultProxy, client.ApiClient], kube_api: client.ApiClient, namespace: str
) -> None:
    """The connection goes while the command runs: no exit status came, so it did not succeed
    (it was taken for exit 0, and a half-done `prepare` for a prepared node)."""
    proxy, api = faulty_api
    core = client.CoreV1Api(kube_api)
    key, value = FAKE_NODE_ANNOTATION
    node = next(n.metadata.name for n in (await core.list_node()).items if n.metadata.annotations.get(key) == value)
    pod = {
        "metadata": {"name": "vnode-0"},
        "spec": {"nodeName": node, "containers": [{"name": "vnode", "image": "registry.invalid/vk8s/kink:1"}]},
    }
    await core.create_namespaced_pod(namespace, pod)

    async def running() -> bool:
        return (await core.read_namespaced_pod("vnode-0", namespace)).status.phase == "Running"

    await eventually(running, "the pod to run", timeout=60)
    node_exec = NodeExec(api, "vnode", timeout_s=60)
    assert (await node_exec.run(namespace, "vnode-0", ["true"])).exit_code == 0
    cut = asyncio.create_task(node_exec.run(namespace, "vnode-0", ["sleep", "10"]))
    await asyncio.sleep(2)
    proxy.inject(0)  # resets the open connections, the exec's among them
    with pytest.raises(ExecInterrupted):
        await cut
