"""Reading manifests: multi-document YAML, with duplicate keys refused.

PyYAML keeps the last of two equal keys silently; in a Vk8s manifest that hides mistakes such
as a second `kubeflow:` block, so a duplicate is reported as a syntax error.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

import yaml


class ManifestSyntaxError(ValueError):
    """Text that is not valid YAML; `location` is "line L, column C" when known."""

    def __init__(self, location: str | None, problem: str) -> None:
        super().__init__(f"{location}: {problem}" if location else problem)
        self.location = location
        self.problem = problem


@dataclass(frozen=True)
class Document:
    position: int
    """1-based position among the file's YAML documents (empty ones included)."""
    content: Any


class _StrictLoader(yaml.SafeLoader):
    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, Hashable):
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping", node.start_mark, f"duplicate key {key!r}", key_node.start_mark
                    )
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_documents(text: str | bytes) -> list[Document]:
    """The non-empty documents of a YAML stream, in order."""
    try:
        contents = list(yaml.load_all(text, Loader=_StrictLoader))  # a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        location = f"line {mark.line + 1}, column {mark.column + 1}" if mark else None
        raise ManifestSyntaxError(location, f"invalid YAML: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise ManifestSyntaxError(None, f"invalid YAML: {exc}") from None
    return [Document(position, content) for position, content in enumerate(contents, start=1) if content is not None]
