"""Progress of a series of image builds: what will be ensured and roughly how long, up front; then
step k of n with the elapsed time (a bar redrawn in place on a terminal, one line per step in CI).
Estimates are what each step last took to build on this machine (a file in the image cache)."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TextIO, TypeVar

from vk8s.images import cache

T = TypeVar("T")
# A step never built here: about what a control-plane image takes on 2 quiet cores.
DEFAULT_ESTIMATE_S = 60.0
BAR_WIDTH = 24


def minutes(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds}s" if seconds < 60 else f"{seconds // 60}m{seconds % 60:02d}s"


class BuildSteps:
    def __init__(
        self,
        title: str,
        steps: Sequence[str],
        *,
        stream: TextIO | None = None,
        durations_file: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._title = title
        self._steps = list(steps)
        self._stream = stream or sys.stderr
        self._durations_file = durations_file or cache.images_dir() / "durations.json"
        self._clock = clock
        self._durations = self._read_durations()
        self._estimate_s = sum(self._estimate(step) for step in self._steps)
        self._started = clock()
        self._done = 0

    def announce(self) -> None:
        self._line(
            f"{self._title}: {len(self._steps)} to ensure ({', '.join(self._steps)}); if none is cached, "
            f"roughly {minutes(self._estimate_s)} here (this machine's last builds), longer on a busy machine"
        )

    def run(self, step: str, make: Callable[[], T]) -> T:
        """Runs one step (`make` returns at once when its archive is cached) and reports it."""
        self._done += 1
        builds_before, step_started = cache.builds_done(), self._clock()
        ticker = self._tick_while_running(step) if self._stream.isatty() else None
        if ticker is None:
            self._line(f"step {self._done}/{len(self._steps)}: {step} (elapsed {self._elapsed()})")
        try:
            result = make()
        finally:
            if ticker is not None:
                ticker.set()
        took = self._clock() - step_started
        if cache.builds_done() > builds_before:
            self._durations[step] = round(took, 1)
            self._write_durations()
            outcome = f"built in {minutes(took)}"
        else:
            outcome = "cached"
        end = "\n" if ticker is not None else ""
        self._line(f"{end}step {self._done}/{len(self._steps)}: {step} {outcome} (elapsed {self._elapsed()})")
        return result

    def _tick_while_running(self, step: str) -> threading.Event:
        stop = threading.Event()

        def redraw() -> None:
            while not stop.wait(timeout=1.0):
                self._bar(step)

        self._bar(step)
        threading.Thread(target=redraw, name="image-build-progress", daemon=True).start()
        return stop

    def _bar(self, step: str) -> None:
        done_s = sum(self._estimate(s) for s in self._steps[: self._done - 1])
        filled = int(BAR_WIDTH * min(1.0, done_s / self._estimate_s)) if self._estimate_s else 0
        bar = ("#" * filled).ljust(BAR_WIDTH)
        self._stream.write(
            f"\r{self._title}: [{bar}] step {self._done}/{len(self._steps)} {step:<40.40} "
            f"elapsed {self._elapsed()} of ~{minutes(self._estimate_s)} "
        )
        self._stream.flush()

    def _elapsed(self) -> str:
        return minutes(self._clock() - self._started)

    def _line(self, text: str) -> None:
        self._stream.write(f"{text}\n")
        self._stream.flush()

    def _estimate(self, step: str) -> float:
        return float(self._durations.get(step, DEFAULT_ESTIMATE_S))

    def _read_durations(self) -> dict[str, float]:
        try:
            loaded = json.loads(self._durations_file.read_text())
        except (OSError, ValueError):
            return {}
        return {str(k): float(v) for k, v in loaded.items()} if isinstance(loaded, dict) else {}

    def _write_durations(self) -> None:
        # Best effort: an estimate lost costs nothing but a worse guess next time.
        try:
            self._durations_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self._durations_file.with_name(f".{self._durations_file.name}.tmp")
            tmp.write_text(json.dumps(self._durations, indent=1, sort_keys=True))
            tmp.replace(self._durations_file)
        except OSError:
            pass
