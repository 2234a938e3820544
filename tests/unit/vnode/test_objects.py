"""The objects the vnode stage builds for a placed cluster, field by field."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from libs.events import PermanentError, TransientError
from libs.kube import vnodes
from libs.kube.vnodes import MAX_STATEFULSET_NAME, platform_namespace
from services.vnode import logic
from services.vnode.settings import VNodeSettings
from tests.unit.vnode.factories import UID, record

SETTINGS = VNodeSettings(storage_class="fast-local", state_volume_size="100Gi")


def objects(plan: logic.Plan) -> dict[tuple[str, str], dict[str, Any]]:
    return {(body["kind"], body["metadata"]["name"]): body for body in plan.apply}


def master_statefulset(rec: logic.ClusterRecord | None = None) -> dict[str, Any]:
    return objects(logic.plan(rec or record(), [], SETTINGS))["StatefulSet", "team-a-master"]


def test_names_are_unique_per_cluster_and_bounded() -> None:
    assert vnodes.statefulset_name("team-a", "master") == "team-a-master"
    assert vnodes.pod_name("team-a", "master") == "team-a-master-0"
    long = vnodes.statefulset_name("c" * 40, "worker-with-a-long-name")
    assert len(long) == MAX_STATEFULSET_NAME
    assert long != vnodes.statefulset_name("c" * 40, "worker-with-a-long-nam")
    assert logic.headless_service_name("team-a") == "team-a-vnodes"
    assert logic.headless_service_name("7team") == "vk8s-7team-vnodes"  # Services must start with a letter
    assert len(logic.access_name("a" * 63)) == 63


def test_one_statefulset_per_placed_vnode_plus_services_and_access_pod() -> None:
    plan = logic.plan(record(workers=2), [], SETTINGS)

    assert sorted(objects(plan)) == [
        ("Deployment", "team-a-access"),
        ("NetworkPolicy", "team-a-vnodes"),
        ("Service", "team-a-access"),
        ("Service", "team-a-ports"),
        ("Service", "team-a-vnodes"),
        ("StatefulSet", "team-a-master"),
        ("StatefulSet", "team-a-worker-0"),
        ("StatefulSet", "team-a-worker-1"),
    ]
    assert [body["kind"] for body in plan.apply[:2]] == ["NetworkPolicy", "Service"], "both exist before the pods"
    assert plan.namespace == platform_namespace("ml", "team-a") and plan.delete == ()


def test_vnode_pod_is_privileged_with_read_only_host_dirs_and_its_state_on_a_volume() -> None:
    template = master_statefulset()["spec"]["template"]["spec"]
    container = template["containers"][0]
    mounts = {mount["mountPath"]: mount for mount in container["volumeMounts"]}

    assert container["securityContext"] == {"privileged": True}
    assert container["image"] == "ghcr.io/vk8s/kink:v1.36"
    for path, volume in (("/lib/modules", "lib-modules"), ("/usr/src", "usr-src")):
        assert mounts[path] == {"name": volume, "mountPath": path, "readOnly": True}
        assert {"name": volume, "hostPath": {"path": path, "type": "Directory"}} in template["volumes"]
    assert mounts["/var/lib/vk8s-node"] == {"name": "node-state", "mountPath": "/var/lib/vk8s-node"}
    for path, sub_path in SETTINGS.node_state_dirs.items():
        assert mounts[path] == {"name": "node-state", "mountPath": path, "subPath": sub_path}
    assert template["automountServiceAccountToken"] is False


def test_node_state_claim_template_uses_the_storage_settings_and_names_the_host() -> None:
    spec = master_statefulset()["spec"]
    (claim,) = spec["volumeClaimTemplates"]

    assert claim["metadata"]["name"] == "node-state"
    assert claim["metadata"]["annotations"] == {"volume.kubernetes.io/selected-node": "gpu-node-0"}
    assert claim["metadata"]["labels"]["vk8s.skt.co.kr/cluster-uid"] == UID
    assert claim["spec"] == {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": "100Gi"}},
        "storageClassName": "fast-local",
    }
    assert spec["persistentVolumeClaimRetentionPolicy"] == {"whenDeleted": "Delete", "whenScaled": "Retain"}


def test_default_storage_class_is_left_to_the_host() -> None:
    (claim,) = logic.plan(record(), [], VNodeSettings()).apply[2]["spec"]["volumeClaimTemplates"]
    assert "storageClassName" not in claim["spec"]


def test_existing_claim_templates_are_kept_because_they_are_immutable() -> None:
    existing = ({"metadata": {"name": "node-state"}, "spec": {"resources": {"requests": {"storage": "20Gi"}}}},)
    current = [logic.CurrentStatefulSet("team-a-master", "team-a", "master", UID, existing)]

    bodies = objects(logic.plan(record(), current, SETTINGS))

    assert bodies["StatefulSet", "team-a-master"]["spec"]["volumeClaimTemplates"] == list(existing)
    assert bodies["StatefulSet", "team-a-worker-0"]["spec"]["volumeClaimTemplates"][0]["spec"]["resources"] == {
        "requests": {"storage": "100Gi"}
    }


def test_retain_annotation_keeps_volumes() -> None:
    retained = record(annotations={"vk8s.skt.co.kr/retain-volumes": "true"})
    assert master_statefulset(retained)["spec"]["persistentVolumeClaimRetentionPolicy"]["whenDeleted"] == "Retain"
    assert logic.retain_volumes(retained, default=False)
    assert not logic.retain_volumes(record(annotations={"vk8s.skt.co.kr/retain-volumes": "false"}), default=True)
    assert logic.retain_volumes(None, default=True)


def test_deletion_takes_retain_from_the_record_else_the_object_else_keeps_the_volumes() -> None:
    retained = {"vk8s.skt.co.kr/retain-volumes": "true"}
    assert logic.retain_volumes_on_delete(record(annotations=retained), None, default=False)
    assert not logic.retain_volumes_on_delete(record(), retained, default=False)  # the record decides
    assert logic.retain_volumes_on_delete(None, retained, default=False)
    assert not logic.retain_volumes_on_delete(None, {}, default=False)
    assert logic.retain_volumes_on_delete(None, None, default=False)  # a deletion that completed before


def test_gpu_requests_equal_limits_even_when_only_limits_are_asked() -> None:
    rec = record(gpus=1)
    nodes = [
        node.model_copy(update={"resources": node.resources.model_copy(update={"requests": {"cpu": "2"}})})
        for node in rec.spec.nodes
    ]
    rec = rec.model_copy(update={"spec": rec.spec.model_copy(update={"nodes": tuple(nodes)})})

    resources = master_statefulset(rec)["spec"]["template"]["spec"]["containers"][0]["resources"]

    assert resources == {
        "requests": {"cpu": "2", "nvidia.com/gpu": "1"},
        "limits": {"cpu": "4", "memory": "8Gi", "nvidia.com/gpu": "1"},
    }


def test_pod_is_pinned_to_the_chosen_host_with_its_fixed_ip() -> None:
    template = master_statefulset()["spec"]["template"]

    assert template["spec"]["nodeName"] == "gpu-node-0"
    assert "nodeSelector" not in template["spec"]
    assert template["metadata"]["annotations"] == {"cni.projectcalico.org/ipAddrs": '["10.200.0.2"]'}
    custom = VNodeSettings(ip_annotation="example.org/ip")
    annotations = logic.plan(record(), [], custom).apply[2]["spec"]["template"]["metadata"]["annotations"]
    assert annotations == {"example.org/ip": '["10.200.0.2"]'}


def test_tolerations_come_from_the_node_spec() -> None:
    assert master_statefulset()["spec"]["template"]["spec"]["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    worker = objects(logic.plan(record(), [], SETTINGS))["StatefulSet", "team-a-worker-0"]
    assert "tolerations" not in worker["spec"]["template"]["spec"]


def test_labels_include_the_vk8s_labels_but_ours_win() -> None:
    statefulset = master_statefulset()
    expected = {
        "app": "vk8s",
        "clusterName": "team-a",
        "role": "master",
        "vnode": "master",
        "sidecar.istio.io/inject": "false",
        "vk8s.skt.co.kr/cluster-uid": UID,
        "vk8s.skt.co.kr/tenant-namespace": "ml",
        "vk8s.skt.co.kr/component": "vnode",
    }

    assert statefulset["metadata"]["labels"] == {"team": "vision", **expected}
    assert statefulset["metadata"]["annotations"] == {"owner": "kim"}
    # Pod labels stay fixed: a label change on the Vk8s must not restart its vNodes.
    assert statefulset["spec"]["template"]["metadata"]["labels"] == expected
    selector = {"app": "vk8s", "clusterName": "team-a", "vnode": "master"}
    assert statefulset["spec"]["selector"] == {"matchLabels": selector}


def test_every_object_is_in_the_platform_namespace_labelled_for_the_vk8s_with_no_owner() -> None:
    """An owner reference to the Vk8s (in the tenant's namespace) would get the objects garbage-collected."""
    for body in logic.plan(record(), [], SETTINGS).apply:
        metadata = body["metadata"]
        assert "ownerReferences" not in metadata
        assert metadata["namespace"] == platform_namespace("ml", "team-a") != "ml"
        labels = metadata["labels"]
        assert (labels["vk8s.skt.co.kr/tenant-namespace"], labels["clusterName"]) == ("ml", "team-a")
        assert labels["vk8s.skt.co.kr/cluster-uid"] == UID


def test_statefulset_spec_shape() -> None:
    spec = master_statefulset()["spec"]
    assert spec["replicas"] == 1
    assert spec["serviceName"] == "team-a-vnodes"
    assert spec["podManagementPolicy"] == "Parallel"


def test_services() -> None:
    bodies = objects(logic.plan(record(), [], SETTINGS))
    headless, ports, access = (
        bodies["Service", "team-a-vnodes"]["spec"],
        bodies["Service", "team-a-ports"]["spec"],
        bodies["Service", "team-a-access"]["spec"],
    )

    assert headless == {
        "clusterIP": "None",
        "publishNotReadyAddresses": True,
        "selector": {"app": "vk8s", "clusterName": "team-a", "vk8s.skt.co.kr/component": "vnode"},
    }
    assert ports["type"] == "NodePort"
    assert ports["selector"]["role"] == "master"
    assert ports["ports"] == [{"protocol": "TCP", "name": "kubeflow", "port": 80, "targetPort": 8080}]
    assert access["ports"] == [{"name": "access", "port": 22, "targetPort": 22, "protocol": "TCP"}]
    assert access["selector"]["vk8s.skt.co.kr/component"] == "access"


def test_access_pod() -> None:
    rec = record()
    rec = rec.model_copy(update={"spec": rec.spec.model_copy(update={"access_pod_port": 2222})})
    deployment = objects(logic.plan(rec, [], SETTINGS))["Deployment", "team-a-access"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]

    assert deployment["spec"]["replicas"] == 1
    assert container["image"] == "registry.example/vk8s/access:1"
    assert container["ports"] == [{"name": "access", "containerPort": 2222, "protocol": "TCP"}]
    assert container["env"] == [{"name": "VK8S_API_SERVER", "value": "https://10.200.0.2:6443"}]


def test_objects_no_longer_asked_for_are_deleted() -> None:
    rec = record()
    rec = rec.model_copy(update={"spec": rec.spec.model_copy(update={"ports": (), "access_pod_image": None})})
    current = [logic.CurrentStatefulSet("team-a-worker-9", "team-a", "worker-9", UID, ())]

    plan = logic.plan(rec, current, SETTINGS)

    assert set(plan.delete) == {
        logic.ObjectRef("StatefulSet", "team-a-worker-9"),
        logic.ObjectRef("Service", "team-a-ports"),
        logic.ObjectRef("Deployment", "team-a-access"),
        logic.ObjectRef("Service", "team-a-access"),
    }
    assert {body["kind"] for body in plan.apply} == {"NetworkPolicy", "Service", "StatefulSet"}


def test_paused_cluster_has_zero_replicas() -> None:
    plan = logic.plan(record(paused=True, scaled_up=False), [], SETTINGS)
    assert {body["spec"]["replicas"] for body in plan.apply if "replicas" in body["spec"]} == {0}
    assert plan.placeholders == ()  # the scheduler's placeholders keep holding the room


def test_the_schedulers_placeholders_go_before_the_vnode_pods_start() -> None:
    plan = logic.plan(record(workers=1), [], SETTINGS)

    assert plan.placeholders == ("team-a-master-hold", "team-a-worker-0-hold")


def test_name_taken_by_another_cluster_is_refused() -> None:
    other = logic.CurrentStatefulSet("team-a-master", "team", "a-master", "other-uid", ())
    with pytest.raises(PermanentError, match="team-a-master"):
        logic.plan(record(), [other], SETTINGS)


def test_leftover_of_an_earlier_cluster_of_the_same_name_is_waited_for() -> None:
    earlier = logic.CurrentStatefulSet("team-a-master", "team-a", "master", "earlier-uid", ())
    with pytest.raises(TransientError):
        logic.plan(record(), [earlier], SETTINGS)


def test_node_without_image_and_version_is_a_permanent_error() -> None:
    rec = record()
    nodes = tuple(node.model_copy(update={"image": None}) for node in rec.spec.nodes)
    rec = rec.model_copy(update={"spec": rec.spec.model_copy(update={"nodes": nodes})})
    with pytest.raises(PermanentError, match="no image"):
        logic.plan(rec, [], SETTINGS)


def test_image_catalog_fills_in_a_missing_image() -> None:
    rec = record()
    nodes = tuple(node.model_copy(update={"image": None}) for node in rec.spec.nodes)
    kubernetes = rec.spec.kubernetes.model_copy(update={"version": "1.35"})
    rec = rec.model_copy(update={"spec": rec.spec.model_copy(update={"nodes": nodes, "kubernetes": kubernetes})})
    settings = VNodeSettings.model_validate({"image_catalog": {"repository": "mirror.local/kink"}})

    container = logic.plan(rec, [], settings).apply[2]["spec"]["template"]["spec"]["containers"][0]

    assert container["image"] == "mirror.local/kink:v1.35"


def test_minor_without_a_node_image_is_a_permanent_error() -> None:
    rec = record()
    nodes = tuple(node.model_copy(update={"image": None}) for node in rec.spec.nodes)
    kubernetes = rec.spec.kubernetes.model_copy(update={"version": "1.29"})
    rec = rec.model_copy(update={"spec": rec.spec.model_copy(update={"nodes": nodes, "kubernetes": kubernetes})})
    with pytest.raises(PermanentError, match=re.escape("no node image for Kubernetes 1.29; available: 1.20, 1.34")):
        logic.plan(rec, [], SETTINGS)


def test_record_round_trips_through_json() -> None:
    rec = record()
    assert logic.ClusterRecord.from_json(rec.to_json()) == rec
    assert json.loads(rec.to_json())["spec"]["nodes"][0]["name"] == "master"


def test_the_retries_of_an_allocation_outlast_the_resume_grace() -> None:
    assert VNodeSettings().resume_grace_s == 10  # defaults: 1+2+4+...+60 s over 7 retries
    with pytest.raises(ValueError, match=r"resume_grace_s: 10 s is not shorter than the 7 s"):
        VNodeSettings(max_deliver=4, backoff_base_s=1, backoff_max_s=60)
    assert VNodeSettings(max_deliver=4, backoff_base_s=1, backoff_max_s=60, resume_grace_s=6).max_deliver == 4


def test_the_ports_service_never_takes_a_node_port_from_the_spec_and_its_type_is_the_platforms() -> None:
    rec = record()
    # What a forged event could carry: validation refuses nodePort, this stage drops it.
    squatting = rec.spec.model_copy(update={"ports": (rec.spec.ports[0].model_copy(update={"node_port": 30080}),)})
    rec = rec.model_copy(update={"spec": squatting})
    settings = VNodeSettings(ports_service_type="LoadBalancer")

    ports = objects(logic.plan(rec, [], settings))["Service", "team-a-ports"]["spec"]

    assert ports["type"] == "LoadBalancer"
    assert ports["ports"] == [{"protocol": "TCP", "name": "kubeflow", "port": 80, "targetPort": 8080}]


def test_a_network_policy_goes_around_the_clusters_pods_before_they_run() -> None:
    kubeflow = {"from": [{"podSelector": {"matchLabels": {"app.kubernetes.io/component": "kubeflow"}}}]}
    settings = VNodeSettings(network_policy_ingress=[kubeflow])
    plan = logic.plan(record(), [], settings)

    first = plan.apply[0]
    assert (first["kind"], first["metadata"]["name"]) == ("NetworkPolicy", "team-a-vnodes")
    cluster = {"podSelector": {"matchLabels": {"app": "vk8s", "clusterName": "team-a"}}}
    assert first["spec"] == {
        **cluster,
        "policyTypes": ["Ingress", "Egress"],
        "ingress": [{"from": [cluster]}, kubeflow],
        "egress": [{"to": [cluster]}, {"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["169.254.169.254/32"]}}]}],
    }
    for body in plan.apply:  # every pod of the cluster is inside it
        if body["kind"] in ("StatefulSet", "Deployment"):
            assert cluster["podSelector"]["matchLabels"].items() <= body["spec"]["template"]["metadata"]["labels"].items()


def test_without_the_network_policy_setting_it_is_deleted() -> None:
    plan = logic.plan(record(), [], VNodeSettings(network_policy=False))

    assert "NetworkPolicy" not in {body["kind"] for body in plan.apply}
    assert logic.ObjectRef("NetworkPolicy", "team-a-vnodes") in plan.delete
