"""The platform namespace of a cluster: a DNS label, deterministic, one per (tenant namespace, cluster)."""

from __future__ import annotations

import re

import pytest

from libs.kube.vnodes import MAX_NAMESPACE_NAME, platform_namespace, platform_namespace_body

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def test_readable_where_it_fits_and_the_same_every_time() -> None:
    name = platform_namespace("team-a", "sample3")

    assert name.startswith("vk8s-team-a-sample3-") and len(name) == len("vk8s-team-a-sample3-") + 8
    assert platform_namespace("team-a", "sample3") == name


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (("a", "b-c"), ("a-b", "c")),  # read alike
        (("t" * 63, "x" * 60 + "1"), ("t" * 63, "x" * 60 + "2")),  # shortened alike
        (("team", "a.b"), ("team", "a-b")),  # a dot is written as a dash
    ],
)
def test_pairs_that_read_alike_get_different_namespaces(first: tuple[str, str], second: tuple[str, str]) -> None:
    assert platform_namespace(*first) != platform_namespace(*second)


@pytest.mark.parametrize("pair", [("t" * 63, "c" * 253), ("a", "b"), ("team", "x.y.z"), ("t-", "-c")])
def test_always_a_dns_label(pair: tuple[str, str]) -> None:
    name = platform_namespace(*pair)

    assert len(name) <= MAX_NAMESPACE_NAME and DNS_LABEL.match(name), name


def test_the_namespace_says_whose_it_is() -> None:
    body = platform_namespace_body("team-a", "sample3", "uid-1")

    assert body["metadata"]["name"] == platform_namespace("team-a", "sample3")
    assert body["metadata"]["labels"] == {
        "app": "vk8s",
        "clusterName": "sample3",
        "vk8s.skt.co.kr/cluster-uid": "uid-1",
        "vk8s.skt.co.kr/tenant-namespace": "team-a",
    }
