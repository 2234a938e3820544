"""Which node images a tenant may name.

vNodes run privileged with host mounts, so whoever picks their image owns the host: a node image
named in a spec must come from an allowed repository (a prefix ending at a path boundary, so
`ghcr.io/vk8s/kink` allows `ghcr.io/vk8s/kink:v1.36` but not `ghcr.io/vk8s/kink-evil:v1.36`), and
may be required to carry a digest. The default allows the repositories of the catalog's node
images (compatibility.yaml). Validation, the gateway and the vnode stage all apply it.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from libs.api.versions import default_matrix

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*(?::[0-9]+)?"
_REPOSITORY = rf"(?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*"
_REFERENCE = re.compile(
    rf"^(?P<repository>{_REPOSITORY})(?::[A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}})?(?:@(?P<digest>sha256:[0-9a-f]{{64}}))?$",
    re.ASCII,
)
_PREFIX = re.compile(rf"^(?:{_DOMAIN}|{_REPOSITORY})$", re.ASCII)
REFERENCE_HELP = "repository[:tag][@sha256:<64 hex digits>]"


def image_repository(image: str) -> str | None:
    """`host:5000/vk8s/kink:v1.36@sha256:...` -> `host:5000/vk8s/kink`; None when not a reference."""
    match = _REFERENCE.match(image)
    return match["repository"] if match else None


def _repository_prefix(prefix: str) -> str:
    if not _PREFIX.match(prefix):
        raise ValueError(f"{prefix!r} is not a registry or repository (e.g. ghcr.io/vk8s/kink), without tag or digest")
    return prefix


def _catalog_repositories() -> tuple[str, ...]:
    matrix = default_matrix()
    images = (matrix.node_image(minor) for minor in matrix.available_kubernetes())
    return tuple(sorted({repository for image in images if image and (repository := image_repository(image))}))


class ImagePolicy(BaseModel):
    """Allowed repositories of the node images a spec names, and whether they must be pinned by digest."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    repositories: tuple[Annotated[str, AfterValidator(_repository_prefix)], ...] = Field(
        default_factory=_catalog_repositories, min_length=1
    )
    require_digest: bool = False

    def refusal(self, image: str) -> str | None:
        """Why `image` may not run as a vNode, or None when it may."""
        match = _REFERENCE.match(image)
        if match is None:
            return f"{image!r} is not an image reference; expected {REFERENCE_HELP}"
        repository = match["repository"]
        allowed = ", ".join(self.repositories)
        if not any(repository == prefix or repository.startswith(f"{prefix}/") for prefix in self.repositories):
            return f"{image!r} is not from an allowed repository; allowed: {allowed}"
        if self.require_digest and match["digest"] is None:
            return f"{image!r} has no digest; node images must be pinned as repository[:tag]@sha256:<digest>, from: {allowed}"
        return None
