"""The real host tier's gate for tests: CI must be able to run it; elsewhere it is skipped."""

from __future__ import annotations

import os

import pytest

from vk8s.testbed.real import preflight


def require_real_tier() -> None:
    if reason := preflight.problem():
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the real tier, but this machine cannot: {reason}")
        pytest.skip(f"this machine cannot run the real tier: {reason}")
