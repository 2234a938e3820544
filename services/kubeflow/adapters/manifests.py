"""Reading a release's manifests from its configured source: a rendered directory (local
mirror), a kustomization (built with `kubectl kustomize`), or a git ref (cloned once, cached)."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

import yaml

from libs.events import PermanentError, Reason, TransientError
from services.kubeflow.settings import GitSource, ManifestSource


async def _run(*argv: str, cwd: Path | None = None) -> str:
    process = await asyncio.create_subprocess_exec(
        *argv, cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:3])} failed ({process.returncode}): {err.decode(errors='replace')[-500:]}")
    return out.decode()


def parse(text: str, origin: str) -> list[dict[str, Any]]:
    try:
        documents = [d for d in yaml.safe_load_all(text) if d]
    except yaml.YAMLError as error:
        raise PermanentError(f"manifests from {origin} are not valid YAML: {error}", reason=Reason.INVALID_MANIFESTS) from None
    for document in documents:
        if not isinstance(document, dict) or not {"apiVersion", "kind", "metadata"} <= document.keys():
            raise PermanentError(f"manifests from {origin} hold a document that is not a Kubernetes object", reason=Reason.INVALID_MANIFESTS)
    return documents


async def load(source: ManifestSource, *, kubectl: str, cache_dir: Path) -> list[dict[str, Any]]:
    if source.directory is not None:
        if not source.directory.is_dir():
            raise PermanentError(f"manifest mirror {source.directory} does not exist", reason=Reason.NO_MANIFESTS)
        files = sorted(p for p in source.directory.rglob("*") if p.suffix in (".yaml", ".yml"))
        return [obj for path in files for obj in parse(path.read_text(), str(path))]
    if source.kustomize is not None:
        return parse(await _kustomize(kubectl, source.kustomize), str(source.kustomize))
    assert source.git is not None
    checkout = await _checkout(source.git, cache_dir)
    return parse(await _kustomize(kubectl, checkout / source.git.path), f"{source.git.url}@{source.git.ref}")


async def _kustomize(kubectl: str, directory: Path) -> str:
    if not (directory / "kustomization.yaml").exists() and not (directory / "kustomization.yml").exists():
        raise PermanentError(f"{directory} has no kustomization.yaml", reason=Reason.NO_MANIFESTS)
    try:
        return await _run(kubectl, "kustomize", str(directory))
    except RuntimeError as error:
        raise PermanentError(str(error), reason=Reason.KUSTOMIZE_FAILED) from None


async def _checkout(source: GitSource, cache_dir: Path) -> Path:
    """A shallow clone of the ref, kept by url+ref; a tag does not move, so it is fetched once."""
    key = hashlib.sha256(f"{source.url}@{source.ref}".encode()).hexdigest()[:16]
    target = cache_dir / key
    if await asyncio.to_thread((target / ".git").is_dir):
        return target
    await asyncio.to_thread(cache_dir.mkdir, parents=True, exist_ok=True)
    partial = cache_dir / f"{key}.partial"
    await _run("rm", "-rf", str(partial))
    try:
        await _run("git", "clone", "--quiet", "--depth", "1", "--branch", source.ref, source.url, str(partial))
    except RuntimeError as error:
        raise TransientError(f"cloning {source.url}@{source.ref}: {error}", reason=Reason.MANIFESTS_UNAVAILABLE) from None
    partial.rename(target)
    return target
