"""Reading the name and namespace of an object the apiserver returned, which the client types Optional."""

from __future__ import annotations

import pytest
from kubernetes.aio import client

from libs.kube.objects import name_of, namespace_of


def test_a_stored_objects_name_and_namespace_are_read_as_they_are() -> None:
    pod = client.V1Pod(metadata=client.V1ObjectMeta(name="p", namespace="team"))

    assert (name_of(pod), namespace_of(pod)) == ("p", "team")


@pytest.mark.parametrize("metadata", [None, client.V1ObjectMeta()])
def test_an_object_without_them_is_refused_naming_the_field(metadata: client.V1ObjectMeta | None) -> None:
    node = client.V1Node(metadata=metadata)

    with pytest.raises(ValueError, match=r"a V1Node from the apiserver without metadata\.name"):
        name_of(node)
    with pytest.raises(ValueError, match=r"a V1Node from the apiserver without metadata\.namespace"):
        namespace_of(node)
