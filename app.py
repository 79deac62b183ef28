"""Attune's web UI: start-up (settings, the service, the training worker) and the Gradio page from ui/. All work is
done by `assistant.service.ChatService`.

    python app.py [--model embedded|gpt2|ID|FOLDER] [--data-dir DIR] [--host 127.0.0.1] [--port 7860]
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from adapters.blend import AdapterServer
from adapters.registry import AdapterRegistry
from adapters.worker import ADAPTERS_DIR
from assistant.backend import choose_decoder
from assistant.config import AppConfig
from assistant.executor import GenerationExecutor
from assistant.model import load_model
from assistant.overrides import add_settings_arguments, config_from_args, settings_diff
from assistant.service import ChatService
from storage.db import DB_FILENAME
from storage.errors import AttuneError
from storage.store import Store
from ui import STYLE, build_app

__all__ = ["APP_ALIASES", "build_app", "create_service", "launch", "main", "parse_args", "start_worker",
           "worker_command"]

log = logging.getLogger("attune.app")


APP_ALIASES = {
    "--model": ("model.model", None),
    "--model-cache": ("model.cache_dir", None),
    "--allow-download": ("model.allow_download", "true"),
    "--data-dir": ("data_dir", None),
    "--backend": ("model.backend", None),
    "--server": ("model.server", None),
    "--host": ("host", None),
    "--auth": ("auth", None),
    "--insecure-household": ("insecure_household", "true"),
    "--port": ("port", None),
    "--no-worker": ("worker", "false"),
    "--worker-threads": ("worker_threads", None),
}
"""The app's short flags, each the same as one `--set` setting."""


def parse_args(argv: list[str] | None = None) -> AppConfig:
    parser = argparse.ArgumentParser(
        description="Attune: a chat assistant that learns your preferences.",
        epilog="--model takes 'embedded' (SmolLM2-135M-Instruct, the default), gpt2, a hub id or a folder; the data "
               "home defaults to $ATTUNE_HOME or ./data. Every setting is listed in docs/usage.md.")
    add_settings_arguments(parser, APP_ALIASES)
    return config_from_args(parser, parser.parse_args(argv), AppConfig())


def create_service(config: AppConfig, executor: GenerationExecutor | None = None) -> ChatService:
    loaded = load_model(config.model, config.model_cache_dir)
    store = Store(config.data_dir / DB_FILENAME)
    adapters = AdapterServer(loaded, AdapterRegistry(config.data_dir / ADAPTERS_DIR, store), store,
                             config.learning.blend)
    decoder = choose_decoder(config.model, loaded, training=store.training_running if config.worker else None,
                             cache_root=config.model_cache_dir)
    return ChatService(store, loaded, config, executor, adapters, config.learning, decoder=decoder)


def worker_command(config: AppConfig) -> list[str]:
    """The training worker's command line: every setting in which this app's config differs from the defaults
    (the data home always, as its default depends on the environment), and this process to watch."""
    settings = [s for s in settings_diff(config, AppConfig()) if not s.startswith("data_dir=")]
    return [sys.executable, "-m", "adapters.worker", "--data-dir", str(config.data_dir), "--parent-pid",
            str(os.getpid()), *(a for setting in settings for a in ("--set", setting))]


def start_worker(config: AppConfig) -> subprocess.Popen:
    """The training worker, as its own process (it trains while this one serves)."""
    return subprocess.Popen(worker_command(config), cwd=Path(__file__).resolve().parent)


def stop_worker(worker: subprocess.Popen, grace_seconds: float = 4.0) -> None:
    """SIGTERM: the worker abandons its job (queued again) and exits; killed if it has not within the grace."""
    worker.terminate()
    try:
        worker.wait(timeout=grace_seconds)
    except subprocess.TimeoutExpired:
        log.warning("The training worker did not stop within %.0f s; killing it.", grace_seconds)
        worker.kill()
        worker.wait()


class Supervisor:
    """Keeps the training worker running: one that exits while the app serves (killed, crashed) is started again
    after a pause that doubles with each quick exit (1 s, 2 s, … up to `MAX_PAUSE`), and back to 1 s once a worker
    has run for `STEADY` seconds. Its job, left running, is queued again at once for the next worker."""

    MAX_PAUSE = 30.0
    STEADY = 60.0

    def __init__(self, config: AppConfig, store: Store, stopping: threading.Event):
        self.config, self.store = config, store
        self.worker = start_worker(config)
        self._stopping = stopping  # the app's own stop (Ctrl-C, SIGTERM): from then on no restart
        self._thread = threading.Thread(target=self._watch, name="worker-supervisor", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        pause, started = 1.0, time.monotonic()
        while not self._stopping.wait(0.5):
            code = self.worker.poll()
            if code is None:
                continue
            pause = 1.0 if time.monotonic() - started >= self.STEADY else pause
            log.warning("The training worker exited (code %s); starting it again in %.0f s.", code, pause)
            self.store.requeue_jobs_of(self.worker.pid, f"the training worker stopped (code {code}); it runs again")
            if self._stopping.wait(pause):
                return
            self.worker, started = start_worker(self.config), time.monotonic()
            pause = min(pause * 2, self.MAX_PAUSE)

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join()
        stop_worker(self.worker)


def launch(demo, service: ChatService, config: AppConfig, **options) -> str:
    """Queue and start the page's server without blocking; returns its address. With `--auth` every visitor logs in
    (`ChatService.log_in`, failed logins rate-limited); uploads are capped at `max_upload_bytes`."""
    demo.queue(default_concurrency_limit=4, max_size=config.queue_size)
    auth = {"auth": service.log_in, "auth_message": "Log in with your Attune account."} if service.accounts else {}
    # show_error: every handler turns its own failures into a message (ui/errors.py), so what reaches a client this
    # way is Gradio's refusal of a wrongly typed argument ("Expected a `float`…"), which it should read.
    _, url, _ = demo.launch(server_name=config.host, server_port=config.port, show_error=True,
                            prevent_thread_lock=True, max_file_size=config.max_upload_bytes, **auth, **STYLE,
                            **options)
    return url


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    executor = GenerationExecutor()
    try:
        config = parse_args(argv)
        service = create_service(config, executor)
    except AttuneError as exc:
        log.error("%s", exc)
        return 2
    stopping = threading.Event()
    worker = Supervisor(config, service.store, stopping) if config.worker else None
    demo = build_app(service, config)
    launch(demo, service, config)
    if config.auth is None:
        log.info("Household mode: anyone who reaches this page may use every profile (give --auth for accounts).")
    # Ctrl-C and SIGTERM both stop the loop between jobs. As a handler of our own, SIGINT also works when the app was
    # started with it ignored (a background job of a script inherits that), and it is never swallowed as the failure
    # of a reply being generated on the main thread.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopping.set())
    try:
        executor.serve_forever(should_stop=stopping.is_set)  # the main thread generates: see assistant/executor.py
    finally:
        log.info("Stopping.")
        demo.close()
        if worker is not None:
            worker.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
