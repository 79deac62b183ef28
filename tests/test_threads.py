"""The worker's thread plan (adapters/threads.py): every core while the app is idle, one while it decodes."""

from __future__ import annotations

import os
import sys
import time

import pytest
import torch

from adapters.threads import ThreadPlan, cpu_seconds


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_the_plan_follows_the_app_cpu_use():
    clock, used = [0.0], [0.0]
    plan = ThreadPlan(1234, cores=2, read=lambda pid: used[0], clock=lambda: clock[0])
    clock[0], used[0] = 2.0, 0.1  # 0.05 cores: idle
    assert plan.step() == 2 and torch.get_num_threads() == 2
    clock[0], used[0] = 4.0, 1.9  # 0.9 cores: decoding a reply
    assert plan.step() == 1 and torch.get_num_threads() == 1
    clock[0], used[0] = 6.0, 2.0  # idle again
    assert plan.step() == 2
    unknown = ThreadPlan(1234, cores=2, read=lambda pid: None)  # (no /proc: every core)
    assert unknown.step() == 2
    clock[0], used[0] = 600.0, 2.0  # a job starts long after: its first step looks at the last moment only
    plan.app_cores()
    clock[0], used[0] = 600.2, 2.18
    assert plan.step() == 1


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_cpu_seconds_counts_a_process_work():
    before = cpu_seconds(os.getpid())
    start = time.process_time()
    while time.process_time() - start < 0.3:  # (CPU time, not wall time: holds on a busy machine)
        pass
    assert cpu_seconds(os.getpid()) - before >= 0.2
    assert cpu_seconds(2**22 + 12345) is None  # no such process
