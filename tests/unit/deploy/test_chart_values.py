"""values.schema.json: the defaults pass, and a bad value fails the install naming the key at fault
(helm names it as a JSON pointer: /services/scheduler/replicas)."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest
import yaml

from tests.unit.deploy.helm import CHART_DIR, template


def test_default_values_match_the_schema() -> None:
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.validate(yaml.safe_load((CHART_DIR / "values.yaml").read_text()), schema)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"nats": {"auth": {"existingSecret": ""}}}, "/nats/auth/existingSecret"),
        ({"nats": {"auth": {"type": "none"}}}, "/nats/auth/type"),
        ({"nats": {"url": "http://nats:4222"}}, "/nats/url"),
        ({"nats": {"streamReplicas": 0}}, "/nats/streamReplicas"),
        ({"nats": {"auth": {"servicePasswordKey": "password"}}}, "/nats/auth/servicePasswordKey"),
        ({"nats": {"requesters": [{"user": "CI", "namespaces": ["team-a"]}]}}, "/nats/requesters/0/user"),
        ({"nats": {"requesters": [{"user": "ci", "namespaces": ["team-a.>"]}]}}, "/nats/requesters/0/namespaces/0"),
        ({"nats": {"requesters": [{"user": "ci", "namespaces": []}]}}, "/nats/requesters/0/namespaces"),
        ({"nats": {"requesters": [{"user": "gateway", "namespaces": ["team-a"]}]}}, 'user "gateway" is taken'),
        (
            {"nats": {"requesters": [{"user": "ci", "namespaces": ["a"]}, {"user": "ci", "namespaces": ["b"]}]}},
            'user "ci" is taken',
        ),
        ({"services": {"scheduler": {"replicas": 0}}}, "/services/scheduler/replicas"),
        (
            {"services": {"vnode": {"resources": {"requests": {"cpu": "lots"}}}}},
            "/services/vnode/resources/requests/cpu",
        ),
        ({"services": {"gateway": {"env": {"nats_url": "x"}}}}, "/services/gateway/env"),
        ({"services": {"frontend": {"enabled": True}}}, "'frontend' not allowed"),
        ({"podSecurityContext": {"runAsNonRoot": False}}, "/podSecurityContext/runAsNonRoot"),
        ({"image": {"digest": "latest"}}, "/image/digest"),
        ({"podAntiAffinity": "sometimes"}, "/podAntiAffinity"),
        ({"rbac": {"tenantNamespaces": ["Team_A"]}}, "/rbac/tenantNamespaces/0"),
        ({"nodeImages": {"allowedRepositories": []}}, "/nodeImages/allowedRepositories"),
        ({"nodeImages": {"allowedRepositories": ["ghcr.io/vk8s/kink@sha256:0"]}}, "/nodeImages/allowedRepositories/0"),
        ({"quotas": {"maxClustersPerNamespace": 0}}, "/quotas/maxClustersPerNamespace"),
        ({"portsServiceType": "ExternalName"}, "/portsServiceType"),
        ({"terminationGracePeriodSeconds": 5}, "/terminationGracePeriodSeconds"),
        (
            {"mesh": {"enabled": True, "metricsPrincipals": ["cluster.local/ns/monitoring/sa/prometheus"]}},
            "permissiveOperatorPort",
        ),
        ({"metrics": {"serviceMonitor": {"enabled": True}, "podMonitor": {"enabled": True}}}, "enable one of them"),
        (
            {"services": {"kubeflow": {"manifestSources": {"releases": {"1.9": {}}}}}},
            "/services/kubeflow/manifestSources/releases",
        ),
    ],
)
def test_bad_values_fail_with_the_key_named(values: dict[str, Any], message: str) -> None:
    result = template(values)
    assert result.returncode != 0, f"{values} rendered"
    assert message in result.stderr, result.stderr
