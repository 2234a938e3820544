"""Keeps one service process running, as a Deployment does in production: when the process exits
without being told to stop, it is started again after a doubling delay, and each restart is
logged (one JSON line, in the service's own log). `vk8s up` runs every service under a keeper.

    python -m vk8s.local.keeper NAME -- COMMAND [ARGS...]

SIGTERM or SIGINT to the keeper (or its process group, as `vk8s down` sends) stops the service
and the keeper, with no restart.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from types import FrameType

from libs.backoff import backoff_delay

# A process that ran this long was healthy: its next exit starts the delays from the first again.
STABLE_S = 60.0
RESTART_EVENT = "Service process exited; restarting it"


def _log(name: str, level: str, event: str, **fields: object) -> None:
    line = {"event": event, "service": name, "keeper": True, "level": level, **fields}
    line["timestamp"] = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    print(json.dumps(line), flush=True)


def keep(name: str, command: list[str], *, first_delay_s: float, max_delay_s: float) -> int:
    stopping = False
    child: subprocess.Popen[bytes] | None = None

    def stop(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    restarts = 0
    while True:
        started = time.monotonic()
        child = subprocess.Popen(command)
        _log(name, "info", "Started service process", pid=child.pid, restarts=restarts)
        code = child.wait()
        if stopping:
            _log(name, "info", "Service process stopped", pid=child.pid, exit_code=code)
            return 0
        ran_s = time.monotonic() - started
        restarts = 1 if ran_s >= STABLE_S else restarts + 1
        delay = backoff_delay(restarts, first_delay_s, max_delay_s)
        # A negative code is the signal that ended it (-9: SIGKILL).
        _log(
            name,
            "warning",
            RESTART_EVENT,
            pid=child.pid,
            exit_code=code,
            ran_s=round(ran_s, 1),
            restart_in_s=delay,
            restart=restarts,
        )
        deadline = time.monotonic() + delay
        while not stopping and time.monotonic() < deadline:
            time.sleep(0.1)
        if stopping:
            return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", help="the service, for the log")
    parser.add_argument("--first-delay", type=float, default=1.0, help="seconds before the first restart in a row")
    parser.add_argument("--max-delay", type=float, default=60.0, help="longest delay between restarts")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command to keep running (after --)")
    return keep(args.name, command, first_delay_s=args.first_delay, max_delay_s=args.max_delay)


if __name__ == "__main__":
    sys.exit(main())
