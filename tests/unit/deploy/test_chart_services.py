"""The chart deploys the services `services.topology` lists, in its order: its helper's list, the
defaults in values.yaml and the keys values.schema.json allows and requires."""

from __future__ import annotations

import json
import re

import yaml

from services.topology import NAMES
from tests.unit.deploy.helm import CHART_DIR


def test_the_helpers_list_the_declared_services_in_pipeline_order() -> None:
    helpers = (CHART_DIR / "templates" / "_helpers.tpl").read_text()
    [listed] = re.findall(r"range \$name := list ((?:\"[a-z]+\" ?)+)", helpers)
    assert tuple(re.findall(r'"([a-z]+)"', listed)) == NAMES


def test_the_values_and_their_schema_name_the_declared_services() -> None:
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    assert tuple(values["services"]) == NAMES
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())["properties"]["services"]
    assert tuple(schema["properties"]) == NAMES
    assert tuple(schema["required"]) == NAMES
    assert schema["additionalProperties"] is False
