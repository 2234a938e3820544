"""Pure parts of the real tier: the proxy's target check and the IPAM plugin's decisions."""

from __future__ import annotations

import json
import os
import shutil
from ipaddress import IPv4Network
from pathlib import Path

import pytest
from click.testing import CliRunner

from vk8s.commands import testbed as testbed_cli
from vk8s.testbed import lifecycle
from vk8s.testbed.config import HOST_POD_NETWORK, NODE_NETWORK, VNODE_IP_POOL, FleetSpec
from vk8s.testbed.real import cni_ipam
from vk8s.testbed.real.forwarder import ProxyRefused, connect_target

TESTBED = (NODE_NETWORK, HOST_POD_NETWORK, VNODE_IP_POOL)


def test_the_proxy_reaches_addresses_inside_the_testbed_only() -> None:
    assert connect_target("CONNECT 10.250.0.7:6443 HTTP/1.1", TESTBED) == ("10.250.0.7", 6443)
    for line in ("CONNECT 127.0.0.1:22 HTTP/1.1", "CONNECT example.org:443 HTTP/1.1", "GET / HTTP/1.1"):
        with pytest.raises(ProxyRefused):
            connect_target(line, TESTBED)


def test_a_fixed_address_must_be_one_host_of_the_vnode_pool() -> None:
    pool = IPv4Network("10.250.0.0/22")
    assert str(cni_ipam.fixed_address(json.dumps(["10.250.1.9"]), pool)) == "10.250.1.9"
    assert cni_ipam.fixed_address(None, pool) is None
    for bad in (["10.244.1.9"], ["10.250.0.1"], ["10.250.0.0"], ["10.250.1.9", "10.250.1.10"], "x"):
        with pytest.raises(cni_ipam.PluginError):
            cni_ipam.fixed_address(json.dumps(bad), pool)


def test_pods_learn_their_pod_from_cni_args() -> None:
    args = "IgnoreUnknown=1;K8S_POD_NAMESPACE=team-a;K8S_POD_NAME=demo-master-0;K8S_POD_UID=u"
    assert cni_ipam.pod_of(args) == ("team-a", "demo-master-0")
    with pytest.raises(cni_ipam.PluginError):
        cni_ipam.pod_of("IgnoreUnknown=1")


def test_real_nodes_get_disjoint_addresses_and_pod_ranges() -> None:
    fleet = FleetSpec(nodes=8, runtime="real")
    ranges = [fleet.pod_range(index) for index in range(fleet.nodes)]
    assert len({fleet.node_address(index) for index in range(fleet.nodes)}) == fleet.nodes
    assert all(r.subnet_of(HOST_POD_NETWORK) and not r.overlaps(VNODE_IP_POOL) for r in ranges)
    assert len(set(ranges)) == fleet.nodes
    with pytest.raises(ValueError, match="at most 8"):
        FleetSpec(nodes=9, runtime="real")


def test_a_machine_that_cannot_run_the_real_tier_gets_one_line_and_nothing_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shutil, "which", lambda tool: None if tool == "runc" else f"/usr/bin/{tool}")
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(lifecycle, "ensure_binaries", lambda: tmp_path / "bin")
    state = tmp_path / "state"

    result = CliRunner().invoke(testbed_cli.testbed_command, ["up", "--runtime", "real", "--detach", f"--state-dir={state}"])

    assert result.exit_code == 1
    [line] = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert "cannot run the real tier: missing runc" in line and "`--runtime kwok` works here" in line
    assert not state.exists() or not any(state.iterdir())
