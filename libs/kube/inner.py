"""Clients of a virtual cluster's API server, built from certificate data only.

An inner kubeconfig is read from a Secret a tenant may be able to write, and the official loader
runs `users[].exec.command`, follows `auth-provider`s and reads token and certificate files: each
would run or read something inside the service's pod. `inner_credentials` accepts the current
context only when its cluster is `server` + `certificate-authority-data` and its user
`client-certificate-data` + `client-key-data` (what kubeadm writes), with an https server that is
the one expected; `inner_client` builds the client from those four values and nothing else.
Messages name the field and never repeat a credential.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml
from kubernetes.aio import client, config

CLUSTER_FIELDS = ("server", "certificate-authority-data")
USER_FIELDS = ("client-certificate-data", "client-key-data")
_ONLY = (
    "a kubeconfig the platform trusts carries certificate data only "
    f"({', '.join(USER_FIELDS)}); exec plugins, auth providers, tokens, passwords and files are not accepted"
)


class KubeconfigRefused(ValueError):
    """The kubeconfig is not one the platform trusts; the message names the field."""


@dataclass(frozen=True, repr=False)
class InnerCredentials:
    server: str
    certificate_authority_data: str
    client_certificate_data: str
    client_key_data: str

    def kubeconfig(self) -> dict[str, Any]:
        """A kubeconfig of these four values alone."""
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {"name": "inner", "cluster": {"server": self.server, CLUSTER_FIELDS[1]: self.certificate_authority_data}}
            ],
            "users": [
                {
                    "name": "inner",
                    "user": {USER_FIELDS[0]: self.client_certificate_data, USER_FIELDS[1]: self.client_key_data},
                }
            ],
            "contexts": [{"name": "inner", "context": {"cluster": "inner", "user": "inner"}}],
            "current-context": "inner",
        }


def _named(document: Mapping[str, Any], section: str, name: Any, field: str) -> Mapping[str, Any]:
    entries = document.get(section)
    if not isinstance(entries, list):
        raise KubeconfigRefused(f"{section}: missing; expected a list of named entries")
    found = [entry for entry in entries if isinstance(entry, Mapping) and entry.get("name") == name]
    if len(found) != 1:
        raise KubeconfigRefused(f"{section}[{name}]: {'missing' if not found else 'named twice'}")
    value = found[0].get(field)
    if not isinstance(value, Mapping):
        raise KubeconfigRefused(f"{section}[{name}].{field}: missing; expected a mapping")
    return value


def _only(entry: Mapping[str, Any], path: str, allowed: tuple[str, ...]) -> dict[str, str]:
    for key in entry:
        if key not in allowed:
            raise KubeconfigRefused(f"{path}.{key}: refused; {_ONLY}")
    values = {}
    for key in allowed:
        value = entry.get(key)
        if not isinstance(value, str) or not value:
            raise KubeconfigRefused(f"{path}.{key}: missing; {_ONLY}")
        values[key] = value
    return values


def _base64(value: str, path: str) -> str:
    try:
        base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise KubeconfigRefused(f"{path}: not base64 data") from None
    return value


def inner_credentials(text: str, *, server: str | None) -> InnerCredentials:
    """The certificate credentials of `text`'s current context; `server`: the API server it must
    name (None: any https server, for the stage that generated the kubeconfig)."""
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError:
        raise KubeconfigRefused("not a YAML kubeconfig") from None
    if not isinstance(document, Mapping):
        raise KubeconfigRefused("not a kubeconfig: expected a mapping with clusters, users and contexts")
    current = document.get("current-context")
    if not isinstance(current, str) or not current:
        raise KubeconfigRefused("current-context: missing")
    context = _named(document, "contexts", current, "context")
    cluster_name, user_name = context.get("cluster"), context.get("user")
    cluster_path, user_path = f"clusters[{cluster_name}].cluster", f"users[{user_name}].user"
    cluster = _only(_named(document, "clusters", cluster_name, "cluster"), cluster_path, CLUSTER_FIELDS)
    user = _only(_named(document, "users", user_name, "user"), user_path, USER_FIELDS)
    if not cluster["server"].startswith("https://"):
        raise KubeconfigRefused(f"{cluster_path}.server: {cluster['server']!r} is not an https URL")
    if server is not None and cluster["server"] != server:
        raise KubeconfigRefused(
            f"{cluster_path}.server: {cluster['server']!r} is not this cluster's API server ({server})"
        )
    return InnerCredentials(
        server=cluster["server"],
        certificate_authority_data=_base64(cluster[CLUSTER_FIELDS[1]], f"{cluster_path}.{CLUSTER_FIELDS[1]}"),
        client_certificate_data=_base64(user[USER_FIELDS[0]], f"{user_path}.{USER_FIELDS[0]}"),
        client_key_data=_base64(user[USER_FIELDS[1]], f"{user_path}.{USER_FIELDS[1]}"),
    )


async def inner_client(text: str, *, server: str, proxy_url: str | None = None) -> client.ApiClient:
    """An ApiClient of the inner cluster at `server`; KubeconfigRefused for anything else."""
    credentials = inner_credentials(text, server=server)
    configuration = client.Configuration()
    await config.load_kube_config_from_dict(credentials.kubeconfig(), client_configuration=configuration)
    if proxy_url:
        configuration.proxy = proxy_url
    return client.ApiClient(configuration)
