"""The chart's NATS users (templates/nats-users.yaml): one per service, named after it, with exactly the
permissions libs.events.permissions generates, and the requesters of `nats.requesters` scoped to their
namespaces; each password a nats-server variable, never a value the chart holds."""

from __future__ import annotations

import json
import re
from typing import Any

from click.testing import CliRunner

from libs.events.permissions import nats_authorization
from services.topology import NAMES, SERVICES
from tests.unit.deploy.helm import CHART_DIR, Manifest, by_component, of_kind, render
from vk8s.cli import main

PERMISSIONS_FILE = CHART_DIR / "files" / "nats-permissions.json"
SCOPES = {"ci": ["team-a", "team-b"], "ops-bot": ["*"]}
REQUESTERS = [{"user": user, "namespaces": namespaces} for user, namespaces in SCOPES.items()]


def users_conf(manifests: list[Manifest], name: str = "vk8s-nats-users") -> tuple[Manifest, list[dict[str, Any]]]:
    """The ConfigMap and its users, read as JSON once the password variables are quoted."""
    (config_map,) = [m for m in of_kind(manifests, "ConfigMap") if m["metadata"]["name"] == name]
    text = config_map["data"]["users.conf"]
    assert text.startswith("users: ["), text[:40]
    quoted = re.sub(r'("password": )(\$[A-Z0-9_]+),', r'\1"\2",', text.removeprefix("users: "))
    return config_map, json.loads(quoted)


def test_the_charts_permissions_file_is_current() -> None:
    result = CliRunner().invoke(main, ["events", "permissions"])
    assert result.exit_code == 0, result.output
    assert PERMISSIONS_FILE.read_text() == result.output, (
        "deploy/helm/vk8s/files/nats-permissions.json is stale: run "
        "`vk8s events permissions > deploy/helm/vk8s/files/nats-permissions.json`"
    )


def test_the_rendered_users_have_exactly_the_generated_permissions() -> None:
    config_map, users = users_conf(render({"nats": {"requesters": REQUESTERS}}))
    assert config_map["metadata"]["namespace"] == "vk8s-system"
    variables = {user: f"$VK8S_NATS_{user.upper().replace('-', '_')}_PASSWORD" for user in [*NAMES, *SCOPES]}
    expected = nats_authorization(
        [(topology, variables[topology.service]) for topology in SERVICES],
        {user: (variables[user], namespaces) for user, namespaces in SCOPES.items()},
    )["authorization"]["users"]
    assert sorted(users, key=lambda user: user["user"]) == sorted(expected, key=lambda user: user["user"])


def test_a_password_is_a_variable_of_the_nats_servers_never_a_value() -> None:
    _, users = users_conf(render())
    assert {user["user"]: user["password"] for user in users} == {
        name: f"$VK8S_NATS_{name.upper()}_PASSWORD" for name in NAMES
    }


def test_the_users_go_where_the_nats_servers_mount_them() -> None:
    config_map, _ = users_conf(render({"nats": {"users": {"configMapNamespace": "nats"}}}))
    assert config_map["metadata"]["namespace"] == "nats"


def test_each_service_connects_as_its_own_user_with_its_own_password_file() -> None:
    manifests = render({"nats": {"auth": {"servicePasswordKey": "nats-{service}"}}})
    for name, deployment in by_component(manifests, "Deployment").items():
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        env = {item["name"]: item for item in container["env"]}
        prefix = f"VK8S_{name.upper()}_"
        assert env[f"{prefix}NATS_USER"] == {"name": f"{prefix}NATS_USER", "value": name}
        assert env[f"{prefix}NATS_PASSWORD_FILE"]["value"] == "/etc/vk8s/nats-password/password"
        assert f"{prefix}NATS_PASSWORD" not in env
        volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
        assert volumes["nats-password"]["secret"] == {
            "secretName": "vk8s-nats", "defaultMode": 0o400, "items": [{"key": f"nats-{name}", "path": "password"}]
        }  # fmt: skip


def test_a_shared_user_renders_no_users() -> None:
    for auth in ({"type": "userPassword"}, {"type": "creds"}):
        manifests = render({"nats": {"auth": auth, "requesters": REQUESTERS}})
        assert not [m for m in of_kind(manifests, "ConfigMap") if m["metadata"]["name"] == "vk8s-nats-users"]
