"""Kubernetes resource quantities (`500m`, `1.5`, `16Gi`, `1e3`, `1k`) parsed to exact decimals.

The grammar follows k8s.io/apimachinery `resource.ParseQuantity`: a signed decimal number and an
optional suffix that is either binary (Ki..Ei), decimal SI (n, u, m, k, M..E) or a decimal
exponent (e3, E-2). Values are kept as `Decimal` so `0.1 + 0.2` style rounding never turns a
valid `requests <= limits` into a violation.
"""

from __future__ import annotations

import functools
import math
import re
from decimal import Decimal, localcontext

# Same expression controller-gen emits for resource.Quantity; used in the CRD and model schemas.
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)

_QUANTITY = re.compile(
    r"^(?P<number>[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))"
    r"(?P<suffix>[KMGTPE]i|[eE][+-]?[0-9]+|[numkMGTPE])?$"
)
_BINARY_SUFFIXES = {"Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, "Pi": 50, "Ei": 60}
_DECIMAL_SUFFIXES = {"n": -9, "u": -6, "m": -3, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
# Kubernetes stores quantities in an int64 of the smallest unit; anything beyond is an input error.
_MAX_EXPONENT = 30
_PRECISION = 80

QUANTITY_FORMS = "a number with an optional suffix, e.g. 500m, 2, 1.5, 16Gi, 512Mi, 1e3, 1k"


class QuantityError(ValueError):
    """A value that is not a Kubernetes quantity; the message says what forms are allowed."""


def parse_quantity(value: str | int) -> Decimal:
    """Returns the quantity in base units (cores, bytes, devices).

    Integers are accepted as YAML gives them (`cpu: 2`); floats are refused because the CRD
    types quantities as int-or-string, so `1.5` must be written as the string "1.5".
    """
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        if isinstance(value, float):
            raise QuantityError(f"write fractional quantities as strings, e.g. \"{value}\"")
        raise QuantityError(f"expected {QUANTITY_FORMS}; got {type(value).__name__}")
    if isinstance(value, int):
        return Decimal(value)
    return _parse_text(value)


@functools.lru_cache(maxsize=4096)  # every event carries quantities; there are few distinct ones
def _parse_text(value: str) -> Decimal:
    match = _QUANTITY.match(value)
    if match is None:
        raise QuantityError(f"{value!r} is not a quantity; expected {QUANTITY_FORMS}")
    number = Decimal(match["number"])
    suffix = match["suffix"] or ""
    with localcontext() as context:
        context.prec = _PRECISION
        if suffix in _BINARY_SUFFIXES:
            return number * (1 << _BINARY_SUFFIXES[suffix])
        if suffix in _DECIMAL_SUFFIXES:
            exponent = _DECIMAL_SUFFIXES[suffix]
        else:  # "" or a decimal exponent such as e3
            exponent = int(suffix[1:]) if suffix else 0
        if abs(exponent) > _MAX_EXPONENT:
            raise QuantityError(f"{value!r} is out of range; exponents go from -{_MAX_EXPONENT} to {_MAX_EXPONENT}")
        scaled: Decimal = number.scaleb(exponent)
        return scaled


def to_millis(quantity: Decimal) -> int:
    """Rounds up to thousandths (millicores), as Kubernetes does for CPU."""
    return math.ceil(quantity * 1000)


def to_units(quantity: Decimal) -> int:
    """Rounds up to whole base units (bytes, devices)."""
    return math.ceil(quantity)
