"""The one loader of inner kubeconfigs: certificate data for the expected server, nothing else."""

from __future__ import annotations

import base64
import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from libs.kube.inner import KubeconfigRefused, inner_client, inner_credentials

SERVER = "https://10.200.0.2:6443"
DATA = base64.b64encode(b"not-a-real-pem").decode()


def kubeadm_admin_conf() -> dict[str, Any]:
    """The shape kubeadm writes to admin.conf."""
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "kubernetes", "cluster": {"server": SERVER, "certificate-authority-data": DATA}}],
        "contexts": [{"name": "kubernetes-admin@kubernetes", "context": {"cluster": "kubernetes", "user": "admin"}}],
        "current-context": "kubernetes-admin@kubernetes",
        "preferences": {},
        "users": [{"name": "admin", "user": {"client-certificate-data": DATA, "client-key-data": DATA}}],
    }


def with_user(**user: Any) -> str:
    document = kubeadm_admin_conf()
    document["users"][0]["user"].update(user)
    return yaml.safe_dump(document)


def test_a_kubeadm_admin_conf_gives_its_certificate_data() -> None:
    credentials = inner_credentials(yaml.safe_dump(kubeadm_admin_conf()), server=SERVER)
    assert (credentials.server, credentials.client_key_data) == (SERVER, DATA)
    assert DATA not in repr(credentials)
    rebuilt = credentials.kubeconfig()
    assert rebuilt["users"][0]["user"] == {"client-certificate-data": DATA, "client-key-data": DATA}
    assert inner_credentials(yaml.safe_dump(rebuilt), server=SERVER) == credentials


@pytest.mark.parametrize(
    ("user", "field"),
    [
        ({"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": "sh"}}, "exec"),
        ({"auth-provider": {"name": "oidc", "config": {}}}, "auth-provider"),
        ({"token": "t0ken"}, "token"),
        ({"tokenFile": "/var/run/secrets/kubernetes.io/serviceaccount/token"}, "tokenFile"),
        ({"client-certificate": "/etc/kubernetes/pki/admin.crt"}, "client-certificate"),
        ({"password": "hunter2"}, "password"),
        ({"as": "system:admin"}, "as"),
    ],
)
def test_anything_but_certificate_data_in_the_user_is_refused(user: dict[str, Any], field: str) -> None:
    with pytest.raises(KubeconfigRefused) as refused:
        inner_credentials(with_user(**user), server=SERVER)
    assert str(refused.value).startswith(f"users[admin].user.{field}: refused; a kubeconfig the platform trusts")
    for value in ("t0ken", "hunter2", "/var/run"):
        assert value not in str(refused.value)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["clusters"][0]["cluster"].update(server="https://169.254.169.254"),
         "clusters[kubernetes].cluster.server: 'https://169.254.169.254' is not this cluster's API server "
         "(https://10.200.0.2:6443)"),
        (lambda d: d["clusters"][0]["cluster"].update({"insecure-skip-tls-verify": True}),
         "clusters[kubernetes].cluster.insecure-skip-tls-verify: refused"),
        (lambda d: d["clusters"][0]["cluster"].update({"proxy-url": "http://evil:3128"}),
         "clusters[kubernetes].cluster.proxy-url: refused"),
        (lambda d: d["clusters"][0]["cluster"].update({"certificate-authority": "/etc/ca.crt"}),
         "clusters[kubernetes].cluster.certificate-authority: refused"),
        (lambda d: d["users"][0]["user"].pop("client-key-data"), "users[admin].user.client-key-data: missing"),
        (lambda d: d["users"][0]["user"].update({"client-key-data": "%%%"}),
         "users[admin].user.client-key-data: not base64 data"),
        (lambda d: d.update({"current-context": "other"}), "contexts[other]: missing"),
        (lambda d: d.pop("current-context"), "current-context: missing"),
        (lambda d: d["users"].append(copy.deepcopy(d["users"][0])), "users[admin]: named twice"),
    ],
)
def test_other_changes_are_refused_with_the_field_named(change: Any, message: str) -> None:
    document = kubeadm_admin_conf()
    change(document)
    with pytest.raises(KubeconfigRefused) as refused:
        inner_credentials(yaml.safe_dump(document), server=SERVER)
    assert str(refused.value).startswith(message), refused.value


def test_the_generating_stage_reads_any_https_server_but_never_plain_http() -> None:
    document = kubeadm_admin_conf()
    assert inner_credentials(yaml.safe_dump(document), server=None).server == SERVER
    document["clusters"][0]["cluster"]["server"] = "http://10.200.0.2:8080"
    with pytest.raises(KubeconfigRefused, match="is not an https URL"):
        inner_credentials(yaml.safe_dump(document), server=None)


@pytest.mark.parametrize("text", ["", "- a\n- b\n", "a: [unclosed"])
def test_what_is_not_a_kubeconfig_is_refused(text: str) -> None:
    with pytest.raises(KubeconfigRefused):
        inner_credentials(text, server=SERVER)


async def test_the_client_never_runs_an_exec_plugin(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    text = with_user(exec={"apiVersion": "client.authentication.k8s.io/v1", "command": "touch", "args": [str(marker)]})
    with pytest.raises(KubeconfigRefused, match=r"users\[admin\]\.user\.exec: refused"):
        await inner_client(text, server=SERVER)
    assert not marker.exists()
