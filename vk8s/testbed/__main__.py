"""`python -m vk8s.testbed serve ...`: the supervisor process that `vk8s testbed up --detach` starts."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

import click

from vk8s.testbed.config import FleetSpec, StateLayout
from vk8s.testbed.errors import TestbedError
from vk8s.testbed.supervisor import Supervisor, enter_real_tier


@click.group()
def main() -> None:
    """Testbed internals."""


@main.command()
@click.option("--state-dir", type=click.Path(path_type=Path), required=True)
@click.option("--bin-dir", type=click.Path(path_type=Path, exists=True, file_okay=False), required=True)
@click.option("--fleet", "fleet_json", required=True, help="FleetSpec as JSON.")
@click.option("--owner-pid", type=int, default=None, help="Stop when this process is gone.")
def serve(state_dir: Path, bin_dir: Path, fleet_json: str, owner_pid: int | None) -> None:
    """Runs the supervisor in the foreground until SIGTERM or SIGINT (or its owner's exit)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    fleet = FleetSpec.model_validate_json(fleet_json)
    layout = StateLayout(state_dir)
    try:
        real_tier = enter_real_tier(layout, fleet, bin_dir) if fleet.runtime == "real" else None
        asyncio.run(Supervisor(layout, fleet, bin_dir, owner_pid=owner_pid, real_tier=real_tier).run())
    except TestbedError as exc:
        logging.getLogger("vk8s.testbed").error("%s", exc)
        sys.exit(1)


if __name__ == "__main__":
    main()
