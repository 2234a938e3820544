"""Reading the name and namespace of an object the apiserver returned, which the client types Optional."""

from __future__ import annotations

import pytest
from kubernetes.aio import client

from libs.kube.objects import metadata_of, name_of, namespace_of


def test_a_stored_objects_name_and_namespace_are_read_as_they_are() -> None:
    pod = client.V1Pod(metadata=client.V1ObjectMeta(name="p", namespace="team"))

    assert (name_of(pod), namespace_of(pod)) == ("p", "team")
    assert metadata_of(pod) is pod.metadata


def test_an_object_without_metadata_is_refused_saying_so() -> None:
    node = client.V1Node()

    for read in (metadata_of, name_of, namespace_of):
        with pytest.raises(ValueError, match=r"^a V1Node from the apiserver without metadata$"):
            read(node)


def test_an_object_without_a_name_or_namespace_is_refused_naming_the_field() -> None:
    node = client.V1Node(metadata=client.V1ObjectMeta())

    with pytest.raises(ValueError, match=r"a V1Node from the apiserver without metadata\.name"):
        name_of(node)
    with pytest.raises(ValueError, match=r"a V1Node from the apiserver without metadata\.namespace"):
        namespace_of(node)
