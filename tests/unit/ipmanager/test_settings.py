from __future__ import annotations

from ipaddress import ip_network
from typing import Any

import pytest
from pydantic import ValidationError

from services.ipmanager.settings import IpManagerSettings


def test_networks_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VK8S_IPMANAGER_HOST_NODE_CIDRS", "192.168.0.0/16, 10.10.0.0/16")
    monkeypatch.setenv("VK8S_IPMANAGER_HOST_POD_CIDRS", '["10.42.0.0/16", "fd00:42::/56"]')
    monkeypatch.setenv("VK8S_IPMANAGER_VNODE_IP_POOL", "10.43.0.0/24")
    settings = IpManagerSettings()
    assert settings.host_node_cidrs == (ip_network("192.168.0.0/16"), ip_network("10.10.0.0/16"))
    assert settings.host_pod_cidrs == (ip_network("10.42.0.0/16"), ip_network("fd00:42::/56"))
    reserved: dict[str, list[str]] = {r.what: [] for r in settings.network_layout().reserved}
    for r in settings.network_layout().reserved:
        reserved[r.what].append(str(r.network))
    assert reserved["the vNode IP pool"] == ["10.43.0.0/24"]
    assert settings.address_pool().size == 254


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"vnode_ip_pool": "10.0.0.0/15"}, "larger than /16"),
        ({"pod_cidr_pool": "100.64.0.0/16", "pod_cidr_prefix": 12}, "larger than pod_cidr_pool"),
        ({"service_cidr_pool": "10.0.0.0/8", "service_cidr_prefix": 28}, "more than 65536 /28 blocks"),
    ],
)
def test_pools_are_checked(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        IpManagerSettings(**fields)
