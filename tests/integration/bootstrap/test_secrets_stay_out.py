"""Join tokens never leave the bootstrap stage in text, whatever the name lengths: a join step
whose exec fails at the handshake (the pod is gone) against the testbed's real API server."""

from __future__ import annotations

import pytest
import structlog
from kubernetes.aio import client

from libs.events import PermanentError
from services.bootstrap import logic, workflow
from services.bootstrap.adapters.node_exec import NodeExec

TOKEN = "abcdef.0123456789abcdef"
CERTIFICATE_KEY = "f" * 64
JOIN = f"kubeadm join 10.0.0.2:6443 --token {TOKEN} --discovery-token-ca-cert-hash sha256:{'a' * 64}"


def target(namespace: str, pod: str) -> workflow.VNodeTarget:
    return workflow.VNodeTarget(
        vnode="w", role="worker", namespace=namespace, pod=pod, ip="10.0.0.3", gpus=0, cpu_limit="1", memory_limit="1Gi"
    )


async def test_the_exec_error_carries_the_join_token_for_short_names(kube_api: client.ApiClient, namespace: str) -> None:
    """Where the leak came from: the handshake error names the exec URL, whose query is the command line."""
    argv = logic.via_shell(logic.join_args(JOIN, "w"))
    with pytest.raises(Exception) as error:  # whatever the websocket client raises
        await NodeExec(kube_api, "vnode", timeout_s=30).run(namespace, "p", argv)
    assert TOKEN in str(error.value)


@pytest.mark.parametrize("pod", ["p", "a-pod-name-of-fifty-characters-long-0123456789abcd"])
async def test_a_failed_join_says_why_without_the_token_in_events_or_logs(
    kube_api: client.ApiClient, namespace: str, pod: str
) -> None:
    published: list[str] = []

    async def progress(step: workflow.StepProgress) -> None:
        published.append(f"{step.vnode} {step.step} {step.status} {step.message} {step.attempt}")

    runner = workflow.StepRunner(NodeExec(kube_api, "vnode", timeout_s=30), progress, attempts=2, backoff_s=0.01)
    argv = [*logic.join_args(JOIN, "w"), f"--certificate-key={CERTIFICATE_KEY}"]
    with structlog.testing.capture_logs() as logs, pytest.raises(PermanentError) as failed:
        await runner.run(target(namespace, pod), "kubeadm-join", argv)

    texts = [*published, str(failed.value), *(repr(entry) for entry in logs)]
    assert "step kubeadm-join failed after 2 attempts" in str(failed.value)
    assert f"/pods/{pod}/exec?<redacted>" in str(failed.value), "the message still says what failed"
    for text in texts:
        assert TOKEN not in text and CERTIFICATE_KEY not in text and "abcdef." not in text, text
