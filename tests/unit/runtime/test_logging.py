"""Logs go to sys.stderr as it is at each call: a stream swapped and closed since logging was
configured (pytest's per-test capture) must not turn a later log line into an error."""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Iterator

import pytest
import structlog

from libs.runtime import configure_logging


@pytest.fixture(autouse=True)
def structlog_as_it_was() -> Iterator[None]:
    yield
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()


def test_a_log_line_goes_to_the_stderr_of_the_moment(monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    configure_logging(log_format="json", service="unit")
    log = structlog.get_logger("unit")
    log.info("into the first")
    first.close()
    monkeypatch.setattr(sys, "stderr", second)
    log.info("into the second")

    line = json.loads(second.getvalue())
    assert (line["event"], line["service"]) == ("into the second", "unit")
