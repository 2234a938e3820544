from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.bootstrap import logic
from vk8s.testbed import lifecycle

NETWORK = logic.ClusterNetwork("10.200.0.2", "90.244.0.0/16", "90.96.0.0/12")


def config(version: str, *, schedulable: bool = True) -> list[dict[str, Any]]:
    text = logic.kubeadm_init_config(
        kubeadm_version=version, node_name="master", network=NETWORK, cluster_name="team-a", schedulable_master=schedulable
    )
    return list(yaml.safe_load_all(text))


@pytest.mark.parametrize(
    ("version", "api"),
    [("v1.19.16", "v1beta2"), ("v1.21.14", "v1beta2"), ("v1.22.0", "v1beta3"), ("v1.30.14", "v1beta3"), ("v1.31.0", "v1beta4"), ("v1.36.3", "v1beta4")],
)
def test_api_version_follows_the_release(version: str, api: str) -> None:
    init, cluster, proxy = config(version)
    assert init["apiVersion"] == cluster["apiVersion"] == f"kubeadm.k8s.io/{api}"
    assert proxy["conntrack"] == {"maxPerCore": 0}, "a vNode's conntrack table is its host's"
    # Nothing is ever pulled: the node image carries every image (v1beta2 has no such field).
    assert init["nodeRegistration"].get("imagePullPolicy") == (None if api == "v1beta2" else "Never")
    assert cluster["kubernetesVersion"] == version
    args = init["nodeRegistration"]["kubeletExtraArgs"]
    assert args == ([{"name": "node-ip", "value": "10.200.0.2"}] if api == "v1beta4" else {"node-ip": "10.200.0.2"})


def test_config_pins_the_network_and_the_fixed_ip() -> None:
    init, cluster, _ = config("v1.36.3", schedulable=False)
    assert init["localAPIEndpoint"] == {"advertiseAddress": "10.200.0.2", "bindPort": 6443}
    assert cluster["networking"]["podSubnet"] == "90.244.0.0/16"
    assert cluster["networking"]["serviceSubnet"] == "90.96.0.0/12"
    assert cluster["controlPlaneEndpoint"] == "10.200.0.2:6443"
    assert "10.200.0.2" in cluster["apiServer"]["certSANs"]
    assert "taints" not in init["nodeRegistration"]  # workers exist: the master keeps kubeadm's taint
    assert config("v1.36.3")[0]["nodeRegistration"]["taints"] == []


@pytest.mark.parametrize(("version", "ignored"), [("v1.20.15", True), ("v1.34.12", False), ("v1.36.3", False)])
def test_only_kubeadm_1_20_skips_its_broken_proxy_cidr_check(version: str, ignored: bool) -> None:
    checks = config(version)[0]["nodeRegistration"]["ignorePreflightErrors"]
    assert checks[: len(logic.PREFLIGHT_IGNORED)] == list(logic.PREFLIGHT_IGNORED)
    assert ("HTTPProxyCIDR" in checks) is ignored


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


def containers(document: dict[str, Any]) -> list[dict[str, Any]]:
    spec = document["spec"]["template"]["spec"] if "template" in document.get("spec", {}) else document["spec"]
    return spec.get("initContainers", []) + spec["containers"]


def workloads(manifest: str) -> list[dict[str, Any]]:
    """The pod-making objects of a manifest, with the helper pod that local-path's ConfigMap holds."""
    found = []
    for document in yaml.safe_load_all(manifest):
        if document["kind"] in ("DaemonSet", "Deployment"):
            found.append(document)
        if document["kind"] == "ConfigMap" and "helperPod.yaml" in document["data"]:
            found.append(yaml.safe_load(document["data"]["helperPod.yaml"]))
    return found


def addon_manifests(version: str) -> list[str]:
    return [
        logic.cni_manifest(version, "90.244.0.0/16", "90.96.0.0/12"),
        logic.device_plugin_manifest(version),
        logic.storage_manifest(version),
    ]


@pytest.mark.parametrize("version", ["1.20", "1.25", "v1.36.3"])
def test_addon_images_are_the_locally_built_ones_and_never_pulled(version: str) -> None:
    images = logic.addon_images(version)
    pinned = {images.netd, images.device_plugin, images.storage_provisioner, images.storage_helper}
    used = [c for manifest in addon_manifests(version) for w in workloads(manifest) for c in containers(w)]
    assert {c["image"] for c in used} == pinned
    assert all(image.startswith("vk8s.local/") for image in pinned)
    assert {c["imagePullPolicy"] for c in used} == {"Never"}


def test_netd_gets_the_cluster_cidrs_and_runs_on_every_node() -> None:
    documents = list(yaml.safe_load_all(logic.cni_manifest("1.36", "90.244.0.0/16", "90.96.0.0/12")))
    assert [d["kind"] for d in documents] == ["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "DaemonSet"]
    assert documents[1]["rules"] == [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]}]
    pod = documents[3]["spec"]["template"]["spec"]
    assert pod["hostNetwork"] and pod["tolerations"] == [{"operator": "Exists"}]
    assert pod["serviceAccountName"] == documents[0]["metadata"]["name"] == "vk8s-netd"
    [container] = pod["containers"]
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}
    assert env == {
        "NODE_NAME": {"fieldRef": {"fieldPath": "spec.nodeName"}},
        "POD_CIDR": "90.244.0.0/16",
        "SERVICE_CIDR": "90.96.0.0/12",
    }
    assert container["securityContext"] == {"privileged": True}
    assert {v["hostPath"]["path"] for v in pod["volumes"]} == {"/etc/cni/net.d", "/opt/cni/bin", "/run/xtables.lock"}


def test_the_gpu_plugin_readvertises_the_vnodes_gpus() -> None:
    [plugin] = yaml.safe_load_all(logic.device_plugin_manifest("1.36"))
    pod = plugin["spec"]["template"]["spec"]
    assert pod["hostPID"]  # PID 1 is the vNode's init, whose environment names its GPUs
    assert pod["containers"][0]["args"] == ["--from-env", "NVIDIA_VISIBLE_DEVICES", "--environ", "/proc/1/environ"]
    mounts = {m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert mounts == {"/var/lib/kubelet/device-plugins", "/dev"}


def test_local_path_is_the_default_storage_class() -> None:
    documents = list(yaml.safe_load_all(logic.storage_manifest("1.36")))
    [storage_class] = [d for d in documents if d["kind"] == "StorageClass"]
    assert storage_class["metadata"]["annotations"] == {"storageclass.kubernetes.io/is-default-class": "true"}
    assert storage_class["volumeBindingMode"] == "WaitForFirstConsumer"
    assert storage_class["provisioner"] == "rancher.io/local-path"
    [config] = [d for d in documents if d["kind"] == "ConfigMap"]
    paths = json.loads(config["data"]["config.json"])["nodePathMap"]
    assert paths == [{"node": "DEFAULT_PATH_FOR_NON_LISTED_NODES", "paths": ["/var/lib/vk8s-node/local-path"]}]
    assert 'mkdir -m 0777 -p "${VOL_DIR}"' in config["data"]["setup"]
    assert 'rm -rf "${VOL_DIR}"' in config["data"]["teardown"]
    cluster_wide = ("Namespace", "ClusterRole", "ClusterRoleBinding", "StorageClass")
    assert {d["metadata"].get("namespace") for d in documents if d["kind"] not in cluster_wide} == {"local-path-storage"}


def test_join_command_becomes_a_node_join() -> None:
    args = logic.join_args(
        "W1128 warning\nkubeadm join 10.200.0.2:6443 --token abc.def --discovery-token-ca-cert-hash sha256:00ff\n", "worker-0"
    )
    assert args[:4] == ["vk8s-node", "join", "--", "10.200.0.2:6443"]
    assert "--token" in args and "--node-name=worker-0" in args and args[-1].startswith("--ignore-preflight-errors=")
    with pytest.raises(ValueError, match="not a kubeadm join"):
        logic.join_args("error: token expired", "worker-0")


def test_the_version_is_what_the_api_server_reports() -> None:
    answer = '{\n  "major": "1",\n  "minor": "36",\n  "gitVersion": "v1.36.3",\n  "platform": "linux/amd64"\n}'
    assert logic.server_version(answer) == "v1.36.3"
    for bad in ("", "error: the server is unavailable", '{"major": "1"}', '{"gitVersion": "1.36"}'):
        with pytest.raises(ValueError):
            logic.server_version(bad)


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


@pytest.mark.parametrize(
    ("step", "metric"),
    [("cni-write", "cni"), ("cni", "cni"), ("join-command-worker-1", "join-command"), ("kubeadm-join", "kubeadm-join")],
)
def test_metric_steps_have_a_fixed_set_of_names(step: str, metric: str) -> None:
    assert logic.metric_step(step) == metric
    assert metric in logic.METRIC_STEPS


def test_step_failures_lose_secrets_before_they_are_shortened() -> None:
    token = "abcdef.0123456789abcdef"
    argv = ["vk8s-node", "join", "--", "10.0.0.2:6443", "--token", token, "--certificate-key=" + "f" * 64]
    # A cut at 300 characters would leave part of a token behind: redaction comes first.
    text = "x" * 290 + f" joining with {token} and {'f' * 64}"
    assert logic.step_failure(text, argv) == ("x" * 290 + " joining with <redacted> and <redacted>")[:300]
    url = "url='wss://127.0.0.1:6443/api/v1/namespaces/n/pods/p/exec?command=sh&command=--token&command=x'"
    assert logic.step_failure(url, []) == "url='wss://127.0.0.1:6443/api/v1/namespaces/n/pods/p/exec?<redacted>'"
    assert logic.step_failure("kubeadm printed: kubeadm join --token ghijkl.0123456789abcdef", []) == (
        "kubeadm printed: kubeadm join --token <redacted>"
    )
    assert logic.step_failure("exit 1: br_netfilter missing", argv) == "exit 1: br_netfilter missing"


def vnode_objects(uid: str = "uid-1", vnode: str = "master") -> tuple[dict[str, Any], dict[str, Any]]:
    """A vNode pod and its StatefulSet as the API server has them."""
    labels = {"vk8s.skt.co.kr/cluster-uid": uid, "vnode": vnode}
    statefulset = {
        "metadata": {"name": f"c-{vnode}", "namespace": "vk8s-platform", "uid": "set-1", "labels": dict(labels)}
    }
    pod = {
        "metadata": {
            "name": f"c-{vnode}-0", "namespace": "vk8s-platform", "labels": dict(labels),
            "ownerReferences": [
                {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": f"c-{vnode}", "uid": "set-1", "controller": True}
            ],
        }
    }  # fmt: skip
    return pod, statefulset


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (lambda pod, sts: None, None),
        (lambda pod, sts: pod["metadata"]["labels"].update(vnode="worker-0"), "its labels do not name vNode 'master'"),
        (lambda pod, sts: pod["metadata"]["labels"].clear(), "its labels do not name vNode 'master'"),
        (lambda pod, sts: pod["metadata"].pop("ownerReferences"), "it is not run by a StatefulSet"),
        (lambda pod, sts: pod["metadata"]["ownerReferences"][0].update(kind="Job", apiVersion="batch/v1"),
         "it is not run by a StatefulSet"),
        (lambda pod, sts: sts["metadata"].update(uid="set-2"), "its StatefulSet 'c-master' is gone"),
        (lambda pod, sts: sts["metadata"]["labels"].update({"vk8s.skt.co.kr/cluster-uid": "uid-2"}),
         "its StatefulSet 'c-master' is not vNode 'master' of this cluster"),
        (lambda pod, sts: pod["metadata"].update(namespace="team-a"),
         "it is not in the cluster's platform namespace 'vk8s-platform'"),
        (lambda pod, sts: sts["metadata"].update(namespace="team-a"),
         "its StatefulSet 'c-master' is not in the cluster's platform namespace"),
    ],
)  # fmt: skip
def test_only_the_clusters_own_vnode_pod_qualifies_for_exec(change: Any, why: str | None) -> None:
    pod, statefulset = vnode_objects()
    change(pod, statefulset)
    found = logic.foreign_pod(pod, statefulset, cluster_uid="uid-1", vnode="master", namespace="vk8s-platform")
    assert found == why if why is None else found is not None and found.startswith(why)
    assert logic.foreign_pod(pod, None, cluster_uid="uid-1", vnode="master", namespace="vk8s-platform") is not None
