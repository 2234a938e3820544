"""The chart lints and renders, and what it renders holds the promises of docs/deploy.md."""

from __future__ import annotations

import base64
import importlib
import json
from pathlib import Path

import pytest
import yaml

from libs.api.images import ImagePolicy
from libs.events import STREAM_OWNER
from libs.runtime import ServiceSettings
from services.gateway.settings import GatewaySettings
from services.topology import BY_NAME
from services.topology import NAMES as SERVICES
from services.vnode.settings import VNodeSettings
from tests.unit.deploy.helm import (
    CHART_DIR,
    HELM_KUBE_VERSION,
    Manifest,
    by_component,
    helm,
    of_kind,
    render,
    template,
)

MESH_ON = {"mesh": {"enabled": True}}
TENANTS = {"rbac": {"tenantNamespaces": ["team-a", "team-b"]}}


@pytest.fixture(scope="module")
def default_manifests() -> list[Manifest]:
    return render()


@pytest.fixture(scope="module")
def mesh_manifests() -> list[Manifest]:
    return render(MESH_ON)


def container(deployment: Manifest) -> Manifest:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return only


def env_of(deployment: Manifest) -> dict[str, Manifest]:
    return {item["name"]: item for item in container(deployment)["env"]}


@pytest.mark.parametrize("values", [{}, MESH_ON], ids=["defaults", "mesh"])
def test_lint_is_clean(values: dict[str, object]) -> None:
    args = ["lint", "--strict", str(CHART_DIR)]
    for key, value in values.items():
        args += ["--set-json", f"{key}={json.dumps(value)}"]
    result = helm(*args, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_service_has_its_objects(default_manifests: list[Manifest]) -> None:
    for kind in ("Deployment", "Service", "ServiceAccount", "PodDisruptionBudget"):
        assert sorted(by_component(default_manifests, kind)) == sorted(SERVICES), kind


def test_the_crd_is_in_the_chart(default_manifests: list[Manifest]) -> None:
    (crd,) = of_kind(default_manifests, "CustomResourceDefinition")
    assert crd["metadata"]["name"] == "vk8s.vk8s.skt.co.kr"


def test_deployments_run_the_service_named_by_the_command(default_manifests: list[Manifest]) -> None:
    for name, deployment in by_component(default_manifests, "Deployment").items():
        assert container(deployment)["command"] == ["python", "-m", f"services.{name}"]
        assert deployment["spec"]["template"]["spec"]["serviceAccountName"].endswith(f"-{name}")


def test_deployments_have_resources_and_probes_on_the_operator_endpoints(default_manifests: list[Manifest]) -> None:
    for deployment in of_kind(default_manifests, "Deployment"):
        spec = container(deployment)
        assert {"cpu", "memory"} <= spec["resources"]["requests"].keys()
        assert "memory" in spec["resources"]["limits"]
        assert spec["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
        assert spec["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
        assert spec["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
        assert spec["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]


def test_pods_run_as_non_root_with_a_read_only_root(default_manifests: list[Manifest]) -> None:
    for deployment in of_kind(default_manifests, "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        security = container(deployment)["securityContext"]
        assert security["allowPrivilegeEscalation"] is False
        assert security["readOnlyRootFilesystem"] is True
        assert security["capabilities"]["drop"] == ["ALL"]


def test_replicas_spread_over_nodes_and_survive_a_drain(default_manifests: list[Manifest]) -> None:
    budgets = by_component(default_manifests, "PodDisruptionBudget")
    for name, deployment in by_component(default_manifests, "Deployment").items():
        assert deployment["spec"]["replicas"] == 2, f"{name} is documented as safe with two replicas"
        selector = deployment["spec"]["selector"]["matchLabels"]
        terms = deployment["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
        (term,) = terms["preferredDuringSchedulingIgnoredDuringExecution"]
        assert term["podAffinityTerm"]["labelSelector"]["matchLabels"] == selector
        assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
        assert budgets[name]["spec"]["selector"]["matchLabels"] == selector
        assert budgets[name]["spec"]["maxUnavailable"] == 1


def test_hard_anti_affinity_requires_distinct_nodes() -> None:
    deployment = by_component(render({"podAntiAffinity": "hard"}), "Deployment")["scheduler"]
    terms = deployment["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    assert list(terms) == ["requiredDuringSchedulingIgnoredDuringExecution"]


def test_a_shared_nats_user_comes_from_the_secret_the_password_as_a_mounted_file() -> None:
    for name, deployment in by_component(render({"nats": {"auth": {"type": "userPassword"}}}), "Deployment").items():
        env = env_of(deployment)
        prefix = f"VK8S_{name.upper()}_"
        assert env[f"{prefix}NATS_URL"]["value"].startswith("nats://")
        assert env[f"{prefix}NATS_USER"]["valueFrom"]["secretKeyRef"] == {"name": "vk8s-nats", "key": "user"}
        # No password in the environment, neither as a value nor from the Secret.
        assert f"{prefix}NATS_PASSWORD" not in env
        assert env[f"{prefix}NATS_PASSWORD_FILE"]["value"] == "/etc/vk8s/nats-password/password"
        volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
        assert volumes["nats-password"]["secret"] == {
            "secretName": "vk8s-nats", "defaultMode": 0o400, "items": [{"key": "password", "path": "password"}]
        }  # fmt: skip
        mounts = {m["name"]: m for m in container(deployment)["volumeMounts"]}
        assert mounts["nats-password"] == {"name": "nats-password", "mountPath": "/etc/vk8s/nats-password", "readOnly": True}


def test_the_stream_owner_and_every_kv_bucket_get_the_stream_replicas(default_manifests: list[Manifest]) -> None:
    """The gateway alone configures the stream; every service with a KV bucket replicates it like the stream."""
    for name, deployment in by_component(default_manifests, "Deployment").items():
        env = env_of(deployment)
        assert (env.get(f"VK8S_{name.upper()}_STREAM_REPLICAS") or {}).get("value") == ("3" if name == STREAM_OWNER else None)
        assert (env.get(f"VK8S_{name.upper()}_KV_REPLICAS") or {}).get("value") == ("3" if BY_NAME[name].kv_bucket else None)


def test_nats_creds_file_is_mounted_from_the_secret() -> None:
    manifests = render({"nats": {"auth": {"type": "creds", "existingSecret": "nats-jwt", "credsKey": "vk8s.creds"}}})
    deployment = by_component(manifests, "Deployment")["vnode"]
    env = env_of(deployment)
    assert env["VK8S_VNODE_NATS_CREDS_FILE"]["value"] == "/etc/vk8s/nats/nats.creds"
    assert "VK8S_VNODE_NATS_USER" not in env
    volumes = {volume["name"]: volume for volume in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["nats-creds"]["secret"]["secretName"] == "nats-jwt"
    assert volumes["nats-creds"]["secret"]["items"] == [{"key": "vk8s.creds", "path": "nats.creds"}]


def test_service_settings_pass_through_with_the_service_prefix() -> None:
    manifests = render({"services": {"scheduler": {"env": {"NODE_SELECTOR": "vk8s.skt.co.kr/host=true"}}}})
    env = env_of(by_component(manifests, "Deployment")["scheduler"])
    assert env["VK8S_SCHEDULER_NODE_SELECTOR"]["value"] == "vk8s.skt.co.kr/host=true"


def test_a_disabled_service_renders_nothing() -> None:
    manifests = render({"services": {"kubeflow": {"enabled": False}}})
    assert not [
        m for m in manifests if m["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "kubeflow"
    ]
    assert "kubeflow-egress" not in {
        m["metadata"]["name"].rsplit("vk8s-", 1)[-1] for m in of_kind(manifests, "NetworkPolicy")
    }


def test_services_stay_out_of_the_mesh_by_default(default_manifests: list[Manifest]) -> None:
    for deployment in of_kind(default_manifests, "Deployment"):
        assert deployment["spec"]["template"]["metadata"]["labels"]["sidecar.istio.io/inject"] == "false"
    assert not of_kind(default_manifests, "PeerAuthentication")
    assert not of_kind(default_manifests, "AuthorizationPolicy")


def test_mesh_injects_sidecars_with_strict_mtls(mesh_manifests: list[Manifest]) -> None:
    for deployment in of_kind(mesh_manifests, "Deployment"):
        template = deployment["spec"]["template"]
        assert template["metadata"]["labels"]["sidecar.istio.io/inject"] == "true"
        assert json.loads(template["metadata"]["annotations"]["proxy.istio.io/config"]) == {
            "holdApplicationUntilProxyStarts": True
        }
    (peer,) = of_kind(mesh_manifests, "PeerAuthentication")
    assert peer["spec"]["mtls"]["mode"] == "STRICT"
    (policy,) = of_kind(mesh_manifests, "AuthorizationPolicy")
    assert policy["spec"]["action"] == "ALLOW"
    (rule,) = policy["spec"]["rules"]
    (operation,) = rule["to"]
    assert operation["operation"] == {
        "ports": ["8080"],
        "methods": ["GET"],
        "paths": ["/metrics", "/healthz", "/readyz"],
    }


def test_metrics_principals_require_mtls_on_the_operator_port() -> None:
    manifests = render(
        {
            "mesh": {
                "enabled": True,
                "permissiveOperatorPort": False,
                "metricsPrincipals": ["cluster.local/ns/monitoring/sa/prometheus"],
            }
        }
    )
    (peer,) = of_kind(manifests, "PeerAuthentication")
    assert "portLevelMtls" not in peer["spec"]
    (policy,) = of_kind(manifests, "AuthorizationPolicy")
    assert policy["spec"]["rules"][0]["from"] == [
        {"source": {"principals": ["cluster.local/ns/monitoring/sa/prometheus"]}}
    ]


def test_one_tenant_namespace_is_the_only_one_the_gateway_watches() -> None:
    env = env_of(by_component(render({"rbac": {"tenantNamespaces": ["team-a"]}}), "Deployment")["gateway"])
    assert env["VK8S_GATEWAY_NAMESPACE"]["value"] == "team-a"
    for values in ({}, TENANTS):
        assert "VK8S_GATEWAY_NAMESPACE" not in env_of(by_component(render(values), "Deployment")["gateway"])


def test_gateway_and_vnode_get_the_node_image_policy(default_manifests: list[Manifest]) -> None:
    deployments = by_component(default_manifests, "Deployment")
    for service in ("gateway", "vnode"):
        policy = json.loads(env_of(deployments[service])[f"VK8S_{service.upper()}_IMAGE_POLICY"]["value"])
        assert ImagePolicy.model_validate(policy) == ImagePolicy(), "the chart's default is the services' default"
    strict = {"nodeImages": {"allowedRepositories": ["registry.local/kink"], "requireDigest": True}}
    policy = json.loads(env_of(by_component(render(strict), "Deployment")["vnode"])["VK8S_VNODE_IMAGE_POLICY"]["value"])
    assert ImagePolicy.model_validate(policy) == ImagePolicy(repositories=("registry.local/kink",), require_digest=True)


def test_the_gateway_gets_the_namespace_quotas(default_manifests: list[Manifest]) -> None:
    env = env_of(by_component(default_manifests, "Deployment")["gateway"])
    values = (env["VK8S_GATEWAY_MAX_CLUSTERS_PER_NAMESPACE"]["value"], env["VK8S_GATEWAY_MAX_GPUS_PER_NAMESPACE"]["value"])
    assert values == ("20", "64")
    settings = GatewaySettings(max_clusters_per_namespace=values[0], max_gpus_per_namespace=values[1])
    assert (settings.max_clusters_per_namespace, settings.max_gpus_per_namespace) == (20, 64)


def test_the_read_apis_get_their_token_from_a_secret(default_manifests: list[Manifest]) -> None:
    (secret,) = [m for m in of_kind(default_manifests, "Secret") if m["metadata"]["name"] == "vk8s-read-api"]
    assert len(base64.b64decode(secret["data"]["token"])) == 40
    for service in ("ipmanager", "projector"):
        env = env_of(by_component(default_manifests, "Deployment")[service])
        reference = env[f"VK8S_{service.upper()}_READ_API_TOKEN"]["valueFrom"]["secretKeyRef"]
        assert reference == {"name": "vk8s-read-api", "key": "token"}
    own = render({"readApi": {"existingSecret": "ops-read-token", "tokenKey": "bearer"}})
    assert not [m for m in of_kind(own, "Secret") if m["metadata"]["name"] == "vk8s-read-api"]
    env = env_of(by_component(own, "Deployment")["projector"])
    assert env["VK8S_PROJECTOR_READ_API_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "ops-read-token", "key": "bearer"}


def test_the_vnode_service_gets_the_ports_service_type() -> None:
    env = env_of(by_component(render({"portsServiceType": "LoadBalancer"}), "Deployment")["vnode"])
    assert env["VK8S_VNODE_PORTS_SERVICE_TYPE"]["value"] == "LoadBalancer"


SETTINGS_CASES: tuple[Manifest, ...] = (
    {}, TENANTS, {"rbac": {"tenantNamespaces": ["team-a"]}}, {"nats": {"auth": {"type": "creds"}}},
    {"nats": {"auth": {"type": "userPassword"}}},
)  # fmt: skip


@pytest.fixture(scope="module")
def settings_renders() -> list[list[Manifest]]:
    return [render(values) for values in SETTINGS_CASES]


@pytest.mark.parametrize("service", SERVICES)
def test_every_setting_the_chart_sets_is_one_the_service_reads(
    settings_renders: list[list[Manifest]], service: str
) -> None:
    """pydantic-settings ignores unknown variables, so a misspelt one would be silently without effect."""
    fields = settings_fields(service)
    prefix = f"VK8S_{service.upper()}_"
    for manifests in settings_renders:
        for variable in env_of(by_component(manifests, "Deployment")[service]):
            if variable.startswith("VK8S_"):
                assert variable.startswith(prefix), variable
                assert variable.removeprefix(prefix).lower() in fields, f"{variable}: {service} has no such setting"


def settings_fields(service: str) -> set[str]:
    try:
        module = importlib.import_module(f"services.{service}.settings")
    except ModuleNotFoundError:
        pytest.fail(
            f"services/{service}/settings.py does not exist (yet): the chart runs `python -m services.{service}`"
        )
    classes = [
        value for value in vars(module).values()
        if isinstance(value, type) and issubclass(value, ServiceSettings) and value.__module__ == module.__name__
    ]  # fmt: skip
    assert len(classes) == 1, f"services.{service}.settings defines {classes}"
    (settings,) = classes
    assert settings.model_config["env_prefix"] == f"VK8S_{service.upper()}_"
    return set(settings.model_fields)


def test_network_policies_default_deny_and_open_only_what_is_used(default_manifests: list[Manifest]) -> None:
    policies = {m["metadata"]["name"]: m for m in of_kind(default_manifests, "NetworkPolicy")}
    deny = policies["vk8s-default-deny"]["spec"]
    assert deny["policyTypes"] == ["Ingress", "Egress"] and "ingress" not in deny and "egress" not in deny
    services = policies["vk8s-services"]["spec"]
    (ingress,) = services["ingress"]
    assert ingress["ports"] == [{"port": "http", "protocol": "TCP"}]
    egress_ports = sorted((port["port"], port["protocol"]) for rule in services["egress"] for port in rule["ports"])
    assert egress_ports == [(53, "TCP"), (53, "UDP"), (443, "TCP"), (4222, "TCP"), (6443, "TCP")]
    kubeflow = policies["vk8s-kubeflow-egress"]["spec"]
    assert kubeflow["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "kubeflow"
    # No tenant namespaces listed: no policy lands outside the release namespace.
    assert {m["metadata"]["namespace"] for m in policies.values()} == {"vk8s-system"}


def test_in_the_mesh_the_sidecar_ports_are_open_to_the_scrapers_only(mesh_manifests: list[Manifest]) -> None:
    policies = {m["metadata"]["name"]: m for m in of_kind(mesh_manifests, "NetworkPolicy")}
    operator, sidecar = policies["vk8s-services"]["spec"]["ingress"]
    assert sidecar["ports"] == [{"port": 15020, "protocol": "TCP"}, {"port": 15021, "protocol": "TCP"}]
    monitoring = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    assert sidecar["from"] == operator["from"] == monitoring


def test_tenant_namespaces_get_a_vnode_policy() -> None:
    policies = [m for m in of_kind(render(TENANTS), "NetworkPolicy") if m["metadata"]["name"] == "vk8s-vnodes"]
    assert sorted(p["metadata"]["namespace"] for p in policies) == ["team-a", "team-b"]
    spec = policies[0]["spec"]
    assert spec["podSelector"] == {"matchLabels": {"app": "vk8s"}}
    from_kubeflow = spec["ingress"][1]["from"][0]
    assert from_kubeflow["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "vk8s-system"}
    assert from_kubeflow["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "kubeflow"
    assert spec["egress"][-1]["to"][0]["ipBlock"]["except"] == ["169.254.169.254/32"]


def test_monitors_select_the_services_and_label_targets() -> None:
    manifests = render(
        {
            "metrics": {
                "serviceMonitor": {"enabled": True},
                "podMonitor": {"enabled": False},
                "prometheusRule": {"enabled": True},
            }
        }
    )
    (monitor,) = of_kind(manifests, "ServiceMonitor")
    assert monitor["spec"]["podTargetLabels"] == ["app.kubernetes.io/part-of", "app.kubernetes.io/component"]
    assert monitor["spec"]["selector"]["matchExpressions"][0]["values"] == list(SERVICES)
    (rule,) = of_kind(manifests, "PrometheusRule")
    assert rule["spec"]["groups"], "the PrometheusRule carries deploy/prometheus's groups"


def test_dashboards_are_labelled_configmaps(default_manifests: list[Manifest]) -> None:
    dashboards = [m for m in of_kind(default_manifests, "ConfigMap") if "-dashboard-" in m["metadata"]["name"]]
    assert dashboards
    for configmap in dashboards:
        assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
        ((file, body),) = configmap["data"].items()
        assert file.endswith(".json") and json.loads(body)["uid"]


def test_kubeflow_gets_a_manifest_cache_and_its_sources_file() -> None:
    sources = {"releases": {"v1.9.1": {"git": {"url": "https://github.com/kubeflow/manifests", "ref": "v1.9.1"}}}}
    manifests = render({"services": {"kubeflow": {"manifestSources": sources}}})
    deployment = by_component(manifests, "Deployment")["kubeflow"]
    env = env_of(deployment)
    assert env["VK8S_KUBEFLOW_GIT_CACHE_DIR"]["value"] == "/var/cache/vk8s/kubeflow-manifests"
    assert env["VK8S_KUBEFLOW_SOURCES_FILE"]["value"] == "/etc/vk8s/kubeflow/sources.yaml"
    mounts = {m["name"]: m["mountPath"] for m in container(deployment)["volumeMounts"]}
    assert mounts["manifests-cache"] == "/var/cache/vk8s/kubeflow-manifests"
    (configmap,) = [
        m for m in of_kind(manifests, "ConfigMap") if m["metadata"]["name"].endswith("-kubeflow-manifest-sources")
    ]
    assert yaml.safe_load(configmap["data"]["sources.yaml"]) == sources
    assert "checksum/kubeflow-manifest-sources" in deployment["spec"]["template"]["metadata"]["annotations"]
    assert "VK8S_KUBEFLOW_SOURCES_FILE" not in env_of(by_component(render(), "Deployment")["kubeflow"])



def test_helm_assumes_the_kubernetes_of_its_release(tmp_path: Path) -> None:
    """Rendering without a cluster, as a user does (no --kube-version), helm assumes the Kubernetes its
    release build sets (go-installed without those ldflags it would claim v1.20.0 and refuse this chart's
    kubeVersion >=1.27)."""
    chart = tmp_path / "probe"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: probe\nversion: 0.1.0\n")
    (chart / "templates" / "version.yaml").write_text("kubeVersion: {{ .Capabilities.KubeVersion.Version }}\n")
    rendered = helm("template", "probe", str(chart))
    assert yaml.safe_load(rendered.stdout.split("---", 1)[1]) == {"kubeVersion": f"v{HELM_KUBE_VERSION}.0"}


def kube_api_egress(manifests: list[Manifest]) -> list[dict[str, object]]:
    """The `to` of the services' egress rule to the apiserver (the one on 6443)."""
    services = next(m for m in of_kind(manifests, "NetworkPolicy") if m["metadata"]["name"] == "vk8s-services")
    [rule] = [r for r in services["spec"]["egress"] if {"port": 6443, "protocol": "TCP"} in r["ports"]]
    return list(rule["to"])


def test_apiserver_egress_goes_only_to_the_apiservers_addresses(default_manifests: list[Manifest]) -> None:
    """Empty `to` by default: an install looks the addresses up; helm template (no cluster) must be told them."""
    assert kube_api_egress(default_manifests) == [{"ipBlock": {"cidr": "10.0.0.1/32"}}]  # from NO_CLUSTER_VALUES
    unknown = template(cluster_values=False)
    assert unknown.returncode != 0
    assert "networkPolicy.egress.kubeApi.to is empty and the apiserver's addresses could not be looked up" in unknown.stderr
    told = [{"ipBlock": {"cidr": "192.0.2.10/32"}}, {"ipBlock": {"cidr": "192.0.2.11/32"}}]
    rendered = render({"networkPolicy": {"egress": {"kubeApi": {"to": told}}}}, cluster_values=False)
    assert kube_api_egress(rendered) == told
    # Without policies nothing needs the address.
    assert template({"networkPolicy": {"enabled": False}}, cluster_values=False).returncode == 0


def test_the_vnode_service_puts_a_network_policy_around_every_cluster(default_manifests: list[Manifest]) -> None:
    """Read by VNodeSettings as the vnode service would: the kubeflow service may reach the inner API
    servers; vNodes reach anywhere but the cloud metadata address."""
    env = env_of(by_component(default_manifests, "Deployment")["vnode"])
    settings = VNodeSettings.model_validate(
        {key.removeprefix("VK8S_VNODE_").lower(): json.loads(env[key]["value"]) for key in env if "NETWORK_POLICY" in key}
    )
    assert settings.network_policy is True
    [kubeflow] = settings.network_policy_ingress
    assert kubeflow["ports"] == [{"port": 6443, "protocol": "TCP"}]
    assert kubeflow["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "kubeflow"
    assert kubeflow["from"][0]["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": "vk8s-system"}}
    assert settings.network_policy_egress == [
        {"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["169.254.169.254/32"]}}]}
    ]
    off = env_of(by_component(render({"networkPolicy": {"tenants": {"enabled": False}}}), "Deployment")["vnode"])
    assert off["VK8S_VNODE_NETWORK_POLICY"]["value"] == "false"
