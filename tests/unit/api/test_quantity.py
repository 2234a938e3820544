"""Kubernetes quantities: the forms Kubernetes accepts, and nothing else."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest

from libs.api.quantity import QuantityError, parse_quantity, to_millis, to_units


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("500m", Decimal("0.5")),
        ("1.5", Decimal("1.5")),
        ("2", Decimal(2)),
        (2, Decimal(2)),
        ("16Gi", Decimal(16 * 2**30)),
        ("512Mi", Decimal(512 * 2**20)),
        ("1Ki", Decimal(1024)),
        ("1Ei", Decimal(2**60)),
        ("1e3", Decimal(1000)),
        ("1E3", Decimal(1000)),
        ("1e-3", Decimal("0.001")),
        ("1k", Decimal(1000)),
        ("1M", Decimal(10**6)),
        ("1E", Decimal(10**18)),
        ("100n", Decimal("0.0000001")),
        ("250u", Decimal("0.00025")),
        (".5", Decimal("0.5")),
        ("1.", Decimal(1)),
        ("+3", Decimal(3)),
        ("-1", Decimal(-1)),
        ("0", Decimal(0)),
        ("0.1Gi", Decimal("0.1") * 2**30),
    ],
)
def test_parses_kubernetes_forms(text: str | int, expected: Decimal) -> None:
    assert parse_quantity(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", " 1", "1 ", "1 Gi", "1GB", "1Gb", "1g", "1e", "1ki", "m", "Gi", "1.5.5", "1,5", "abc", "0x10", "1e999"],
)
def test_refuses_other_strings(text: str) -> None:
    with pytest.raises(QuantityError):
        parse_quantity(text)


@pytest.mark.parametrize("value", [1.5, True, None, [1]])
def test_refuses_other_types(value: object) -> None:
    with pytest.raises(QuantityError):
        parse_quantity(value)  # type: ignore[arg-type]


def test_float_error_says_to_quote() -> None:
    with pytest.raises(QuantityError, match=re.escape('"1.5"')):
        parse_quantity(1.5)  # type: ignore[arg-type]


def test_exact_arithmetic_keeps_sums_exact() -> None:
    assert parse_quantity("100m") + parse_quantity("200m") == parse_quantity("300m")


@pytest.mark.parametrize(
    ("text", "millis"), [("1", 1000), ("500m", 500), ("1.5", 1500), ("0.0001", 1), ("1e-4", 1), ("0", 0)]
)
def test_millis_round_up(text: str, millis: int) -> None:
    assert to_millis(parse_quantity(text)) == millis


@pytest.mark.parametrize(("text", "units"), [("16Gi", 16 * 2**30), ("1.5", 2), ("1k", 1000), ("2", 2)])
def test_units_round_up(text: str, units: int) -> None:
    assert to_units(parse_quantity(text)) == units
