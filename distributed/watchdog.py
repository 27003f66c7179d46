"""No silent hangs: a Train worker that makes no progress for `engine.stall_seconds` ends its run with one line.

A worker ticks its watchdog whenever it moves on (a batch arrives, a step ends, a phase begins); a tick only
stores the time and what the worker is about to wait for, so the step gains no host synchronisation. A thread
checks the last tick; when it is older than the limit, the thread writes what waited for what to the run's stall
file (and the worker's log) and ends the worker process: a training thread blocked inside Ray Data or a
collective cannot be interrupted from Python, but Ray Train notices a dead worker at once. Train then restarts
from the last checkpoint (`engine.max_failures`) or fails the run, and the driver raises the stall line
(`RunFailed`) instead of Ray's "actor died". A worker group that never starts (the cluster's CPUs or GPUs held by
someone else) is Ray Train's own start timeout, set to the same limit by the driver (distributed/train.py).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

STALL_FILE = "stall.txt"
_EXIT_STATUS = 75  # EX_TEMPFAIL: the worker gave up waiting


class Watchdog:
    """Ticked by a worker's training loop; `seconds` <= 0 turns it off."""

    def __init__(self, seconds: float, rank: int, stall_file: str | Path | None):
        self.seconds, self.rank, self.stall_file = float(seconds), rank, stall_file
        self.waiting_for = "starting"
        self.last = time.monotonic()
        self._stop = threading.Event()
        if self.seconds > 0:
            threading.Thread(target=self._watch, name="comical-watchdog", daemon=True).start()

    def tick(self, waiting_for: str) -> None:
        """Progress: from now on the worker waits for `waiting_for` (a phrase: 'its next train batch ...')."""
        self.waiting_for, self.last = waiting_for, time.monotonic()

    def close(self) -> None:
        self._stop.set()

    def _watch(self) -> None:
        while not self._stop.wait(min(5.0, self.seconds / 4)):
            idle = time.monotonic() - self.last
            if idle > self.seconds:
                self._give_up(f"no progress for {idle:.0f} s (engine.stall_seconds {self.seconds:g}): worker "
                              f"{self.rank} waited for {self.waiting_for}")

    def _give_up(self, line: str) -> None:
        free = cluster_free()
        line += f"; {free}" if free else ""
        print(line, file=sys.stderr, flush=True)
        if self.stall_file:
            try:
                with open(self.stall_file, "a") as f:
                    f.write(line + "\n")
            except OSError:  # storage this node cannot write (a remote URI): the log line above still says it
                pass
        os._exit(_EXIT_STATUS)


def read_stall(folder: Path) -> str | None:
    """The first stall line a worker of the run in `folder` wrote, if any."""
    path = Path(folder) / STALL_FILE
    if not path.is_file():
        return None
    lines = path.read_text().splitlines()
    return lines[0] if lines else None


def cluster_free() -> str:
    """'the cluster has 0 of 4 CPUs free': what a starved read or worker waited for, in a few seconds at most
    (asked from a thread, because a stall may be Ray's own); '' when Ray does not answer."""
    found: list[str] = []

    def ask() -> None:
        import ray

        free, total = ray.available_resources(), ray.cluster_resources()
        gpus = f" and {free.get('GPU', 0):g} of {total['GPU']:g} GPUs" if total.get("GPU") else ""
        found.append(f"the cluster has {free.get('CPU', 0):g} of {total.get('CPU', 0):g} CPUs{gpus} free")

    thread = threading.Thread(target=ask, daemon=True)
    thread.start()
    thread.join(5.0)
    return found[0] if found else ""
