"""Projector settings come from VK8S_PROJECTOR_* variables."""

from __future__ import annotations

import pytest

from services.projector.settings import ProjectorSettings


def test_settings_from_the_projector_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VK8S_PROJECTOR_NATS_URL", "nats://nats.vk8s-system:4222")
    monkeypatch.setenv("VK8S_PROJECTOR_KV_BUCKET", "clusters")
    monkeypatch.setenv("VK8S_NATS_URL", "nats://not-for-the-projector:4222")
    settings = ProjectorSettings()
    assert settings.nats_url == "nats://nats.vk8s-system:4222"
    assert (settings.kv_bucket, settings.durable) == ("clusters", "projector")
    # A projection error must not run out of retries quickly: that would publish cluster.failed.
    assert settings.max_deliver >= 1000
