"""`VK8S_STATE_DIR` means one thing to `vk8s up` and `vk8s testbed`: the root both keep state under."""

from __future__ import annotations

from pathlib import Path

import pytest

from vk8s.local.stack import StackLayout
from vk8s.testbed.config import StateLayout, default_state_dir


def test_vk8s_testbed_uses_the_testbed_vk8s_up_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VK8S_STATE_DIR", str(tmp_path))
    assert StackLayout().root == tmp_path
    assert StateLayout(default_state_dir()).root == StackLayout().testbed.root == tmp_path / "testbed"


def test_without_the_variable_both_live_under_the_users_state(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VK8S_STATE_DIR", raising=False)
    assert StackLayout().testbed.root == default_state_dir() == Path.home() / ".local/state/vk8s/testbed"
