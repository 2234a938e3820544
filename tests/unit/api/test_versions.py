"""The version catalog (Kubernetes minors, Kubeflow matrix), version parsing and the node image catalog."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from libs.api.versions import (
    CompatibilityMatrix,
    NodeImageCatalog,
    VersionError,
    default_matrix,
    kubeflow_sort_key,
    kubernetes_minor,
    kubernetes_minor_from_image,
)

MATRIX = default_matrix()

# The deck's table (GEdge 2023-12, after v0-7.kubeflow.org): Kubeflow 0.x minors per Kubernetes minor.
DECK_TABLE = {
    "1.11": {"0.4", "0.5"},
    "1.12": {"0.4", "0.5"},
    "1.13": {"0.4", "0.5"},
    "1.14": {"0.4", "0.5", "0.6", "0.7"},
    "1.15": {"0.5", "0.6", "0.7"},
    "1.16": set(),
}


@pytest.mark.parametrize(("kubernetes", "kubeflow_minors"), DECK_TABLE.items())
def test_old_releases_follow_the_deck_table_exactly(kubernetes: str, kubeflow_minors: set[str]) -> None:
    compatible = MATRIX.compatible_kubeflow(kubernetes)
    assert {version[1:].rsplit(".", 1)[0] for version in compatible} == kubeflow_minors
    assert kubernetes in MATRIX.known_kubernetes()


@pytest.mark.parametrize(
    ("kubernetes", "expected"),
    [("1.19", ["v1.3.0"]), ("1.20", ["v1.4.0", "v1.3.0"]), ("1.21", ["v1.5.0"])],
)
def test_original_samples_pairs(kubernetes: str, expected: list[str]) -> None:
    assert MATRIX.compatible_kubeflow(kubernetes) == expected


@pytest.mark.parametrize(
    ("kubeflow", "kubernetes"),
    [
        ("v0.4.1", ["1.11", "1.12", "1.13", "1.14"]),
        ("v1.6.1", ["1.22"]),
        ("v1.7.0", ["1.24", "1.25"]),
        ("v1.8.1", ["1.25", "1.26"]),
        ("v1.9.0", ["1.29"]),
        ("v1.9.1", ["1.31"]),
        ("v1.10.0", ["1.32"]),
        ("v1.10.2", ["1.33"]),
        ("v1.11.0", ["1.34", "1.35", "1.36", "1.37"]),
        ("v1.4.1", []),
    ],
)
def test_kubernetes_each_release_runs_on(kubeflow: str, kubernetes: list[str]) -> None:
    assert MATRIX.compatible_kubernetes(kubeflow) == kubernetes


@pytest.mark.parametrize(
    ("kubernetes", "default"),
    [
        ("1.20", "v1.4.0"),
        ("1.14", "v0.7.1"),
        ("1.25", "v1.8.1"),
        ("v1.29.3", "v1.9.0"),
        ("1.37", "v1.11.0"),
        ("1.16", None),
        ("1.28", None),
    ],
)
def test_default_pick_is_the_newest_compatible(kubernetes: str, default: str | None) -> None:
    assert MATRIX.default_kubeflow(kubernetes) == default


def test_known_kubernetes_is_ordered_numerically() -> None:
    known = MATRIX.known_kubernetes()
    assert known[0] == "1.11"
    assert known[-1] == "1.37"
    assert known == sorted(known, key=lambda minor: tuple(map(int, minor.split("."))))
    assert MATRIX.row("1.10") is None and MATRIX.row("v1.38.0") is None


def test_available_minors_are_those_with_a_node_image() -> None:
    """1.36 (the testbed's), 1.35, 1.34 and the deck's 1.20: the releases built from source here."""
    assert MATRIX.available_kubernetes() == ["1.20", "1.34", "1.35", "1.36"]
    for minor in ("1.20", "1.34", "v1.35.8", "1.36"):
        assert MATRIX.is_available(minor)
    for minor in ("1.10", "1.16", "1.29", "1.37", "1.38"):
        assert not MATRIX.is_available(minor)
    assert MATRIX.node_image("v1.36.3") == "ghcr.io/vk8s/kink:v1.36"
    assert MATRIX.node_image("1.29") is None


@pytest.mark.parametrize(
    ("version", "api"),
    [
        ("1.14", None),
        ("1.15", "v1beta2"),
        ("v1.20.15", "v1beta2"),
        ("1.21", "v1beta2"),
        ("1.22", "v1beta3"),
        ("1.30", "v1beta3"),
        ("1.31", "v1beta4"),
        ("v1.36.3", "v1beta4"),
        ("1.38", None),
    ],
)
def test_kubeadm_api_per_minor(version: str, api: str | None) -> None:
    assert MATRIX.kubeadm_api(version) == (api and f"kubeadm.k8s.io/{api}")


def test_every_available_minor_has_a_release_and_kubeadm_api() -> None:
    for minor in MATRIX.available_kubernetes():
        row = MATRIX.row(minor)
        assert row is not None and row.release is not None and row.kubeadm_api is not None
        assert row.release.rsplit(".", 1)[0] == minor
        assert row.built_here
        assert MATRIX.default_kubeflow(minor) is not None, f"{minor} has no Kubeflow"


def test_known_kubeflow_is_newest_first() -> None:
    known = MATRIX.known_kubeflow()
    assert known[0] == "v1.11.0"
    assert known[-1] == "v0.4.1"
    assert known.index("v1.10.0") < known.index("v1.9.1")  # numeric, not lexical


def test_every_row_names_its_source() -> None:
    assert all(release.source.strip() for release in MATRIX.kubeflow)


def test_kubernetes_with_kubeflow_skips_minors_without_any() -> None:
    minors = MATRIX.kubernetes_with_kubeflow()
    assert "1.16" not in minors
    assert {"1.11", "1.20", "1.29", "1.37"} <= set(minors)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("kubernetes: ['1.20']\nkubeflow: [{version: v1.3.0, kubernetes: ['1.19'], source: x}]\n", "unknown"),
        ("kubernetes: [1.20]\nkubeflow: []\n", "string"),
        ("kubernetes: ['1.20', '1.20']\nkubeflow: []\n", "twice"),
        (
            "kubernetes: ['1.20']\nkubeflow: [{version: v1.3.0, kubernetes: ['1.20'], source: x},"
            " {version: v1.3.0, kubernetes: ['1.20'], source: y}]\n",
            "twice",
        ),
        ("kubernetes: ['1.20']\nkubeflow: [{version: v1.3.0, kubernetes: ['1.20'], source: ''}]\n", "at least 1"),
        ("kubernetes: ['1.20']\nkubeflow: [{version: 1.3.0, kubernetes: ['1.20'], source: x}]\n", "pattern"),
        ("kubernetes: ['v1.20']\nkubeflow: []\n", "MAJOR.MINOR"),
        ("kubernetes: [{minor: '1.20', release: '1.21.1'}]\nkubeflow: []\n", "not a 1.20 release"),
        ("kubernetes: [{minor: '1.20', release: '1.20'}]\nkubeflow: []\n", "pattern"),
        ("kubernetes: [{minor: '1.20', kubeadmApi: v1beta2}]\nkubeflow: []\n", "pattern"),
        ("kubernetes: [{minor: '1.20', nodeImage: 'kink:v1.20'}]\nkubeflow: []\n", "needs its release and kubeadmApi"),
        (
            "kubernetes: [{minor: '1.20', release: '1.20.15', kubeadmApi: kubeadm.k8s.io/v1beta2,"
            " nodeImage: 'kink:v1.21'}]\nkubeflow: []\n",
            "whose tag is Kubernetes 1.20",
        ),
        ("kubernetes: [{minor: '1.20', builtHere: true}]\nkubeflow: []\n", "builtHere needs the release"),
        ("kubernetes: [{minor: '1.20', image: 'kink:v1.20'}]\nkubeflow: []\n", "Extra inputs"),
    ],
)
def test_matrix_file_mistakes_are_refused(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "matrix.yaml"
    path.write_text(text)
    with pytest.raises(ValidationError, match=problem):
        CompatibilityMatrix.load(path)


@pytest.mark.parametrize(
    ("version", "minor"), [("1.20", "1.20"), ("v1.20", "1.20"), ("v1.29.2", "1.29"), ("1.9", "1.9"), ("v01.020", "1.20")]
)
def test_kubernetes_minor(version: str, minor: str) -> None:
    assert kubernetes_minor(version) == minor


@pytest.mark.parametrize("version", ["", "1", "v1", "1.20.3.4", "latest", "1.x", "v1.20-rc1"])
def test_kubernetes_minor_refuses(version: str) -> None:
    with pytest.raises(VersionError):
        kubernetes_minor(version)


@pytest.mark.parametrize(
    ("image", "minor"),
    [
        ("kink:v1.20", "1.20"),
        ("kink:v1.19-ubuntu", "1.19"),
        ("host:5000/vk8s/kink:v1.20", "1.20"),
        ("harbor.dudaji.com/vk8s/kink:v1.20", "1.20"),
        ("ghcr.io/vk8s/kink:v1.29.2", "1.29"),
        ("ghcr.io/vk8s/kink:1.30", "1.30"),
        ("ghcr.io/vk8s/kink:v1.29@sha256:" + "a" * 64, "1.29"),
        ("host:5000/vk8s/kink", None),
        ("kink", None),
        ("kink:latest", None),
        ("kink:ubuntu-v1.20", None),
        ("ghcr.io/vk8s/kink@sha256:" + "a" * 64, None),
    ],
)
def test_kubernetes_minor_from_image(image: str, minor: str | None) -> None:
    assert kubernetes_minor_from_image(image) == minor


def test_kubeflow_sort_key_refuses_non_releases() -> None:
    with pytest.raises(VersionError):
        kubeflow_sort_key("1.9.0")


DIGEST = "sha256:" + "0123456789abcdef" * 4


def test_catalog_defaults_to_the_version_catalogs_node_image() -> None:
    catalog = NodeImageCatalog()
    assert catalog.image_for("1.36") == "ghcr.io/vk8s/kink:v1.36"
    assert catalog.image_for("v1.35.4") == "ghcr.io/vk8s/kink:v1.35"


@pytest.mark.parametrize("version", ["1.29", "v1.29.4", "1.10"])
def test_catalog_has_no_image_for_a_minor_without_one(version: str) -> None:
    with pytest.raises(VersionError, match=r"no node image for Kubernetes 1\.\d+; available: 1.20, 1.34, 1.35, 1.36"):
        NodeImageCatalog(images={"1.29": "mirror.local/kink:v1.29"}).image_for(version)


def test_catalog_overrides_and_pins(tmp_path: Path) -> None:
    path = tmp_path / "images.yaml"
    path.write_text(
        "repository: registry.local:5000/vk8s/kink\n"
        "images:\n  '1.20': harbor.example.com/vk8s/kink:v1.20-ubuntu\n"
        f"digests:\n  '1.35': {DIGEST}\n"
    )
    catalog = NodeImageCatalog.load(path)
    assert catalog.image_for("1.20") == "harbor.example.com/vk8s/kink:v1.20-ubuntu"
    assert catalog.image_for("1.35") == f"registry.local:5000/vk8s/kink:v1.35@{DIGEST}"
    assert catalog.image_for("1.36") == "registry.local:5000/vk8s/kink:v1.36"


@pytest.mark.parametrize(
    "mapping",
    [{"digests": {"1.29": "sha256:abc"}}, {"digests": {"1.29": "md5:" + "a" * 64}}, {"images": {"1.29.1": "x:y"}}],
)
def test_catalog_refuses_bad_entries(mapping: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        NodeImageCatalog.model_validate(mapping)


def test_matrix_is_packaged_data() -> None:
    """The wheel ships compatibility.yaml (package-data *.yaml); load() reads it through importlib.resources."""
    assert CompatibilityMatrix.load() == MATRIX
