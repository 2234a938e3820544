"""The `vk8s` command: each sub-command lives in `vk8s.commands.<name>` and is loaded on use."""

from __future__ import annotations

import importlib

import click

# sub-command name -> module in vk8s.commands that defines a click command of that name
_COMMANDS = {
    "validate": "validate",
    "events": "events",
    "testbed": "testbed",
    "up": "up",
    "down": "up",
    "create": "clusters",
    "get": "clusters",
    "delete": "clusters",
    "kubeconfig": "kubeconfig",
}


class LazyGroup(click.Group):
    """Imports a sub-command's module only when it runs, so `vk8s validate` stays fast."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(name for name, module in _COMMANDS.items() if self._find(name, module))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module = _COMMANDS.get(cmd_name)
        return self._find(cmd_name, module) if module else None

    @staticmethod
    def _find(name: str, module: str) -> click.Command | None:
        try:
            loaded = importlib.import_module(f"vk8s.commands.{module}")
        except ModuleNotFoundError as exc:
            if exc.name == f"vk8s.commands.{module}":
                return None
            raise
        command = getattr(loaded, name.replace("-", "_") + "_command", None)
        return command if isinstance(command, click.Command) else None


@click.group(cls=LazyGroup)
def main() -> None:
    """On-demand virtual Kubernetes clusters with Kubeflow for GPU ML teams."""
