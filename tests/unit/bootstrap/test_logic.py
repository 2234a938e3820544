from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from services.bootstrap import logic
from vk8s.testbed import lifecycle

NETWORK = logic.ClusterNetwork("10.200.0.2", "90.244.0.0/16", "90.96.0.0/12")


def config(version: str, *, schedulable: bool = True) -> list[dict]:
    text = logic.kubeadm_init_config(
        kubeadm_version=version, node_name="master", network=NETWORK, cluster_name="team-a", schedulable_master=schedulable
    )
    return list(yaml.safe_load_all(text))


@pytest.mark.parametrize(
    ("version", "api"),
    [("v1.19.16", "v1beta2"), ("v1.21.14", "v1beta2"), ("v1.22.0", "v1beta3"), ("v1.30.14", "v1beta3"), ("v1.31.0", "v1beta4"), ("v1.36.3", "v1beta4")],
)
def test_api_version_follows_the_release(version: str, api: str) -> None:
    init, cluster = config(version)
    assert init["apiVersion"] == cluster["apiVersion"] == f"kubeadm.k8s.io/{api}"
    assert cluster["kubernetesVersion"] == version
    args = init["nodeRegistration"]["kubeletExtraArgs"]
    assert args == ([{"name": "node-ip", "value": "10.200.0.2"}] if api == "v1beta4" else {"node-ip": "10.200.0.2"})


def test_config_pins_the_network_and_the_fixed_ip() -> None:
    init, cluster = config("v1.36.3", schedulable=False)
    assert init["localAPIEndpoint"] == {"advertiseAddress": "10.200.0.2", "bindPort": 6443}
    assert cluster["networking"]["podSubnet"] == "90.244.0.0/16"
    assert cluster["networking"]["serviceSubnet"] == "90.96.0.0/12"
    assert cluster["controlPlaneEndpoint"] == "10.200.0.2:6443"
    assert "10.200.0.2" in cluster["apiServer"]["certSANs"]
    assert "taints" not in init["nodeRegistration"]  # workers exist: the master keeps kubeadm's taint
    assert config("v1.36.3")[0]["nodeRegistration"]["taints"] == []


def test_too_old_releases_are_refused() -> None:
    with pytest.raises(ValueError, match="predates"):
        logic.kubeadm_api_version("v1.14.10")
    with pytest.raises(ValueError, match="not a Kubernetes"):
        logic.minor("2.0")


@pytest.mark.parametrize("version", ["v1.35.0", "v1.36.3"])
def test_real_kubeadm_validates_the_generated_config(version: str, tmp_path: Path) -> None:
    """`kubeadm config validate` of the testbed's kubeadm (v1.36, which accepts control planes
    of v1.35 and v1.36) on what bootstrap writes for those releases."""
    kubeadm = lifecycle.ensure_binaries() / "kubeadm"
    path = tmp_path / "kubeadm.yaml"
    path.write_text(
        logic.kubeadm_init_config(
            kubeadm_version=version, node_name="master", network=NETWORK, cluster_name="team-a", schedulable_master=True
        )
    )
    result = subprocess.run([str(kubeadm), "config", "validate", "--config", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout
    broken = path.read_text().replace("podSubnet: 90.244.0.0/16", "podSubnet: 90.244.0.0/99")
    path.write_text(broken)
    refused = subprocess.run([str(kubeadm), "config", "validate", "--config", str(path)], capture_output=True, text=True)
    assert refused.returncode != 0
    assert "podSubnet" in refused.stderr or "90.244.0.0/99" in refused.stderr


@pytest.mark.parametrize("version", ["1.20", "1.25", "1.36"])
def test_addon_manifests_are_pinned_and_rendered(version: str) -> None:
    cni = list(yaml.safe_load_all(logic.cni_manifest(version, "90.244.0.0/16")))
    kinds = [d["kind"] for d in cni]
    assert kinds == ["Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ConfigMap", "DaemonSet"]
    assert '"Network": "90.244.0.0/16"' in cni[4]["data"]["net-conf.json"]
    images = [c["image"] for d in cni if d["kind"] == "DaemonSet" for c in d["spec"]["template"]["spec"]["initContainers"] + d["spec"]["template"]["spec"]["containers"]]
    assert all(":" in image and not image.endswith(":latest") for image in images)
    assert "--iface=eth0" in cni[5]["spec"]["template"]["spec"]["containers"][0]["args"]
    masq = list(yaml.safe_load_all(logic.ip_masq_manifest("90.244.0.0/16", "90.96.0.0/12")))
    assert "- 90.96.0.0/12" in masq[0]["data"]["config"]
    [plugin] = yaml.safe_load_all(logic.device_plugin_manifest(version))
    assert "gpus.json" in plugin["spec"]["template"]["spec"]["containers"][0]["command"][2]


def test_join_command_becomes_a_node_join() -> None:
    args = logic.join_args("W1128 warning\nkubeadm join 10.200.0.2:6443 --token abc.def --discovery-token-ca-cert-hash sha256:00ff\n")
    assert args[:4] == ["vk8s-node", "join", "--", "10.200.0.2:6443"]
    assert "--token" in args and args[-1].startswith("--ignore-preflight-errors=")
    with pytest.raises(ValueError, match="not a kubeadm join"):
        logic.join_args("error: token expired")


def test_node_state_parses_the_last_line() -> None:
    state = logic.NodeState.parse('noise\n{"initialized": true, "joined": false, "kubeletActive": true, "prepared": true, "kubernetesVersion": "v1.36.3"}\n')
    assert state.initialized and state.prepared and not state.joined
    assert state.kubernetes_version == "v1.36.3"


def test_files_travel_as_base64_arguments() -> None:
    argv = logic.write_command("etc/vk8s/x.yaml", "a: 'quoted' $HOME\n")
    out = subprocess.run([*argv[:2], argv[2].replace("vk8s-node write etc/vk8s/x.yaml", "cat"), *argv[3:]], capture_output=True, text=True)
    assert out.stdout == "a: 'quoted' $HOME\n"


def test_node_commands_run_through_the_vnode_shell() -> None:
    argv = logic.via_shell(["vk8s-node", "state"])
    assert argv[:3] == ["sh", "-c", 'exec "$0" "$@"']
    out = subprocess.run([*argv[:3], "echo", "a b", "c"], capture_output=True, text=True)
    assert out.stdout == "a b c\n"
    written = logic.write_command("x", "y")
    assert logic.via_shell(written) == written
