"""Every validation rule with inputs that pass and inputs that fail, and the problem format."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from libs.api.images import ImagePolicy
from libs.api.models import Vk8s
from libs.api.validation import Problem, Severity, format_path, validate_document, validate_vk8s
from libs.api.versions import CompatibilityMatrix
from tests.unit.api.conftest import load_sample, valid_document

Doc = dict[str, Any]
Change = Callable[[Doc], Any]


def node(doc: Doc, index: int) -> Doc:
    return doc["spec"]["nodes"][index]


def resources(doc: Doc, index: int, kind: str) -> Doc:
    return node(doc, index).setdefault("resources", {}).setdefault(kind, {})


def kubernetes(doc: Doc) -> Doc:
    return doc["spec"].setdefault("kubernetes", {})


def kubeflow(doc: Doc) -> Doc:
    return doc["spec"]["kubeflow"]


def port(doc: Doc, index: int = 0) -> Doc:
    return doc["spec"]["ports"][index]


def images(tag_or_images: str | list[str | None]) -> Change:
    """Sets every node's image (None removes it)."""

    def change(doc: Doc) -> None:
        values = tag_or_images if isinstance(tag_or_images, list) else [tag_or_images] * len(doc["spec"]["nodes"])
        for index, image in enumerate(values):
            if image is None:
                node(doc, index).pop("image", None)
            else:
                node(doc, index)["image"] = image

    return change


def on(version: str | None, image: str | list[str | None] | None = None) -> Change:
    """Kubernetes `version` (None: unset) and node images (default: kink:v<version>)."""

    def change(doc: Doc) -> None:
        if version is None:
            kubernetes(doc).pop("version", None)
        else:
            kubernetes(doc)["version"] = version
        images(image if image is not None else f"ghcr.io/vk8s/kink:v{version}")(doc)

    return change


def both(*changes: Change) -> Change:
    def change(doc: Doc) -> None:
        for each in changes:
            each(doc)

    return change


def add_worker(doc: Doc, **fields: Any) -> None:
    doc["spec"]["nodes"].append({"name": f"w{len(doc['spec']['nodes'])}", "role": "worker", **fields})


def add_workers(doc: Doc, count: int) -> None:
    for _ in range(count):
        add_worker(doc)


ERRORS: list[Any] = [
    # nodes: one master, first, unique names, known roles, DNS-1123 names
    pytest.param(lambda d: node(d, 0).update(role="worker"), "spec.nodes", "no master node", id="no-master"),
    pytest.param(lambda d: d["spec"]["nodes"].reverse(), "spec.nodes[1].role", "must be listed first", id="master-second"),
    pytest.param(lambda d: node(d, 1).update(role="master"), "spec.nodes[1].role", "exactly one master", id="two-masters"),
    pytest.param(lambda d: node(d, 1).update(name="team-a-master"), "spec.nodes[1].name", "duplicate node name", id="dup-node"),
    pytest.param(lambda d: node(d, 1).update(role="boss"), "spec.nodes[1].role", "allowed: 'master' or 'worker'", id="role"),
    pytest.param(lambda d: node(d, 1).pop("role"), "spec.nodes[1].role", "required field is missing", id="role-missing"),
    pytest.param(lambda d: node(d, 0).update(name="Team_A"), "spec.nodes[0].name", "DNS-1123 label", id="node-name"),
    pytest.param(lambda d: node(d, 0).update(name="-a"), "spec.nodes[0].name", "DNS-1123 label", id="node-name-dash"),
    pytest.param(lambda d: node(d, 0).update(name="a" * 53), "spec.nodes[0].name", "at most 52", id="node-name-long"),
    pytest.param(lambda d: d["metadata"].update(name="team.a"), "metadata.name", "DNS-1123 label", id="cluster-name"),
    pytest.param(lambda d: d["metadata"].update(name="a" * 64), "metadata.name", "at most 63", id="cluster-name-long"),
    pytest.param(lambda d: d["metadata"].pop("name"), "metadata.name", "required", id="cluster-name-missing"),
    pytest.param(lambda d: d["spec"].update(nodes=[]), "spec.nodes", "at least 1", id="no-nodes"),
    pytest.param(lambda d: d.update(kind="ConfigMap"), "kind", "allowed: 'Vk8s'", id="kind"),
    pytest.param(lambda d: d.update(apiVersion="vk8s.sktelecom.com/v1alpha1"), "apiVersion", "allowed", id="api-version"),
    pytest.param(lambda d: d.pop("spec"), "spec", "required", id="spec-missing"),
    pytest.param(
        lambda d: node(d, 0).update(replicas=2), "spec.nodes[0].replicas", "unknown field; allowed here: name, image, role",
        id="unknown-field",
    ),
    pytest.param(lambda d: d["spec"].update(nodes={"m": 1}), "spec.nodes", "must be a list", id="nodes-not-list"),
    # resources: requests <= limits, known names, valid quantities
    pytest.param(
        lambda d: resources(d, 0, "requests").update(cpu="5"), "spec.nodes[0].resources.requests.cpu",
        "request 5 exceeds limit 4", id="cpu-over",
    ),
    pytest.param(
        lambda d: resources(d, 0, "requests").update(cpu="4001m"), "spec.nodes[0].resources.requests.cpu",
        "exceeds limit", id="cpu-millis-over",
    ),
    pytest.param(
        lambda d: resources(d, 0, "requests").update(memory=str(16 * 2**30 + 1)),
        "spec.nodes[0].resources.requests.memory", "exceeds limit 16Gi", id="memory-over-by-a-byte",
    ),
    pytest.param(
        lambda d: resources(d, 0, "requests").update(memory="17.2e9"), "spec.nodes[0].resources.requests.memory",
        "exceeds", id="memory-exponent-over",
    ),
    pytest.param(
        both(lambda d: resources(d, 0, "requests").update({"ephemeral-storage": "2Gi"}),
             lambda d: resources(d, 0, "limits").update({"ephemeral-storage": "1Gi"})),
        "spec.nodes[0].resources.requests.ephemeral-storage", "exceeds", id="any-resource-over",
    ),
    pytest.param(
        lambda d: resources(d, 0, "limits").update(memory="16GB"), "spec.nodes[0].resources.limits.memory",
        "not a quantity", id="bad-quantity",
    ),
    pytest.param(
        lambda d: resources(d, 0, "limits").update(cpu=1.5), "spec.nodes[0].resources.limits.cpu",
        'as strings, e.g. "1.5"', id="float-quantity",
    ),
    pytest.param(
        lambda d: resources(d, 0, "requests").update(cpu="-1"), "spec.nodes[0].resources.requests.cpu",
        "negative", id="negative-cpu",
    ),
    pytest.param(
        lambda d: resources(d, 0, "requests").update(memmory="1Gi"), "spec.nodes[0].resources.requests.memmory",
        "unknown resource 'memmory'; allowed: cpu, memory", id="unknown-resource",
    ),
    # GPUs: whole, non-negative, requests == limits
    pytest.param(
        lambda d: resources(d, 1, "limits").update({"nvidia.com/gpu": "0.5"}),
        'spec.nodes[1].resources.limits["nvidia.com/gpu"]', "not a whole number", id="gpu-fraction",
    ),
    pytest.param(
        lambda d: resources(d, 1, "limits").update({"nvidia.com/gpu": "500m"}),
        'spec.nodes[1].resources.limits["nvidia.com/gpu"]', "not a whole number", id="gpu-millis",
    ),
    pytest.param(
        lambda d: resources(d, 1, "limits").update({"nvidia.com/gpu": -1}),
        'spec.nodes[1].resources.limits["nvidia.com/gpu"]', "negative", id="gpu-negative",
    ),
    pytest.param(
        lambda d: resources(d, 1, "requests").update({"nvidia.com/gpu": 1}),
        'spec.nodes[1].resources.limits["nvidia.com/gpu"]', "requests must equal limits", id="gpu-request-below-limit",
    ),
    pytest.param(
        lambda d: resources(d, 1, "requests").update({"nvidia.com/gpu": 3}),
        'spec.nodes[1].resources.limits["nvidia.com/gpu"]', "cannot be overcommitted", id="gpu-request-above-limit",
    ),
    pytest.param(
        lambda d: resources(d, 1, "limits").update({"nvidia.com/gpu": 1.0}),
        'spec.nodes[1].resources.limits["nvidia.com/gpu"]', "as strings", id="gpu-float",
    ),
    # networks: CIDRs, no overlap, sizes
    pytest.param(
        lambda d: kubernetes(d).update(podNetworkCidr="10.0.0.0/33"), "spec.kubernetes.podNetworkCidr",
        "not a network CIDR", id="cidr-prefix",
    ),
    pytest.param(
        lambda d: kubernetes(d).update(podNetworkCidr="90.244.0.1/16"), "spec.kubernetes.podNetworkCidr",
        "did you mean 90.244.0.0/16", id="cidr-host-bits",
    ),
    pytest.param(
        lambda d: kubernetes(d).update(serviceCidr="ten/8"), "spec.kubernetes.serviceCidr", "not a network CIDR",
        id="cidr-text",
    ),
    pytest.param(
        lambda d: kubernetes(d).update(serviceCidr=10), "spec.kubernetes.serviceCidr", "CIDR string", id="cidr-int",
    ),
    pytest.param(
        lambda d: kubernetes(d).update(podNetworkCidr="10.0.0.0/8", serviceCidr="10.96.0.0/12"),
        "spec.kubernetes.serviceCidr", "overlaps podNetworkCidr 10.0.0.0/8", id="cidr-overlap",
    ),
    pytest.param(
        lambda d: kubernetes(d).update(serviceCidr="fd00:96::/108"), "spec.kubernetes.serviceCidr", "one IP family",
        id="cidr-family",
    ),
    pytest.param(
        lambda d: kubernetes(d).update(serviceCidr="10.0.0.0/8"), "spec.kubernetes.serviceCidr",
        "too large; the prefix length must be at least /12", id="service-cidr-too-large",
    ),
    pytest.param(
        lambda d: kubernetes(d).update(podNetworkCidr="10.244.0.0/24"), "spec.kubernetes.podNetworkCidr",
        "too small for 2 node(s)", id="pod-cidr-too-small",
    ),
    # ports
    pytest.param(lambda d: port(d).update(port=0), "spec.ports[0].port", "allowed: 1-65535", id="port-zero"),
    pytest.param(lambda d: port(d).update(port=65536), "spec.ports[0].port", "allowed: 1-65535", id="port-high"),
    pytest.param(lambda d: port(d).update(port="30000"), "spec.ports[0].port", "valid integer", id="port-string"),
    pytest.param(lambda d: port(d).update(port=30000.0), "spec.ports[0].port", "valid integer", id="port-float"),
    pytest.param(lambda d: port(d).update(nodePort=True), "spec.ports[0].nodePort", "valid integer", id="nodeport-bool"),
    pytest.param(lambda d: port(d).update(nodePort=29999), "spec.ports[0].nodePort", "allowed: 30000-32767", id="nodeport-low"),
    pytest.param(lambda d: port(d).update(nodePort=32768), "spec.ports[0].nodePort", "allowed: 30000-32767", id="nodeport-high"),
    pytest.param(lambda d: port(d).update(targetPort=0), "spec.ports[0].targetPort", "out of range", id="targetport-zero"),
    pytest.param(lambda d: port(d).update(targetPort=70000), "spec.ports[0].targetPort", "1-65535", id="targetport-high"),
    pytest.param(lambda d: port(d).update(targetPort="HTTP"), "spec.ports[0].targetPort", "IANA service name", id="targetport-upper"),
    pytest.param(lambda d: port(d).update(targetPort="http--x"), "spec.ports[0].targetPort", "no '--'", id="targetport-dashes"),
    pytest.param(lambda d: port(d).update(targetPort="8080"), "spec.ports[0].targetPort", "at least one letter", id="targetport-digits"),
    pytest.param(
        lambda d: port(d).update(targetPort="kubeflow-central"), "spec.ports[0].targetPort", "at most 15",
        id="targetport-long",
    ),
    pytest.param(lambda d: port(d).update(protocol="HTTP"), "spec.ports[0].protocol", "'TCP', 'UDP' or 'SCTP'", id="protocol"),
    pytest.param(
        lambda d: d["spec"]["ports"].append({"port": 30001}), "spec.ports[1].name", "required when more than one port",
        id="port-unnamed",
    ),
    pytest.param(
        lambda d: d["spec"]["ports"].append({"name": "kubeflow", "port": 30001}), "spec.ports[1].name",
        "duplicate port name", id="port-dup-name",
    ),
    pytest.param(
        lambda d: d["spec"]["ports"].append({"name": "ssh", "port": 30000}), "spec.ports[1].port", "listed twice",
        id="port-dup-number",
    ),
    pytest.param(lambda d: port(d).update(nodePort=31000), "spec.ports[0].nodePort",
                 "31000 is refused: node ports are host-wide, so the platform allocates them; remove nodePort",
                 id="nodeport-chosen-by-the-tenant",
    ),
    # Kubernetes version
    pytest.param(on("1.10"), "spec.kubernetes.version", "Kubernetes 1.10 has no node image; available: 1.20, 1.34-1.36",
                 id="k8s-unknown"),
    pytest.param(on("1.29"), "spec.kubernetes.version", "Kubernetes 1.29 has no node image; available: 1.20, 1.34-1.36",
                 id="k8s-no-node-image"),
    pytest.param(on("1.38"), "spec.kubernetes.version", "no node image", id="k8s-too-new"),
    pytest.param(lambda d: kubernetes(d).update(version="latest"), "spec.kubernetes.version",
                 "a Kubernetes version such as 1.29", id="k8s-format"),
    pytest.param(lambda d: kubernetes(d).update(version=1.2), "spec.kubernetes.version", "quote the value in YAML",
                 id="k8s-unquoted"),
    pytest.param(images(["ghcr.io/vk8s/kink:v1.36", "ghcr.io/vk8s/kink:v1.35"]), "spec.nodes[1].image",
                 "image tag is Kubernetes 1.35 but spec.kubernetes.version is 1.36", id="image-vs-version"),
    pytest.param(on(None, "kink:latest"), "spec.nodes[0].image", "cannot tell the Kubernetes version", id="image-no-tag"),
    pytest.param(on(None, ["kink:v1.36", None]), "spec.nodes[1].image", "no image and no spec.kubernetes.version",
                 id="image-missing"),
    pytest.param(on(None, ["kink:v1.36", "kink:v1.35"]), "spec.nodes[1].image", "same Kubernetes minor",
                 id="images-disagree"),
    pytest.param(on(None, "kink:v1.10"), "spec.nodes[0].image", "Kubernetes 1.10 has no node image", id="image-unknown"),
    pytest.param(lambda d: add_workers(d, 63), "spec.nodes", "65 items; at most 64 allowed",
                 id="too-many-vnodes"),
    # node images come from the allowed repositories only (default: the catalog's)
    pytest.param(on(None, "evil.example.com/kink:v1.36"), "spec.nodes[0].image",
                 "'evil.example.com/kink:v1.36' is not from an allowed repository; allowed: ghcr.io/vk8s/kink",
                 id="image-not-allowed"),
    pytest.param(on(None, ["ghcr.io/vk8s/kink:v1.36", "ghcr.io/vk8s/kink-evil:v1.36"]), "spec.nodes[1].image",
                 "not from an allowed repository; allowed: ghcr.io/vk8s/kink", id="image-prefix-not-a-path-boundary"),
    pytest.param(on(None, "ghcr.io/vk8s/kink:v1.36 --privileged"), "spec.nodes[0].image",
                 "is not an image reference; expected repository[:tag][@sha256:<64 hex digits>]", id="image-malformed"),
    pytest.param(on(None, "harbor.example.com/vk8s/kink:v1.29"), "spec.nodes[0].image",
                 "Kubernetes 1.29 has no node image; available: 1.20, 1.34-1.36", id="image-no-node-image"),
    # Kubeflow version and compatibility
    pytest.param(lambda d: kubeflow(d).update(version="v1.4.0"), "spec.kubeflow.version",
                 "compatible with Kubernetes 1.36: v1.11.0", id="kf-incompatible"),
    pytest.param(lambda d: kubeflow(d).update(version="v1.9.9"), "spec.kubeflow.version", "not a known release",
                 id="kf-unknown"),
    pytest.param(lambda d: kubeflow(d).update(version="1.9.0"), "spec.kubeflow.version", "vX.Y.Z", id="kf-format"),
    pytest.param(lambda d: kubeflow(d).update(version="v1.9"), "spec.kubeflow.version", "vX.Y.Z", id="kf-minor-only"),
    # Kubeflow user
    pytest.param(lambda d: kubeflow(d).update(email="alice"), "spec.kubeflow.email", "an email address", id="email"),
    pytest.param(lambda d: kubeflow(d).update(email="alice@localhost"), "spec.kubeflow.email", "email", id="email-no-dot"),
    pytest.param(lambda d: kubeflow(d).pop("email"), "spec.kubeflow.email", "required", id="email-missing"),
    pytest.param(lambda d: kubeflow(d).update(password="x"), "spec.kubeflow.password", "not both", id="password-and-ref"),
    pytest.param(lambda d: kubeflow(d).pop("passwordSecretRef"), "spec.kubeflow.passwordSecretRef", "needs a password",
                 id="no-password"),
    pytest.param(both(lambda d: kubeflow(d).pop("passwordSecretRef"), lambda d: kubeflow(d).update(password="")),
                 "spec.kubeflow.password", "must not be empty", id="empty-password"),
    pytest.param(lambda d: kubeflow(d).update(passwordSecretRef={"key": "pw"}), "spec.kubeflow.passwordSecretRef.name",
                 "required", id="secret-ref-name"),
    # tolerations
    pytest.param(lambda d: node(d, 1).update(tolerations=[{"key": "k", "operator": "Exists", "value": "v"}]),
                 "spec.nodes[1].tolerations[0].value", "empty when operator is Exists", id="toleration-exists-value"),
    pytest.param(lambda d: node(d, 1).update(tolerations=[{"operator": "Equal", "value": "v"}]),
                 "spec.nodes[1].tolerations[0].operator", "requires operator Exists", id="toleration-empty-key"),
    pytest.param(lambda d: node(d, 1).update(tolerations=[{"key": "k", "effect": "NoSchedule", "tolerationSeconds": 5}]),
                 "spec.nodes[1].tolerations[0].tolerationSeconds", "NoExecute", id="toleration-seconds"),
    pytest.param(lambda d: node(d, 1).update(tolerations=[{"key": "k", "effect": "Never"}]),
                 "spec.nodes[1].tolerations[0].effect", "allowed", id="toleration-effect"),
    # misc
    pytest.param(lambda d: d["spec"].update(accessPodPort=0), "spec.accessPodPort", "allowed: 1-65535", id="access-port"),
    pytest.param(lambda d: d["spec"].update(placement={"spreadZones": "sometimes"}), "spec.placement.spreadZones",
                 "boolean", id="placement-bool"),
]


@pytest.mark.parametrize(("change", "path", "fragment"), ERRORS)
def test_invalid(document: Doc, change: Change, path: str, fragment: str) -> None:
    assert validate_document(document).problems == [], "the base document must be clean"
    change(document)
    result = validate_document(document)
    assert not result.ok
    assert result.vk8s is None
    matches = [problem for problem in result.errors if problem.path == path and fragment in problem.message]
    assert matches, "\n".join(map(str, result.problems))


VALID: list[Any] = [
    pytest.param(lambda d: resources(d, 0, "requests").update(cpu="500m"), id="cpu-millis-below"),
    pytest.param(lambda d: resources(d, 0, "requests").update(cpu="4000m"), id="cpu-equal-other-unit"),
    pytest.param(lambda d: resources(d, 0, "requests").update(cpu=4), id="cpu-int"),
    pytest.param(lambda d: resources(d, 0, "requests").update(memory="16384Mi"), id="memory-equal-other-unit"),
    pytest.param(lambda d: resources(d, 0, "requests").update(memory="1e9"), id="memory-exponent"),
    pytest.param(lambda d: resources(d, 0, "requests").update(memory="17179869184"), id="memory-bytes-equal"),
    pytest.param(lambda d: resources(d, 0, "limits").update({"hugepages-2Mi": "1Gi"}), id="hugepages"),
    pytest.param(lambda d: resources(d, 0, "limits").update({"example.com/fpga": 1}), id="vendor-resource"),
    pytest.param(lambda d: resources(d, 1, "requests").update({"nvidia.com/gpu": "2"}), id="gpu-equal-string"),
    pytest.param(lambda d: resources(d, 1, "limits").update({"nvidia.com/gpu": "0"}), id="gpu-zero"),
    pytest.param(both(lambda d: resources(d, 1, "limits").pop("nvidia.com/gpu"),
                      lambda d: resources(d, 1, "requests").update({"nvidia.com/gpu": 1})), id="gpu-requests-only"),
    pytest.param(lambda d: port(d).update(port=1), id="port-min"),
    pytest.param(lambda d: port(d).update(port=65535, targetPort=65535), id="port-max"),
    pytest.param(lambda d: port(d).update(targetPort="http"), id="targetport-name"),
    pytest.param(lambda d: port(d).update(targetPort="kubeflow-ui-80"), id="targetport-name-15"),
    pytest.param(lambda d: port(d).pop("targetPort"), id="targetport-default"),
    pytest.param(lambda d: d["spec"]["ports"].append({"name": "dns", "port": 30000, "protocol": "UDP"}),
                 id="same-port-other-protocol"),
    pytest.param(lambda d: kubernetes(d).update(podNetworkCidr="fd00:10:244::/56", serviceCidr="fd00:10:96::/112"),
                 id="ipv6"),
    pytest.param(lambda d: kubernetes(d).update(podNetworkCidr="10.244.0.0/23"), id="pod-cidr-just-enough"),
    pytest.param(both(lambda d: d["spec"]["nodes"].pop(), lambda d: resources(d, 0, "limits").update(cpu="8"),
                      lambda d: kubernetes(d).update(podNetworkCidr="10.244.0.0/24")), id="pod-cidr-one-node"),
    pytest.param(on(None, "ghcr.io/vk8s/kink:v1.36"), id="version-from-image"),
    pytest.param(on(None, "host:5000/vk8s/kink:v1.36-ubuntu"), id="version-from-registry-port-image"),
    pytest.param(on("1.36", [None, None]), id="images-from-catalog"),
    pytest.param(on("v1.36.3", ["registry.local/kink@sha256:" + "a" * 64, None]), id="untagged-image-with-version"),
    pytest.param(lambda d: kubeflow(d).pop("version"), id="kubeflow-default-version"),
    pytest.param(both(lambda d: d["spec"].pop("kubeflow"), lambda d: d["spec"].pop("ports")), id="no-kubeflow"),
    pytest.param(both(on("1.35"), lambda d: d["spec"].pop("kubeflow")), id="1.35-without-kubeflow"),
    pytest.param(both(on("1.20"), lambda d: kubeflow(d).update(version="v1.3.0")), id="kf-1.3-on-1.20"),
    pytest.param(both(on("1.20"), lambda d: kubeflow(d).pop("version")), id="kf-default-on-1.20"),
    pytest.param(both(on("1.34"), lambda d: kubeflow(d).update(version="v1.11.0")), id="kf-1.11-on-1.34"),
    pytest.param(lambda d: kubeflow(d).update(email="first.last+ml@corp.example.co.kr"), id="email-plus"),
    pytest.param(lambda d: node(d, 1).update(tolerations=[
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
        {"operator": "Exists"},
        {"key": "k", "operator": "Equal", "value": "v", "effect": "NoExecute", "tolerationSeconds": 30},
    ]), id="tolerations"),
    pytest.param(lambda d: d["metadata"].update(name="a" * 63), id="cluster-name-63"),
    pytest.param(lambda d: node(d, 1).update(name="a" * 52), id="node-name-52"),
    pytest.param(lambda d: d["spec"].update(accessPodImage="ghcr.io/vk8s/access:1", accessPodPort=22), id="access-pod"),
    pytest.param(lambda d: d["spec"].update(placement={"gpuModel": "NVIDIA-A100-SXM4-80GB", "spreadZones": True}),
                 id="placement"),
    pytest.param(lambda d: add_worker(d, image="ghcr.io/vk8s/kink:v1.36"), id="three-nodes-in-a-22"),
]


# The version cases name mirrors; the image rules have their own tests.
MIRRORS = ImagePolicy(repositories=("ghcr.io/vk8s/kink", "host:5000/vk8s", "registry.local"))


@pytest.mark.parametrize("change", VALID)
def test_valid(document: Doc, change: Change) -> None:
    change(document)
    result = validate_document(document, image_policy=MIRRORS)
    assert result.problems == [], "\n".join(map(str, result.problems))
    assert result.ok and result.vk8s is not None


WARNINGS: list[Any] = [
    pytest.param(both(lambda d: kubeflow(d).pop("passwordSecretRef"), lambda d: kubeflow(d).update(password="hunter2!!")),
                 "spec.kubeflow.password", "prefer passwordSecretRef", id="plain-password"),
    pytest.param(lambda d: d["spec"].pop("ports"), "spec.ports", "no port named 'kubeflow'", id="no-ui-port"),
    pytest.param(lambda d: resources(d, 1, "limits").update(cpu="100m", memory="1Gi"), "spec.nodes",
                 "Kubeflow needs about 4.4 CPUs and 12Gi", id="too-small-for-kubeflow"),
    pytest.param(both(lambda d: resources(d, 1, "limits").pop("nvidia.com/gpu"),
                      lambda d: d["spec"].update(placement={"gpuModel": "A100"})),
                 "spec.placement.gpuModel", "no node requests nvidia.com/gpu", id="gpu-model-without-gpus"),
    pytest.param(lambda d: node(d, 0).update(gpuModel="A100"), "spec.nodes[0].gpuModel", "requests no nvidia.com/gpu",
                 id="node-gpu-model-without-gpus"),
]


@pytest.mark.parametrize(("change", "path", "fragment"), WARNINGS)
def test_warnings_do_not_invalidate(document: Doc, change: Change, path: str, fragment: str) -> None:
    change(document)
    result = validate_document(document)
    assert result.ok and result.vk8s is not None, result.problems
    assert result.errors == []
    assert [(w.path, fragment in w.message) for w in result.warnings] == [(path, True)]


def test_capacity_warning_skips_unbounded_nodes(document: Doc) -> None:
    resources(document, 1, "limits").update(cpu="100m", memory="1Gi")
    add_worker(document, image="ghcr.io/vk8s/kink:v1.36")  # no resources: may use the whole host node
    assert validate_document(document).problems == []


def test_host_networks_must_not_overlap(document: Doc) -> None:
    kubernetes(document).update(podNetworkCidr="10.244.0.0/16", serviceCidr="172.20.0.0/16")
    result = validate_document(document, host_cidrs=["10.0.0.0/8", "192.168.0.0/16"])
    assert [(p.path, "overlaps the host cluster's network 10.0.0.0/8" in p.message) for p in result.errors] == [
        ("spec.kubernetes.podNetworkCidr", True)
    ]
    assert validate_document(document, host_cidrs=["192.168.0.0/16"]).ok


def catalog(*rows: dict[str, Any] | str, kubeflow: tuple[dict[str, Any], ...] = ()) -> CompatibilityMatrix:
    return CompatibilityMatrix.model_validate({"kubernetes": list(rows), "kubeflow": list(kubeflow)})


def with_image(minor: str) -> dict[str, Any]:
    return {
        "minor": minor, "release": f"{minor}.1", "kubeadmApi": "kubeadm.k8s.io/v1beta4",
        "nodeImage": f"ghcr.io/vk8s/kink:v{minor}",
    }


def test_matrix_can_be_replaced(document: Doc) -> None:
    matrix = catalog(
        with_image("1.30"), "1.36", kubeflow=({"version": "v1.9.0", "kubernetes": ["1.30"], "source": "test"},)
    )
    result = validate_document(document, matrix=matrix)
    assert [(p.path, p.message) for p in result.errors] == [
        ("spec.kubernetes.version", "Kubernetes 1.36 has no node image; available: 1.30")
    ]
    assert [p.message for p in validate_document(document, matrix=catalog("1.36")).errors] == [
        "Kubernetes 1.36 has no node image; available: none"
    ]


@pytest.mark.parametrize("version", [None, "v1.11.0"])
def test_minor_with_a_node_image_but_no_kubeflow(document: Doc, version: str | None) -> None:
    """Like the deck's 1.16 row: a cluster, but no Kubeflow; the message names the minors that have both."""
    matrix = catalog(
        with_image("1.16"), with_image("1.36"), "1.37",
        kubeflow=({"version": "v1.11.0", "kubernetes": ["1.36", "1.37"], "source": "test"},),
    )
    on("1.16")(document)
    kubeflow(document).update(version=version)
    if version is None:
        kubeflow(document).pop("version")
    result = validate_document(document, matrix=matrix)
    assert [(p.path, p.message) for p in result.errors] == [
        ("spec.kubeflow", "no Kubeflow release is compatible with Kubernetes 1.16; remove the kubeflow block or use "
         "Kubernetes 1.36")
    ]
    document["spec"].pop("kubeflow")
    document["spec"].pop("ports")
    assert validate_document(document, matrix=matrix).problems == []


# --- the gs-optops layout: problems point where the user wrote the block ----------------------------


@pytest.mark.parametrize(
    ("change", "path", "fragment"),
    [
        (lambda d: node(d, 0)["kubeflow"].update(version="v1.5.0"), "spec.nodes[0].kubeflow.version",
         "compatible with Kubernetes 1.20: v1.4.0, v1.3.0"),
        (lambda d: node(d, 0)["kubeflow"].update(email="nope"), "spec.nodes[0].kubeflow.email", "email address"),
        (lambda d: node(d, 0)["kubernetes"].update(serviceCidr="80.244.0.0/20"), "spec.nodes[0].kubernetes.serviceCidr",
         "overlaps podNetworkCidr"),
        (lambda d: node(d, 0)["kubernetes"].update(podNetworkCidr="80.244.0.1/16"),
         "spec.nodes[0].kubernetes.podNetworkCidr", "did you mean"),
        (lambda d: d["spec"].update(kubeflow={"email": "a@example.com"}), "spec", "set both at spec level and under nodes[0]"),
    ],
)
def test_problems_in_master_blocks_keep_their_place(change: Change, path: str, fragment: str) -> None:
    document = load_sample("sample3.yaml")
    change(document)
    result = validate_document(document)
    assert any(p.path == path and fragment in p.message for p in result.errors), "\n".join(map(str, result.problems))


def test_deck_minor_without_a_node_image_is_refused_before_kubeflow() -> None:
    """1.16 is in the deck's table (no Kubeflow runs on it) but has no node image: that is what is said."""
    document = valid_document()
    on("1.16")(document)
    kubeflow(document).update(version="v0.5.1")
    assert [(p.path, p.message) for p in validate_document(document).errors] == [
        ("spec.kubernetes.version", "Kubernetes 1.16 has no node image; available: 1.20, 1.34-1.36")
    ]


@pytest.mark.parametrize("document", [[], "text", 42, None])
def test_non_mapping_documents(document: Any) -> None:
    result = validate_document(document)
    assert not result.ok
    assert result.problems[0].path == "(document)"


@pytest.mark.parametrize(
    ("loc", "path"),
    [
        (("spec", "nodes", 1, "resources", "limits", "nvidia.com/gpu"), 'spec.nodes[1].resources.limits["nvidia.com/gpu"]'),
        (("metadata", "name"), "metadata.name"),
        (("spec", "ports", 0), "spec.ports[0]"),
        ((), "(document)"),
    ],
)
def test_format_path(loc: tuple[str | int, ...], path: str) -> None:
    assert format_path(loc) == path


def test_problem_renders_path_then_message() -> None:
    problem = Problem("spec.nodes[0].role", "not an allowed value")
    assert str(problem) == "spec.nodes[0].role: not an allowed value"
    assert problem.severity is Severity.ERROR


def test_all_errors_of_a_document_are_reported_at_once(document: Doc) -> None:
    resources(document, 0, "requests").update(cpu="5")
    resources(document, 1, "requests").update({"nvidia.com/gpu": 1})
    kubeflow(document).update(version="v1.4.0")
    paths = {p.path for p in validate_document(document).errors}
    assert paths == {
        "spec.nodes[0].resources.requests.cpu",
        'spec.nodes[1].resources.limits["nvidia.com/gpu"]',
        "spec.kubeflow.version",
    }


def test_validate_vk8s_checks_a_parsed_object(document: Doc) -> None:
    vk8s = Vk8s.model_validate(document)
    assert validate_vk8s(vk8s) == []
    document["spec"]["nodes"][1]["role"] = "master"
    assert [p.path for p in validate_vk8s(Vk8s.model_validate(document))] == ["spec.nodes[1].role"]


@pytest.mark.parametrize(
    ("image", "refusal"),
    [
        ("ghcr.io/vk8s/kink:v1.36", "has no digest"),
        ("ghcr.io/vk8s/kink:v1.36@sha256:" + "a" * 64, None),
        ("ghcr.io/vk8s/kink@sha256:" + "a" * 64, None),
        ("ghcr.io/vk8s/kink@sha256:" + "A" * 64, "is not an image reference"),
        ("host:5000/vk8s/kink@sha256:" + "a" * 64, "not from an allowed repository; allowed: ghcr.io/vk8s/kink"),
    ],
)
def test_a_policy_can_require_digests(document: Doc, image: str, refusal: str | None) -> None:
    on(None, image)(document)
    kubernetes(document)["version"] = "1.36"
    result = validate_document(document, image_policy=ImagePolicy(require_digest=True))
    found = [problem.message for problem in result.errors if problem.path.endswith(".image")]
    if refusal is None:
        assert found == []
    else:
        assert found and refusal in found[0], found


def test_nodes_without_an_image_get_the_catalog_image_whatever_the_policy(document: Doc) -> None:
    on("1.36", [None, None])(document)
    strict = ImagePolicy(repositories=("registry.local/kink",), require_digest=True)
    assert validate_document(document, image_policy=strict).problems == []


@pytest.mark.parametrize("prefix", ["", "ghcr.io/vk8s/kink:v1.36", "ghcr.io/vk8s/kink@sha256:" + "a" * 64, "a b"])
def test_policy_refuses_prefixes_that_are_not_repositories(prefix: str) -> None:
    with pytest.raises(ValueError, match="is not a registry or repository"):
        ImagePolicy(repositories=(prefix,))


def test_default_policy_allows_the_catalog_repositories() -> None:
    assert ImagePolicy().repositories == ("ghcr.io/vk8s/kink",)
