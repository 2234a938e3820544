"""The Vk8s CustomResourceDefinition, generated from the models so the two cannot drift.

Regenerate after changing `models.py`:

    .venv/bin/python -m libs.api.crd > deploy/crds/vk8s.skt.co.kr_vk8s.yaml

A unit test fails while the committed manifest differs from what this module renders.
"""

from __future__ import annotations

import sys
from typing import Any

import yaml
from pydantic import BaseModel

from libs.api.models import (
    DNS1123_LABEL_PATTERN,
    GROUP,
    KIND,
    NODE_LEVEL_BLOCKS,
    VERSION,
    KubeflowConfig,
    KubernetesConfig,
    Vk8s,
)

PLURAL = "vk8s"
SHORT_NAMES = ["vk"]
CRD_NAME = f"{PLURAL}.{GROUP}"
CRD_FILE_NAME = f"{GROUP}_{PLURAL}.yaml"

PRINTER_COLUMNS = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Nodes", "type": "integer", "jsonPath": ".status.nodes"},
    {"name": "GPUs", "type": "integer", "jsonPath": ".status.gpus"},
    {"name": "Message", "type": "string", "jsonPath": ".status.message"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]

# JSON-schema keywords carried into the CRD; anything else pydantic emits is refused loudly so a
# new construct in the models cannot silently vanish from the apiserver's validation.
_CARRIED = ("description", "type", "format", "enum", "pattern", "minimum", "maximum", "minLength",
            "maxLength", "minItems", "maxItems")
# patternProperties (whole counts of extended resources) has no structural form; the gateway's
# validation enforces it for applied objects.
_DROPPED = ("title", "default", "writeOnly", "patternProperties")
_FORMATS_DROPPED = ("password",)

_HEADER = "# Generated from libs/api/models.py by `python -m libs.api.crd`; do not edit by hand.\n"
# A fixed key order at every level keeps the manifest stable under regeneration.
_KEY_ORDER = (*_CARRIED, "anyOf", "properties", "required", "items", "additionalProperties")


def _key_rank(item: tuple[str, Any]) -> tuple[int, str]:
    key = item[0]
    return (_KEY_ORDER.index(key), key) if key in _KEY_ORDER else (len(_KEY_ORDER), key)


class _NoAliasDumper(yaml.SafeDumper):
    """Writes repeated sub-schemas in full; anchors make a CRD hard to read and diff."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


class _Converter:
    """pydantic JSON schema -> Kubernetes structural OpenAPI v3 schema."""

    def __init__(self, model: type[BaseModel]) -> None:
        schema = model.model_json_schema(by_alias=True)
        self._definitions: dict[str, Any] = schema.pop("$defs", {})
        self.root = schema

    def definition(self, name: str) -> dict[str, Any]:
        return self.convert(self._definitions[name])

    def convert(self, node: dict[str, Any]) -> dict[str, Any]:
        if "$ref" in node:
            target = self.convert(self._definitions[node["$ref"].rsplit("/", 1)[1]])
            rest = {key: value for key, value in node.items() if key != "$ref"}
            return {**target, **self.convert(rest)} if rest else target
        if "anyOf" in node and not node.get("x-kubernetes-int-or-string"):
            branches = [branch for branch in node["anyOf"] if branch.get("type") != "null"]
            if len(branches) != 1:
                raise ValueError(f"unions other than Optional and int-or-string have no CRD form: {node}")
            outer = {key: value for key, value in node.items() if key != "anyOf"}
            return {**self.convert(branches[0]), **self.convert(outer)}
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key in _DROPPED or (key == "format" and value in _FORMATS_DROPPED):
                continue
            if key in _CARRIED or key.startswith("x-kubernetes-"):
                out[key] = value
            elif key == "const":
                out["enum"] = [value]
            elif key == "anyOf":  # int-or-string: [{type: integer}, {type: string}]
                out[key] = value
            elif key == "properties":
                out[key] = {name: self.convert(child) for name, child in value.items()}
            elif key == "required":
                out[key] = list(value)
            elif key == "items":
                out[key] = self.convert(value)
            elif key == "additionalProperties":
                # `false` (extra="forbid") is the apiserver's pruning default and may not sit next to properties
                if isinstance(value, dict):
                    out[key] = self.convert(value)
            else:
                raise ValueError(f"JSON-schema keyword {key!r} has no CRD translation: {node}")
        return out


def _ordered(schema: dict[str, Any]) -> dict[str, Any]:
    """Keys in a fixed order at every level (properties keep the models' field order)."""
    ordered = dict(sorted(schema.items(), key=_key_rank))
    if "properties" in ordered:
        ordered["properties"] = {name: _ordered(child) for name, child in ordered["properties"].items()}
    for key in ("items", "additionalProperties"):
        if isinstance(ordered.get(key), dict):
            ordered[key] = _ordered(ordered[key])
    return ordered


def openapi_schema() -> dict[str, Any]:
    """The openAPIV3Schema of the Vk8s kind."""
    converter = _Converter(Vk8s)
    schema = converter.convert(converter.root)
    properties = schema["properties"]
    properties["apiVersion"] = {"type": "string", "description": "APIVersion of this object: vk8s.skt.co.kr/v1alpha1."}
    properties["kind"] = {"type": "string", "description": "Kind of this object: Vk8s."}
    # the apiserver allows restricting only name and generateName in metadata
    properties["metadata"] = {
        "type": "object",
        "properties": {"name": {"type": "string", "pattern": DNS1123_LABEL_PATTERN, "maxLength": 63}},
    }
    schema["required"] = ["spec"]
    node = properties["spec"]["properties"]["nodes"]["items"]
    for block, model in zip(NODE_LEVEL_BLOCKS, (KubernetesConfig, KubeflowConfig), strict=True):
        node["properties"][block] = {
            **converter.definition(model.__name__),
            "description": f"Same as spec.{block}; accepted on the master node as in the gs-optops samples.",
        }
    return _ordered(schema)


def crd_manifest() -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": CRD_NAME},
        "spec": {
            "group": GROUP,
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": PLURAL,
                "shortNames": SHORT_NAMES,
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": openapi_schema()},
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                }
            ],
        },
    }


def render_crd() -> str:
    return _HEADER + yaml.dump(crd_manifest(), Dumper=_NoAliasDumper, sort_keys=False, width=100, allow_unicode=True)


if __name__ == "__main__":
    sys.stdout.write(render_crd())
