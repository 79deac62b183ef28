"""Where `generate` runs: on the process's main thread when it is free, otherwise on a thread of its own.

Why: with this torch build (GNU OpenMP + MKL) intra-op parallelism only pays on the initial thread: on any other
thread a matvec runs as on one core, and decoding slows by about a third (docs/benchmarks.md#model-speed). Gradio
runs handlers on worker threads, so the app parks its main thread in `serve_forever` and hands it the
generation jobs. When the main thread is busy (a second user at the same time) a job gets a thread of its
own instead of waiting, so nobody is queued behind another person's reply.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

Job = Callable[[], None]


class GenerationExecutor:
    """Runs jobs (callables that handle their own errors) on the main thread while it serves, else on threads."""

    def __init__(self) -> None:
        self._jobs: queue.Queue[Job] = queue.Queue()
        self._main_free = threading.Semaphore(1)
        self._serving = threading.Event()
        self.main_thread_jobs = 0
        self.thread_jobs = 0

    def submit(self, job: Job) -> None:
        if self._serving.is_set() and self._main_free.acquire(blocking=False):
            self.main_thread_jobs += 1
            self._jobs.put(job)
            return
        self.thread_jobs += 1
        threading.Thread(target=job, name="generate", daemon=True).start()

    def serve_forever(self, should_stop: Callable[[], bool] = lambda: False, poll_seconds: float = 0.2) -> None:
        """Run submitted jobs on the calling thread (call it from the main thread) until `should_stop()`."""
        self._serving.set()
        try:
            while not should_stop():
                try:
                    job = self._jobs.get(timeout=poll_seconds)
                except queue.Empty:
                    continue
                try:
                    job()
                except Exception:  # a job reports its own errors; this only keeps the loop alive
                    log.exception("Generation job failed")
                finally:
                    self._main_free.release()
        finally:
            self._serving.clear()
            while not self._jobs.empty():  # accepted just before the stop: hand them to threads
                self._main_free.release()
                threading.Thread(target=self._jobs.get_nowait(), name="generate", daemon=True).start()
