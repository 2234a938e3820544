"""The environment the `vk8s` CLI and kubectl run in against a stack that `vk8s up` started."""

from __future__ import annotations

import os
from pathlib import Path

from vk8s.local import stack

ROOT = Path(__file__).resolve().parents[2]


def cli_env(info: stack.StackInfo) -> dict[str, str]:
    """The stack's kubeconfig and NATS requester credentials, with this checkout's venv first on PATH."""
    return {
        **os.environ,
        "KUBECONFIG": info.kubeconfig,
        "NATS_URL": info.nats_url,
        "NATS_USER": info.nats_user,
        "NATS_PASSWORD": info.nats_password,
        "PATH": f"{ROOT / '.venv/bin'}:{os.environ['PATH']}",
    }
