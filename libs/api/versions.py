"""Kubernetes and Kubeflow versions: the catalog of Kubernetes minors and the Kubeflow matrix.

Both live in `compatibility.yaml` next to this module (packaged data), the one place that decides,
per Kubernetes minor: whether validation accepts it (only a minor with a node image), the node image,
the kubeadm config API version bootstrap writes, and (through the Kubeflow rows) the Kubeflow pick.
Every Kubeflow row carries the source of its claim so the table can be audited and extended.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Annotated

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, model_validator

KUBEFLOW_VERSION_PATTERN = r"^v[0-9]+\.[0-9]+\.[0-9]+$"
KUBERNETES_VERSION_PATTERN = r"^v?[0-9]+\.[0-9]+(\.[0-9]+)?$"
KUBERNETES_RELEASE_PATTERN = r"^[0-9]+\.[0-9]+\.[0-9]+$"
KUBEADM_API_PATTERN = r"^kubeadm\.k8s\.io/v1beta[0-9]+$"

_KUBERNETES_VERSION = re.compile(r"^v?(?P<major>[0-9]+)\.(?P<minor>[0-9]+)(\.[0-9]+)?$")
# Tags of node images: v1.20, 1.20, v1.20.15, v1.19-ubuntu, v1.29.2-cuda12
_IMAGE_TAG = re.compile(r"^v?(?P<major>[0-9]+)\.(?P<minor>[0-9]+)(\.[0-9]+)?([-+_].*)?$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


class VersionError(ValueError):
    """A version string that cannot be read or is not in the matrix."""


def kubernetes_minor(version: str) -> str:
    """`v1.20.15`, `1.20` -> `1.20`."""
    match = _KUBERNETES_VERSION.match(version)
    if match is None:
        raise VersionError(f"{version!r} is not a Kubernetes version; expected e.g. 1.29, v1.29 or v1.29.2")
    return f"{int(match['major'])}.{int(match['minor'])}"


def kubernetes_minor_from_image(image: str) -> str | None:
    """The Kubernetes minor in a node image's tag, or None when the tag does not carry one.

    `kink:v1.20`, `kink:v1.19-ubuntu`, `host:5000/vk8s/kink:v1.20@sha256:...` -> `1.20`/`1.19`.
    """
    reference = image.split("@", 1)[0]
    name, _, tag = reference.rpartition(":")
    if not name or "/" in tag:  # no tag, or the colon belonged to a registry port
        return None
    match = _IMAGE_TAG.match(tag)
    return f"{int(match['major'])}.{int(match['minor'])}" if match else None


def kubernetes_sort_key(minor: str) -> tuple[int, int]:
    major, minor_number = kubernetes_minor(minor).split(".")
    return int(major), int(minor_number)


def kubeflow_sort_key(version: str) -> tuple[int, int, int]:
    if not re.match(KUBEFLOW_VERSION_PATTERN, version):
        raise VersionError(f"{version!r} is not a Kubeflow version; expected vX.Y.Z, e.g. v1.9.1")
    major, minor, patch = version[1:].split(".")
    return int(major), int(minor), int(patch)


def _is_minor(version: str) -> str:
    if kubernetes_minor(version) != version:
        raise ValueError(f"{version!r}: write Kubernetes versions as MAJOR.MINOR, e.g. \"1.29\"")
    return version


KubernetesMinor = Annotated[str, AfterValidator(_is_minor)]


class KubernetesRelease(BaseModel):
    """One row of the catalog: a Kubernetes minor and what vk8s has for it.

    `release` is the exact version the node image carries (what its apiserver's /version reports);
    `nodeImage` the image the vnode service runs for the minor (validation accepts only minors that
    have one); `kubeadmApi` the kubeadm config API bootstrap writes for it (none before 1.15);
    `builtHere` says the binaries are built from source on this machine
    (deploy/testbed/build.sh for the testbed's release, deploy/kubernetes/build.sh for the others)
    and the image by vk8s.images.kink.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    minor: KubernetesMinor
    release: Annotated[str, StringConstraints(pattern=KUBERNETES_RELEASE_PATTERN)] | None = None
    kubeadm_api: Annotated[str, StringConstraints(pattern=KUBEADM_API_PATTERN)] | None = Field(
        default=None, alias="kubeadmApi"
    )
    node_image: Annotated[str, StringConstraints(min_length=1)] | None = Field(default=None, alias="nodeImage")
    built_here: bool = Field(default=False, alias="builtHere")

    @model_validator(mode="before")
    @classmethod
    def _bare_minor(cls, value: object) -> object:
        """A bare "1.16" in the list is a known minor with nothing more."""
        return value if isinstance(value, (Mapping, BaseModel)) else {"minor": value}

    @model_validator(mode="after")
    def _consistent(self) -> KubernetesRelease:
        if self.release is not None and kubernetes_minor(self.release) != self.minor:
            raise ValueError(f"{self.minor}: release {self.release} is not a {self.minor} release")
        if self.node_image is not None:
            if "@" in self.node_image or kubernetes_minor_from_image(self.node_image) != self.minor:
                raise ValueError(
                    f"{self.minor}: nodeImage {self.node_image!r} must be a tagged reference whose tag is "
                    f"Kubernetes {self.minor}, e.g. ghcr.io/vk8s/kink:v{self.minor}"
                )
            if self.release is None or self.kubeadm_api is None:
                raise ValueError(f"{self.minor}: a minor with a nodeImage needs its release and kubeadmApi")
        if self.built_here and self.release is None:
            raise ValueError(f"{self.minor}: builtHere needs the release that is built")
        return self


class KubeflowRelease(BaseModel):
    """One row of the matrix: a Kubeflow release and the Kubernetes minors it works on."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: Annotated[str, StringConstraints(pattern=KUBEFLOW_VERSION_PATTERN)]
    kubernetes: tuple[KubernetesMinor, ...] = Field(min_length=1)
    source: Annotated[str, StringConstraints(min_length=1)]


class CompatibilityMatrix(BaseModel):
    """The catalog of Kubernetes minors and the Kubeflow releases that run on each."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kubernetes: tuple[KubernetesRelease, ...] = Field(min_length=1)
    kubeflow: tuple[KubeflowRelease, ...]

    @model_validator(mode="after")
    def _consistent(self) -> CompatibilityMatrix:
        minors = [row.minor for row in self.kubernetes]
        if len(set(minors)) != len(minors):
            raise ValueError("kubernetes lists a minor twice")
        versions = [release.version for release in self.kubeflow]
        if len(set(versions)) != len(versions):
            raise ValueError("kubeflow lists a release twice")
        for release in self.kubeflow:
            unknown = sorted(set(release.kubernetes) - set(minors), key=kubernetes_sort_key)
            if unknown:
                raise ValueError(f"Kubeflow {release.version} names unknown Kubernetes {', '.join(unknown)}")
        return self

    @classmethod
    def load(cls, path: Path | None = None) -> CompatibilityMatrix:
        """Reads the matrix from `path`, or the packaged `compatibility.yaml`."""
        if path is None:
            text = resources.files(__package__).joinpath("compatibility.yaml").read_text(encoding="utf-8")
        else:
            text = path.read_text(encoding="utf-8")
        return cls.model_validate(yaml.safe_load(text))

    def row(self, kubernetes: str) -> KubernetesRelease | None:
        """The catalog row of this version's minor, if the catalog knows it."""
        minor = kubernetes_minor(kubernetes)
        return next((row for row in self.kubernetes if row.minor == minor), None)

    def known_kubernetes(self) -> list[str]:
        """Every Kubernetes minor in the catalog, oldest first (with a node image or not)."""
        return sorted((row.minor for row in self.kubernetes), key=kubernetes_sort_key)

    def available_kubernetes(self) -> list[str]:
        """The minors a cluster can be made of (those with a node image), oldest first."""
        return sorted((row.minor for row in self.kubernetes if row.node_image), key=kubernetes_sort_key)

    def is_available(self, kubernetes: str) -> bool:
        """Whether validation accepts this version: its minor has a node image."""
        row = self.row(kubernetes)
        return row is not None and row.node_image is not None

    def node_image(self, kubernetes: str) -> str | None:
        row = self.row(kubernetes)
        return None if row is None else row.node_image

    def kubeadm_api(self, kubernetes: str) -> str | None:
        """The kubeadm config API version (`kubeadm.k8s.io/v1beta4`) for this version's minor."""
        row = self.row(kubernetes)
        return None if row is None else row.kubeadm_api

    def known_kubeflow(self) -> list[str]:
        """Every Kubeflow release in the matrix, newest first."""
        return sorted((release.version for release in self.kubeflow), key=kubeflow_sort_key, reverse=True)

    def compatible_kubeflow(self, kubernetes: str) -> list[str]:
        """Kubeflow releases that run on this Kubernetes version, newest first."""
        minor = kubernetes_minor(kubernetes)
        compatible = (release.version for release in self.kubeflow if minor in release.kubernetes)
        return sorted(compatible, key=kubeflow_sort_key, reverse=True)

    def default_kubeflow(self, kubernetes: str) -> str | None:
        """The newest Kubeflow release compatible with this Kubernetes version, if any."""
        compatible = self.compatible_kubeflow(kubernetes)
        return compatible[0] if compatible else None

    def compatible_kubernetes(self, kubeflow: str) -> list[str]:
        """Kubernetes minors a Kubeflow release runs on, oldest first; empty for unknown releases."""
        for release in self.kubeflow:
            if release.version == kubeflow:
                return sorted(release.kubernetes, key=kubernetes_sort_key)
        return []

    def kubernetes_with_kubeflow(self) -> list[str]:
        """Kubernetes minors that have at least one compatible Kubeflow release, oldest first."""
        minors = {minor for release in self.kubeflow for minor in release.kubernetes}
        return sorted(minors, key=kubernetes_sort_key)


@functools.cache
def default_matrix() -> CompatibilityMatrix:
    """The packaged matrix, read once."""
    return CompatibilityMatrix.load()


def _is_digest(digest: str) -> str:
    if not _DIGEST.match(digest):
        raise ValueError(f"{digest!r} is not an image digest; expected sha256:<64 hex digits>")
    return digest


class NodeImageCatalog(BaseModel):
    """Which vNode image runs a Kubernetes minor: the catalog's `nodeImage`, as deployed.

    Only minors the catalog (compatibility.yaml) gives a node image have one. `repository` moves
    the catalog's images to another repository, keeping their tags (`registry.local/kink` ->
    `registry.local/kink:v1.36`); `digests` pins an image to a digest; `images` replaces it with
    any full reference (which may carry its own digest), e.g. a mirror in an air-gapped registry.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    repository: Annotated[str, StringConstraints(min_length=1)] | None = None
    images: Mapping[KubernetesMinor, Annotated[str, StringConstraints(min_length=1)]] = Field(default_factory=dict)
    digests: Mapping[KubernetesMinor, Annotated[str, AfterValidator(_is_digest)]] = Field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> NodeImageCatalog:
        """Reads a mapping file with optional keys `repository`, `images`, `digests`."""
        return cls.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")) or {})

    def image_for(self, kubernetes: str, matrix: CompatibilityMatrix | None = None) -> str:
        """The image for this version's minor; VersionError when the catalog has none for it."""
        matrix = matrix or default_matrix()
        minor = kubernetes_minor(kubernetes)
        image = matrix.node_image(minor)
        if image is None:
            raise VersionError(
                f"no node image for Kubernetes {minor}; available: {', '.join(matrix.available_kubernetes())}"
            )
        if minor in self.images:
            return self.images[minor]
        if self.repository is not None:
            image = f"{self.repository}:{image.rpartition(':')[2]}"
        return f"{image}@{self.digests[minor]}" if minor in self.digests else image
