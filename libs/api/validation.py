"""Validation of Vk8s documents for services and the CLI.

`validate_document` parses a document (a dict from YAML or the apiserver) and checks the rules
that span fields. Every problem names the field by path, keys that are not plain names in brackets
(`spec.nodes[1].resources.limits["nvidia.com/gpu"]`), and says what is wrong and what is allowed.
Warnings never make a document invalid.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NamedTuple

from pydantic import ValidationError

from libs.api.images import ImagePolicy
from libs.api.models import (
    EXTENDED_RESOURCE_PATTERN,
    GPU_RESOURCE,
    KUBEFLOW_PASSWORD_KEY,
    KUBEFLOW_UI_PORT_NAME,
    NODE_LEVEL_BLOCKS,
    PATTERN_HELP,
    WHOLE_COUNT_PATTERN,
    NodeRole,
    NodeSpec,
    Vk8s,
    Vk8sSpec,
    kubeflow_user_secret_name,
)
from libs.api.quantity import parse_quantity, to_millis, to_units
from libs.api.versions import (
    CompatibilityMatrix,
    default_matrix,
    kubernetes_minor,
    kubernetes_minor_from_image,
    kubernetes_sort_key,
)

Loc = tuple[str | int, ...]
ROOT_PATH = "(document)"
# A key written after a dot; any other (nvidia.com/gpu) is written in brackets, quoted.
_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")

_STANDARD_RESOURCES = ("cpu", "memory", "ephemeral-storage")
_ALLOWED_RESOURCES = "cpu, memory, ephemeral-storage, hugepages-<size>, or a vendor resource such as nvidia.com/gpu"
# kube-controller-manager gives every node a /24 (IPv4) or /64 (IPv6) of the pod network.
_NODE_POD_PREFIX = {4: 24, 6: 64}
# kube-apiserver refuses service ranges of more than 2^20 addresses.
_MIN_SERVICE_PREFIX = {4: 12, 6: 108}
# What a full Kubeflow install needs across all nodes.
_KUBEFLOW_CPU_MILLIS = 4400
_KUBEFLOW_MEMORY_BYTES = 12 * 2**30


class Severity(StrEnum):
    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True)
class Problem:
    """One finding: the field it is about and what is wrong with it."""

    path: str
    message: str
    severity: Severity = Severity.ERROR

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class Validation(NamedTuple):
    """Result of validating one document; `vk8s` is set only when there is no error."""

    vk8s: Vk8s | None
    problems: list[Problem]

    @property
    def errors(self) -> list[Problem]:
        return [problem for problem in self.problems if problem.severity is Severity.ERROR]

    @property
    def warnings(self) -> list[Problem]:
        return [problem for problem in self.problems if problem.severity is Severity.WARNING]

    @property
    def ok(self) -> bool:
        return not self.errors


def field_path(loc: Iterable[str | int]) -> str:
    """('spec', 'nodes', 0, 'resources', 'limits', 'nvidia.com/gpu') ->
    'spec.nodes[0].resources.limits["nvidia.com/gpu"]'; '' for the root. The one path format of
    every problem: `vk8s validate`, rejections and the status."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif _PLAIN_KEY.fullmatch(part):
            path += f".{part}" if path else part
        else:
            path += f"[{json.dumps(part)}]"
    return path


def format_path(loc: Iterable[str | int]) -> str:
    """field_path, with the whole document named when the path is empty."""
    return field_path(loc) or ROOT_PATH


def validate_document(
    document: Any,
    *,
    matrix: CompatibilityMatrix | None = None,
    host_cidrs: Sequence[str] = (),
    image_policy: ImagePolicy | None = None,
) -> Validation:
    """Parses and checks one Vk8s document.

    `host_cidrs` are the host cluster's pod and service networks, which the inner cluster's
    networks must not overlap. `image_policy` says which node images are allowed (default: the
    catalog's repositories).
    """
    relocate = _origin_relocator(document)
    try:
        vk8s = Vk8s.model_validate(document)
    except ValidationError as exc:
        return Validation(None, problems_from_error(exc, relocate=relocate))
    report = _Report(relocate)
    _check(vk8s, matrix or default_matrix(), host_cidrs, image_policy or ImagePolicy(), report)
    ok = not any(problem.severity is Severity.ERROR for problem in report.problems)
    return Validation(vk8s if ok else None, report.problems)


def validate_vk8s(
    vk8s: Vk8s,
    *,
    matrix: CompatibilityMatrix | None = None,
    host_cidrs: Sequence[str] = (),
    image_policy: ImagePolicy | None = None,
) -> list[Problem]:
    """The checks that span fields, for an object that already parsed (e.g. read from the apiserver)."""
    report = _Report(lambda loc: loc)
    _check(vk8s, matrix or default_matrix(), host_cidrs, image_policy or ImagePolicy(), report)
    return report.problems


def _check(
    vk8s: Vk8s, matrix: CompatibilityMatrix, host_cidrs: Sequence[str], image_policy: ImagePolicy, report: _Report
) -> None:
    spec = vk8s.spec
    _check_nodes(spec, report)
    for index, refusal in node_image_refusals(spec, image_policy).items():
        report.error(("spec", "nodes", index, "image"), refusal)
    for index, node in enumerate(spec.nodes):
        _check_resources(node, ("spec", "nodes", index), report)
        _check_tolerations(node, ("spec", "nodes", index), report)
    _check_networks(spec, [ipaddress.ip_network(cidr, strict=False) for cidr in host_cidrs], report)
    _check_ports(spec, report)
    _check_versions(spec, matrix, report)
    _check_kubeflow(vk8s, report)
    _check_placement(spec, report)


def node_image_refusals(spec: Vk8sSpec, image_policy: ImagePolicy) -> dict[int, str]:
    """Per node index, why the image the spec names may not run (nodes without one get the catalog's)."""
    refusals = {}
    for index, node in enumerate(spec.nodes):
        if node.image is not None and (refusal := image_policy.refusal(node.image)) is not None:
            refusals[index] = refusal
    return refusals


def problems_from_error(error: ValidationError, *, relocate: Callable[[Loc], Loc] | None = None) -> list[Problem]:
    """pydantic errors in the same path format as the other problems."""
    problems = []
    for detail in error.errors(include_url=False):
        loc = tuple(detail["loc"])
        path = format_path(relocate(loc) if relocate else loc)
        problems.append(Problem(path, _describe(detail, loc)))
    return problems


class _Report:
    def __init__(self, relocate: Callable[[Loc], Loc]) -> None:
        self.problems: list[Problem] = []
        self._relocate = relocate

    def error(self, loc: Loc, message: str) -> None:
        self.problems.append(Problem(format_path(self._relocate(loc)), message))

    def warning(self, loc: Loc, message: str) -> None:
        self.problems.append(Problem(format_path(self._relocate(loc)), message, Severity.WARNING))


def _origin_relocator(document: Any) -> Callable[[Loc], Loc]:
    """Maps spec.kubernetes/spec.kubeflow back under the node they were written in (gs-optops layout)."""
    origins: dict[str, Loc] = {}
    spec = document.get("spec") if isinstance(document, Mapping) else None
    nodes = spec.get("nodes") if isinstance(spec, Mapping) else None
    if isinstance(spec, Mapping) and isinstance(nodes, (list, tuple)):
        for block in NODE_LEVEL_BLOCKS:
            if block in spec:
                continue
            for index, node in enumerate(nodes):
                if isinstance(node, Mapping) and block in node:
                    origins[block] = ("spec", "nodes", index, block)
                    break

    def relocate(loc: Loc) -> Loc:
        if len(loc) >= 2 and loc[0] == "spec" and loc[1] in origins:
            return origins[str(loc[1])] + loc[2:]
        return loc

    return relocate


# --- pydantic errors -> messages -----------------------------------------------------------------

_SCALARS = (str, int, float, bool)


def _describe(detail: Mapping[str, Any], loc: Loc) -> str:
    kind = detail["type"]
    context = detail.get("ctx") or {}
    value = detail.get("input")
    secret = bool(loc) and loc[-1] == "password"
    got = "" if secret or not isinstance(value, _SCALARS) else f" (got {value!r})"
    if kind == "missing":
        return "required field is missing"
    if kind == "extra_forbidden":
        allowed = _allowed_fields(loc[:-1])
        return "unknown field" + (f"; allowed here: {', '.join(allowed)}" if allowed else "")
    if kind in ("literal_error", "enum"):
        return f"not an allowed value{got}; allowed: {context.get('expected')}"
    if kind == "string_pattern_mismatch":
        pattern = context.get("pattern", "")
        return f"must be {PATTERN_HELP.get(pattern, f'a string matching {pattern}')}{got}"
    if kind == "string_type" and isinstance(value, (int, float)) and not isinstance(value, bool):
        example = "" if secret else f', e.g. "{value}"'
        return f"must be a string; quote the value in YAML{example}"
    if kind in ("greater_than_equal", "less_than_equal") and (allowed_range := _allowed_range(loc)):
        return f"out of range{got}; allowed: {allowed_range}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"must be a mapping of fields, got {_type_name(value)}"
    if kind == "too_long":
        return f"{context.get('actual_length')} items; at most {context.get('max_length')} allowed"
    if kind in ("list_type", "tuple_type"):
        return f"must be a list, got {_type_name(value)}"
    message = str(detail["msg"]).removeprefix("Value error, ")
    if not message.startswith(("Input should", "String should", "List should", "Tuple should", "Value should")):
        return message  # ours, already phrased for users
    return "must" + message.split("should", 1)[1] + got


def _type_name(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", type(None): "nothing"}.get(
        type(value), type(value).__name__
    )


@functools.cache
def _document_schema() -> dict[str, Any]:
    return Vk8s.model_json_schema(by_alias=True)


def _schema_at(loc: Loc) -> dict[str, Any]:
    """The JSON schema of the field at `loc` (empty when the path leaves the schema)."""
    schema = _document_schema()
    definitions = schema.get("$defs", {})

    def resolve(node: dict[str, Any]) -> dict[str, Any]:
        while True:
            if "$ref" in node:
                node = definitions[node["$ref"].rsplit("/", 1)[1]]
            elif "anyOf" in node and "x-kubernetes-int-or-string" not in node:
                node = next((branch for branch in node["anyOf"] if branch.get("type") != "null"), {})
            else:
                return node

    node = resolve(schema)
    for part in loc:
        if isinstance(part, int):
            node = resolve(node.get("items", {}))
        elif "properties" in node:
            node = resolve(node["properties"].get(part, {}))
        else:
            node = resolve(node.get("additionalProperties") or {})
    return node


def _allowed_fields(loc: Loc) -> list[str]:
    return list(_schema_at(loc).get("properties", {}))


def _allowed_range(loc: Loc) -> str | None:
    schema = _schema_at(loc)
    if "minimum" in schema and "maximum" in schema:
        return f"{schema['minimum']}-{schema['maximum']}"
    return None


# --- checks that span fields ---------------------------------------------------------------------


def _check_nodes(spec: Vk8sSpec, report: _Report) -> None:
    masters = [index for index, node in enumerate(spec.nodes) if node.role is NodeRole.MASTER]
    if not masters:
        report.error(("spec", "nodes"), "no master node; exactly one node must have role master, listed first")
    else:
        if masters[0] != 0:
            report.error(
                ("spec", "nodes", masters[0], "role"),
                f"the master node must be listed first (it is nodes[{masters[0]}])",
            )
        for index in masters[1:]:
            report.error(
                ("spec", "nodes", index, "role"),
                f"second master node (nodes[{masters[0]}] is the master); exactly one master is allowed, "
                "use role worker",
            )
    first_index: dict[str, int] = {}
    for index, node in enumerate(spec.nodes):
        if node.name in first_index:
            report.error(
                ("spec", "nodes", index, "name"),
                f"duplicate node name {node.name!r} (also nodes[{first_index[node.name]}]); node names must be unique",
            )
        first_index.setdefault(node.name, index)


def _is_extended_resource(name: str) -> bool:
    """Vendor resources (nvidia.com/gpu): whole counts, no overcommit; Kubernetes' own rule."""
    return re.match(EXTENDED_RESOURCE_PATTERN, name) is not None


def _check_resources(node: NodeSpec, node_loc: Loc, report: _Report) -> None:
    resources = node.resources
    parsed: dict[str, dict[str, Any]] = {"requests": {}, "limits": {}}
    for kind in ("requests", "limits"):
        for name, value in getattr(resources, kind).items():
            loc = (*node_loc, "resources", kind, name)
            if not (name in _STANDARD_RESOURCES or name.startswith("hugepages-") or "/" in name):
                report.error(loc, f"unknown resource {name!r}; allowed: {_ALLOWED_RESOURCES}")
                continue
            quantity = parse_quantity(value)
            if quantity < 0:
                report.error(loc, f"{value} is negative; quantities must be 0 or more")
                continue
            if _is_extended_resource(name) and re.fullmatch(WHOLE_COUNT_PATTERN, str(value)) is None:
                report.error(
                    loc, f"{value} is not a whole number in digits; {name} is counted in whole devices, e.g. 1 or 2"
                )
                continue
            parsed[kind][name] = (quantity, value)
    for name in parsed["requests"].keys() & parsed["limits"].keys():
        (request, request_text), (limit, limit_text) = parsed["requests"][name], parsed["limits"][name]
        if _is_extended_resource(name):
            if request != limit:
                report.error(
                    (*node_loc, "resources", "limits", name),
                    f"request {request_text} differs from limit {limit_text}; {name} cannot be overcommitted, "
                    "so requests must equal limits (or set only one of them)",
                )
        elif request > limit:
            report.error(
                (*node_loc, "resources", "requests", name),
                f"request {request_text} exceeds limit {limit_text}; a request must not exceed its limit",
            )


def _check_tolerations(node: NodeSpec, node_loc: Loc, report: _Report) -> None:
    for index, toleration in enumerate(node.tolerations):
        loc = (*node_loc, "tolerations", index)
        if toleration.operator == "Exists" and toleration.value:
            report.error((*loc, "value"), "must be empty when operator is Exists")
        if not toleration.key and toleration.operator != "Exists":
            report.error((*loc, "operator"), "an empty key matches every taint and requires operator Exists")
        if toleration.toleration_seconds is not None and toleration.effect != "NoExecute":
            report.error((*loc, "tolerationSeconds"), "only applies with effect NoExecute")


def _check_networks(spec: Vk8sSpec, host_networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network],
                    report: _Report) -> None:
    base = ("spec", "kubernetes")
    pods = ipaddress.ip_network(spec.kubernetes.pod_network_cidr)
    services = ipaddress.ip_network(spec.kubernetes.service_cidr)
    if pods.version != services.version:
        report.error(
            (*base, "serviceCidr"),
            f"serviceCidr {services} is IPv{services.version} but podNetworkCidr {pods} is IPv{pods.version}; "
            "use one IP family for both",
        )
        return
    if pods.overlaps(services):
        report.error(
            (*base, "serviceCidr"),
            f"serviceCidr {services} overlaps podNetworkCidr {pods}; the two ranges must be disjoint",
        )
    if services.prefixlen < _MIN_SERVICE_PREFIX[services.version]:
        report.error(
            (*base, "serviceCidr"),
            f"serviceCidr {services} is too large; the prefix length must be at least "
            f"/{_MIN_SERVICE_PREFIX[services.version]}",
        )
    node_prefix = _NODE_POD_PREFIX[pods.version]
    widest = node_prefix - math.ceil(math.log2(len(spec.nodes))) if len(spec.nodes) > 1 else node_prefix
    if pods.prefixlen > widest:
        report.error(
            (*base, "podNetworkCidr"),
            f"podNetworkCidr {pods} is too small for {len(spec.nodes)} node(s), each of which gets a "
            f"/{node_prefix}; use a prefix length of at most /{widest}",
        )
    for field, network in (("podNetworkCidr", pods), ("serviceCidr", services)):
        for host in host_networks:
            if network.overlaps(host):
                report.error(
                    (*base, field),
                    f"{network} overlaps the host cluster's network {host}; pick a range outside "
                    f"{', '.join(str(h) for h in host_networks)}",
                )


def _check_ports(spec: Vk8sSpec, report: _Report) -> None:
    names: dict[str, int] = {}
    ports: dict[tuple[int, str], int] = {}
    for index, port in enumerate(spec.ports):
        loc = ("spec", "ports", index)
        if port.name is None:
            if len(spec.ports) > 1:
                report.error((*loc, "name"), "required when more than one port is listed")
        elif port.name in names:
            report.error((*loc, "name"), f"duplicate port name {port.name!r} (also ports[{names[port.name]}])")
        else:
            names[port.name] = index
        key = (port.port, port.protocol or "TCP")
        if key in ports:
            report.error((*loc, "port"), f"{key[0]}/{key[1]} is listed twice (also ports[{ports[key]}])")
        ports.setdefault(key, index)
        if port.node_port is not None:
            # Node ports are host-wide: one tenant's pick could squat another's.
            report.error(
                (*loc, "nodePort"),
                f"{port.node_port} is refused: node ports are host-wide, so the platform allocates them; remove "
                "nodePort (the allocated one is on the cluster's ports Service)",
            )
    if spec.kubeflow is not None and KUBEFLOW_UI_PORT_NAME not in names:
        report.warning(
            ("spec", "ports"),
            f"no port named {KUBEFLOW_UI_PORT_NAME!r}; the Kubeflow UI will not be reachable from outside the "
            "cluster (add e.g. {name: kubeflow, port: 30000, targetPort: 30000})",
        )


def _ranges(minors: Iterable[str]) -> str:
    """['1.11', '1.12', '1.13', '1.16'] -> '1.11-1.13, 1.16'."""
    ordered = sorted(minors, key=kubernetes_sort_key)
    groups: list[list[str]] = []
    for minor in ordered:
        major, number = kubernetes_sort_key(minor)
        if groups and kubernetes_sort_key(groups[-1][-1]) == (major, number - 1):
            groups[-1].append(minor)
        else:
            groups.append([minor])
    return ", ".join(group[0] if len(group) == 1 else f"{group[0]}-{group[-1]}" for group in groups)


def _check_versions(spec: Vk8sSpec, matrix: CompatibilityMatrix, report: _Report) -> None:
    node_minors = {
        index: kubernetes_minor_from_image(node.image) for index, node in enumerate(spec.nodes) if node.image
    }
    master_index = next((i for i, node in enumerate(spec.nodes) if node.role is NodeRole.MASTER), 0)
    if spec.kubernetes.version is not None:
        minor = kubernetes_minor(spec.kubernetes.version)
        source: Loc = ("spec", "kubernetes", "version")
        for index, image_minor in node_minors.items():
            if image_minor is not None and image_minor != minor:
                report.error(
                    ("spec", "nodes", index, "image"),
                    f"the image tag is Kubernetes {image_minor} but spec.kubernetes.version is "
                    f"{spec.kubernetes.version}; use an image for {minor} or leave image out",
                )
    else:
        for index, node in enumerate(spec.nodes):
            if node.image is None:
                report.error(
                    ("spec", "nodes", index, "image"),
                    "no image and no spec.kubernetes.version; set one of them so the node image can be chosen",
                )
        resolved = spec.kubernetes_version()
        if resolved is None:
            if node_minors:
                image_index = master_index if master_index in node_minors else min(node_minors)
                report.error(
                    ("spec", "nodes", image_index, "image"),
                    f"cannot tell the Kubernetes version from the tag of {spec.nodes[image_index].image!r}; "
                    "use a tag such as kink:v1.29 or set spec.kubernetes.version",
                )
            return
        minor = resolved
        source_index = next(i for i, image_minor in node_minors.items() if image_minor == minor)
        source = ("spec", "nodes", source_index, "image")
        for index, image_minor in node_minors.items():
            if image_minor is not None and image_minor != minor:
                report.error(
                    ("spec", "nodes", index, "image"),
                    f"the image tag is Kubernetes {image_minor} but nodes[{source_index}] runs {minor}; "
                    "all vNodes must run the same Kubernetes minor",
                )
    if not matrix.is_available(minor):
        report.error(
            source,
            f"Kubernetes {minor} has no node image; available: {_ranges(matrix.available_kubernetes()) or 'none'}",
        )
        return
    if spec.kubeflow is not None:
        _check_kubeflow_version(spec.kubeflow.version, minor, matrix, report)


def _check_kubeflow_version(version: str | None, kubernetes: str, matrix: CompatibilityMatrix, report: _Report) -> None:
    """`version` None means "the newest compatible", which only needs one to exist."""
    compatible = matrix.compatible_kubeflow(kubernetes)
    if not compatible:
        report.error(
            ("spec", "kubeflow"),
            f"no Kubeflow release is compatible with Kubernetes {kubernetes}; remove the kubeflow block or use "
            f"Kubernetes {_ranges(set(matrix.kubernetes_with_kubeflow()) & set(matrix.available_kubernetes()))}",
        )
        return
    if version is None or version in compatible:
        return
    runs_on = matrix.compatible_kubernetes(version)
    reason = (
        f"Kubeflow {version} runs on Kubernetes {_ranges(runs_on)}"
        if runs_on
        else f"Kubeflow {version} is not a known release"
    )
    report.error(
        ("spec", "kubeflow", "version"),
        f"{reason}, not {kubernetes}; compatible with Kubernetes {kubernetes}: {', '.join(compatible)}",
    )


def _check_kubeflow(vk8s: Vk8s, report: _Report) -> None:
    spec = vk8s.spec
    kubeflow = spec.kubeflow
    if kubeflow is None:
        return
    loc = ("spec", "kubeflow")
    if kubeflow.password is not None and kubeflow.password_secret_ref is not None:
        report.error(
            (*loc, "password"), "set either passwordSecretRef or password, not both (passwordSecretRef is preferred)"
        )
    elif kubeflow.password is not None:
        if not kubeflow.password.get_secret_value():
            report.error((*loc, "password"), "must not be empty; better, use passwordSecretRef")
        else:
            report.warning(
                (*loc, "password"),
                "a plain-text password is accepted for compatibility only; it will be moved to Secret "
                f"{kubeflow_user_secret_name(vk8s.metadata.name)!r} (key {KUBEFLOW_PASSWORD_KEY!r}); prefer "
                "passwordSecretRef: {name: <secret>, key: password}",
            )
    elif kubeflow.password_secret_ref is None:
        report.error(
            (*loc, "passwordSecretRef"),
            "the Kubeflow user needs a password; set passwordSecretRef: {name: <secret>, key: password}",
        )
    _check_kubeflow_capacity(spec, report)


def _advertised(spec: Vk8sSpec, resource: str) -> int | None:
    """Sum over vNodes of what the inner nodes advertise (limit, else request), in millis for cpu.

    None when a node sets neither, as such a node is not bounded.
    """
    total = 0
    for node in spec.nodes:
        value = node.resources.limits.get(resource, node.resources.requests.get(resource))
        if value is None:
            return None
        quantity = parse_quantity(value)
        total += to_millis(quantity) if resource == "cpu" else to_units(quantity)
    return total


def _check_kubeflow_capacity(spec: Vk8sSpec, report: _Report) -> None:
    cpu_millis = _advertised(spec, "cpu")
    memory_bytes = _advertised(spec, "memory")
    short = []
    if cpu_millis is not None and cpu_millis < _KUBEFLOW_CPU_MILLIS:
        short.append(f"{cpu_millis / 1000:g} CPUs")
    if memory_bytes is not None and memory_bytes < _KUBEFLOW_MEMORY_BYTES:
        short.append(f"{memory_bytes / 2**30:g}Gi of memory")
    if short:
        report.warning(
            ("spec", "nodes"),
            f"Kubeflow needs about 4.4 CPUs and 12Gi of memory across the vNodes; these have {' and '.join(short)}",
        )


def _check_placement(spec: Vk8sSpec, report: _Report) -> None:
    if spec.placement is not None and spec.placement.gpu_model is not None and spec.gpus_total() == 0:
        report.warning(("spec", "placement", "gpuModel"), f"has no effect: no node requests {GPU_RESOURCE}")
    for index, node in enumerate(spec.nodes):
        if node.gpu_model is not None and node.gpus() == 0:
            report.warning(
                ("spec", "nodes", index, "gpuModel"), f"has no effect: this node requests no {GPU_RESOURCE}"
            )
