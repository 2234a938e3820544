"""The one backoff rule: the first delay, doubled after each failure in a row, capped."""

from __future__ import annotations

import math

# 2.0 ** 1024 overflows a float; a run of failures this long is past any cap anyway.
_MAX_DOUBLINGS = 64


def backoff_delay(failures: int, first_s: float, max_s: float = math.inf) -> float:
    """Delay before the next try after `failures` (1-based) failures in a row:
    first_s, 2 * first_s, 4 * first_s, ... never more than max_s."""
    return min(max_s, first_s * 2.0 ** min(_MAX_DOUBLINGS, max(0, failures - 1)))
