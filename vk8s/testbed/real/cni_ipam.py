"""`vk8s-ipam`: the real tier's CNI IPAM plugin. A pod annotated with a fixed address (as Calico's
`cni.projectcalico.org/ipAddrs`, which the vnode stage sets from the ipmanager's allocation) gets
exactly that address when it lies in the vNode pool; every other pod gets one from host-local.

Standard library only: the container runtime starts it for every pod sandbox.
"""

from __future__ import annotations

import ipaddress
import json
import os
import ssl
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

CNI_VERSION = "1.0.0"
SUPPORTED = ["0.3.0", "0.3.1", "0.4.0", "1.0.0"]
# CNI's error codes: 7 invalid configuration, 11 try again later.
INVALID = 7
TRY_AGAIN = 11


class PluginError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def pod_of(cni_args: str) -> tuple[str, str]:
    pairs = dict(item.split("=", 1) for item in cni_args.split(";") if "=" in item)
    try:
        return pairs["K8S_POD_NAMESPACE"], pairs["K8S_POD_NAME"]
    except KeyError:
        raise PluginError(INVALID, "CNI_ARGS names no K8S_POD_NAMESPACE and K8S_POD_NAME") from None


def fixed_address(annotation: str | None, pool: ipaddress.IPv4Network) -> ipaddress.IPv4Address | None:
    """The annotated address, which must be one address of the vNode pool; None without annotation."""
    if annotation is None:
        return None
    try:
        addresses = json.loads(annotation)
        (address,) = addresses
        parsed = ipaddress.IPv4Address(address)
    except (ValueError, TypeError):
        raise PluginError(INVALID, f"annotation {annotation!r} is not a JSON list of one IPv4 address") from None
    if parsed not in pool or parsed in (pool.network_address, pool.broadcast_address, pool[1]):
        raise PluginError(INVALID, f"fixed address {parsed} is not a host address of the vNode pool {pool}")
    return parsed


def fixed_result(address: ipaddress.IPv4Address, pool: ipaddress.IPv4Network, gateway: str) -> dict[str, Any]:
    return {
        "cniVersion": CNI_VERSION,
        "ips": [{"address": f"{address}/{pool.prefixlen}", "gateway": gateway}],
        "routes": [{"dst": "0.0.0.0/0"}],
    }


def read_pod(ipam: dict[str, Any], namespace: str, name: str) -> dict[str, Any]:
    context = ssl.create_default_context(cafile=ipam["ca"])
    context.load_cert_chain(ipam["cert"], ipam["key"])
    path = f"/api/v1/namespaces/{urllib.parse.quote(namespace)}/pods/{urllib.parse.quote(name)}"
    try:
        with urllib.request.urlopen(ipam["server"] + path, context=context, timeout=10) as response:
            pod: dict[str, Any] = json.load(response)
            return pod
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise PluginError(TRY_AGAIN, f"cannot read pod {namespace}/{name}: {exc}") from None


def delegate(command: str, config: dict[str, Any]) -> str:
    """Runs host-local with its own section as the IPAM config; returns its output."""
    ipam = config["ipam"]
    delegated = {**config, "ipam": ipam["hostLocal"]}
    plugin = Path(os.environ.get("CNI_PATH", "").split(":")[0] or Path(sys.argv[0]).parent) / "host-local"
    result = subprocess.run(
        [str(plugin)], input=json.dumps(delegated), capture_output=True, text=True,
        env={**os.environ, "CNI_COMMAND": command},
    )  # fmt: skip
    if result.returncode != 0:
        raise PluginError(TRY_AGAIN, f"host-local {command} failed: {result.stdout.strip() or result.stderr.strip()}")
    return result.stdout


def handle(command: str, config: dict[str, Any], cni_args: str) -> str:
    if command == "VERSION":
        return json.dumps({"cniVersion": CNI_VERSION, "supportedVersions": SUPPORTED})
    if command in ("DEL", "CHECK"):
        # A fixed address has nothing to release; host-local releases by container id, idempotently.
        return delegate(command, config) if command == "DEL" else ""
    if command != "ADD":
        raise PluginError(4, f"unknown CNI_COMMAND {command!r}")
    ipam = config["ipam"]
    pool = ipaddress.IPv4Network(ipam["fixedPool"]["subnet"])
    namespace, name = pod_of(cni_args)
    annotations = read_pod(ipam, namespace, name)["metadata"].get("annotations") or {}
    address = fixed_address(annotations.get(ipam["annotation"]), pool)
    if address is None:
        return delegate("ADD", config)
    return json.dumps(fixed_result(address, pool, ipam["fixedPool"]["gateway"]))


def main() -> int:
    command = os.environ.get("CNI_COMMAND", "")
    try:
        config = json.loads(sys.stdin.read() or "{}") if command != "VERSION" else {}
        sys.stdout.write(handle(command, config, os.environ.get("CNI_ARGS", "")))
        return 0
    except PluginError as exc:
        sys.stdout.write(json.dumps({"cniVersion": CNI_VERSION, "code": exc.code, "msg": str(exc)}))
        return 1


if __name__ == "__main__":
    sys.exit(main())
