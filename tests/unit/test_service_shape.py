"""Every service is wired the same way: `services/<name>/__main__.py` exports `wired(settings)` and
`main()`, its handlers class is `<Name>Handlers` built from keyword arguments only, and its
declaration (`TOPOLOGY`) is the one `services.topology` lists."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import pytest

from services.topology import BY_NAME, NAMES

SERVICES_DIR = Path(__file__).resolve().parents[2] / "services"
PACKAGES = sorted(init.parent.name for init in SERVICES_DIR.glob("*/__init__.py"))
HANDLERS_CLASS = {"ipmanager": "IpManagerHandlers", "vnode": "VNodeHandlers"}


def test_the_service_list_is_every_service_package() -> None:
    assert sorted(NAMES) == PACKAGES


@pytest.mark.parametrize("name", PACKAGES)
def test_main_exports_wired_and_main(name: str) -> None:
    main = importlib.import_module(f"services.{name}.__main__")
    wired = inspect.signature(main.wired)
    assert list(wired.parameters) == ["settings", "configure_logs"]
    assert wired.parameters["configure_logs"].kind is inspect.Parameter.KEYWORD_ONLY
    assert not inspect.signature(main.main).parameters
    public = {n for n, v in vars(main).items() if inspect.isfunction(v) and v.__module__ == main.__name__}
    assert public == {"wired", "main"}


@pytest.mark.parametrize("name", PACKAGES)
def test_the_handlers_class_is_named_and_built_alike(name: str) -> None:
    handlers = importlib.import_module(f"services.{name}.handlers")
    assert handlers.TOPOLOGY is BY_NAME[name]
    assert handlers.TOPOLOGY.service == name
    cls = getattr(handlers, HANDLERS_CLASS.get(name, f"{name.capitalize()}Handlers"))
    parameters = list(inspect.signature(cls.__init__).parameters.values())[1:]
    assert parameters and all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in parameters)
    assert {s.handler for s in handlers.TOPOLOGY.subscriptions} <= set(vars(cls))
