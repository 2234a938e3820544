from __future__ import annotations

import pytest

from services.gateway.settings import GatewaySettings


def test_settings_come_from_the_gateway_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VK8S_GATEWAY_NATS_URL", "nats://nats.vk8s:4222")
    monkeypatch.setenv("VK8S_GATEWAY_KUBECONFIG", "/etc/vk8s/kubeconfig")
    monkeypatch.setenv("VK8S_GATEWAY_HOST_CIDRS", '["10.42.0.0/16", "10.43.0.0/16"]')
    settings = GatewaySettings()
    assert settings.nats_url == "nats://nats.vk8s:4222"
    assert settings.kubeconfig == "/etc/vk8s/kubeconfig"
    assert settings.host_cidrs == ("10.42.0.0/16", "10.43.0.0/16")
    assert settings.kv_bucket == "vk8s-gateway"
