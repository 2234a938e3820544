"""The tests' one way of waiting for another process (tests/support/wait.py)."""

import itertools

import pytest

from tests.support.wait import eventually


async def test_returns_the_first_value_that_is_there_from_sync_and_async_probes() -> None:
    counts = itertools.count()
    assert await eventually(lambda: next(counts) >= 2 and "ready", "the third call", interval=0) == "ready"

    async def listed() -> list[int]:
        return list(range(next(counts) - 3))

    assert await eventually(listed, "a non-empty listing", interval=0) == [0]


async def test_done_decides_when_the_value_counts() -> None:
    counts = itertools.count()
    assert await eventually(lambda: next(counts), "zero acks", done=lambda n: n == 0) == 0


async def test_a_timeout_names_what_was_awaited_and_what_was_seen() -> None:
    with pytest.raises(AssertionError, match=r"timed out after 0s waiting for the thing; last seen: \{'phase': 'Pending'\}"):
        await eventually(lambda: {"phase": "Pending"}, "the thing", 0.05, done=lambda s: s["phase"] == "Running", interval=0.01)
