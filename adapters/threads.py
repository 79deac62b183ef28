"""The worker's torch threads, planned before each training step around what the app is doing.

Two trainer threads stall whenever the app takes a core to decode a reply (each step waits for the thread that lost
its core: a tenth of the speed), while one thread beside a reply keeps nearly all of its speed; alone, two threads
train a third faster than one. So the worker trains on every core while the app is idle and on one while the app
used more than `BUSY_CORES` of a core since the last step (its CPU time from /proc, Linux; elsewhere every core).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch

log = logging.getLogger(__name__)

BUSY_CORES = 0.5
"""The app's CPU use (cores, averaged since the last step) above which it counts as decoding."""
SAMPLE_S = 0.2
"""Seconds over which a job's first step looks at the app's CPU use."""


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process `pid` so far (None where /proc cannot tell)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class ThreadPlan:
    """Sets torch's threads before each step: `cores` while the process `app_pid` is idle, one while it is busy."""

    def __init__(self, app_pid: int, cores: int, read: Callable[[int], float | None] = cpu_seconds,
                 clock: Callable[[], float] = time.monotonic):
        self.app_pid, self.cores, self.read, self.clock = app_pid, max(1, cores), read, clock
        self._last = (clock(), read(app_pid))
        self.threads = torch.get_num_threads()

    def app_cores(self) -> float | None:
        """The app's CPU use in cores since the last call (None where it cannot be read)."""
        now, used = self.clock(), self.read(self.app_pid)
        (then, before), self._last = self._last, (now, used)
        if used is None or before is None or now <= then:
            return None
        return (used - before) / (now - then)

    def start(self, sample_seconds: float = SAMPLE_S) -> int:
        """Plan a job's first step from the app's use over the last `sample_seconds` (the previous call may be
        minutes old); returns the threads."""
        self.app_cores()
        time.sleep(sample_seconds)
        return self.step()

    def step(self) -> int:
        """Plan the next step's threads; returns them."""
        busy = self.app_cores()
        threads = 1 if busy is not None and busy > BUSY_CORES else self.cores
        if threads != self.threads:
            torch.set_num_threads(threads)
            log.debug("Training on %d thread(s): the app used %.2f cores.", threads, busy or 0.0)
            self.threads = threads
        return threads
