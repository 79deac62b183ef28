"""The training worker: takes jobs from the `training_jobs` table, trains, publishes. Runs beside the app.

    python -m adapters.worker [--data-dir DIR] [--model embedded] [--threads 1] [--once] [--set KEY=VALUE ...]

app.py starts it by default. A job whose worker was killed is taken over when its heartbeat goes stale
(`LearningConfig.stale_seconds`), and the app keeps serving the previous versions meanwhile.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import logging
import os
import signal
import threading
import time
from dataclasses import asdict, replace

import torch
from peft import set_peft_model_state_dict

from adapters.drift import anchor_batch, limit_drift, perplexity, trainable_state
from adapters.jobs import UpdateData, global_ready, global_update, personal_update
from assistant.config import DATA_HOME_ENV, AppConfig, LearningConfig
from adapters.registry import GLOBAL, AdapterRegistry
from adapters.training import ReferenceCache, objective, pair_key, preference_margins, train_adapter
from adapters.lora import add_lora
from assistant.model import LoadedModel, load_model
from assistant.overrides import add_settings_arguments, config_from_args
from storage.db import DB_FILENAME
from storage.errors import AttuneError
from storage.store import Store

log = logging.getLogger(__name__)

ADAPTERS_DIR = "adapters"


def merge_lora(model: torch.nn.Module, config: dict, tensors: dict[str, torch.Tensor]) -> None:
    """Add a LoRA adapter's update into `model`'s weights in place (W += s·B·A)."""
    scale = config["lora_alpha"] / config["r"]
    for key, a in tensors.items():
        if ".lora_A." not in key:
            continue
        module = model.get_submodule(key.removeprefix("base_model.model.").split(".lora_A.")[0])
        delta = scale * tensors[key.replace(".lora_A.", ".lora_B.")].float() @ a.float()  # (out, in)
        weight = module.weight
        with torch.no_grad():
            weight += delta.T if weight.shape != delta.shape else delta  # GPT-2's Conv1D stores (in, out)


class Worker:
    def __init__(self, loaded: LoadedModel, store: Store, registry: AdapterRegistry, config: LearningConfig):
        self.loaded = loaded  # the pristine base: never trained or merged into, only copied
        self.store = store
        self.registry = registry
        self.config = config
        self.stop = threading.Event()
        self._margins = ReferenceCache(8192)  # (model below, pair content) → held-out margin
        self._references = ReferenceCache()  # training pairs' reference values, per reference model
        self._anchor_batch = None  # the drift guard's anchor replies, tokenized once
        self._anchor_base: float | None = None
        removed = registry.remove_strays()
        if removed:
            log.info("Removed %d unfinished adapter folder(s) from an interrupted publish.", len(removed))

    def run_forever(self, poll_seconds: float = 0.5, parent_pid: int | None = None) -> None:
        """Run jobs until stopped, or until the process `parent_pid` (the app) is gone."""
        log.info("Training worker ready (pid %d).", os.getpid())
        while not self.stop.is_set():
            if parent_pid is not None and not _parent_alive(parent_pid):
                log.info("The app (pid %d) is gone; stopping.", parent_pid)
                return
            if not self.run_once():
                self.stop.wait(poll_seconds)

    def run_once(self) -> bool:
        """Run the next job, if any; True if there was one."""
        job = self.store.claim_job(self.config.stale_seconds)
        if job is None:
            return False
        log.info("Job %s: %s (%s, attempt %d)", job["id"], job["adapter"], job["reason"], job["attempts"])
        try:
            result = self._run(job)
            if self.store.get_job(job["id"])["status"] == "cancelled":
                log.info("Job %s was cancelled while it ran; nothing published.", job["id"])
            else:
                self.store.finish_job(job["id"], "done", result.pop("message"), result)
        except Exception as exc:  # a failed job is recorded and the worker goes on
            log.exception("Job %s failed", job["id"])
            self.store.finish_job(job["id"], "failed", f"{type(exc).__name__}: {exc}")
        return True

    # ---- one job -------------------------------------------------------------------------------------------

    def _fresh_base(self) -> torch.nn.Module:
        return copy.deepcopy(self.loaded.model)

    def _run(self, job: dict) -> dict:
        timings: dict[str, float] = {}
        clock = [time.perf_counter()]

        def lap(name: str) -> None:
            now = time.perf_counter()
            timings[name] = round(now - clock[0], 3)
            clock[0] = now

        adapter, profile_id = job["adapter"], job["profile_id"]
        current = self.registry.current(adapter)
        since = self.store.trained_until(adapter)
        update = (current.manifest.get("update", 0) if current else 0) + 1  # place in the warm-start chain
        # Replay sample: fixed by the adapter and its place in the chain (not the clock), so the same database
        # gives the same replay (the benchmark also draws profile and feedback ids from its seed, so a run repeats).
        seed = int(hashlib.sha256(f"{adapter}:{update}".encode()).hexdigest()[:8], 16)
        if adapter == GLOBAL:
            if not global_ready(self.store, self.config):  # e.g. "Train now" in a home of one
                return {"message": f"the global adapter waits for feedback from {self.config.min_profiles} profiles"}
            data = global_update(self.store, since, self.config, seed)
        else:
            data = personal_update(self.store, profile_id, since, self.config, seed)
        if not len(data.train):
            return {"message": "nothing new to learn from"}
        lap("data_s")

        model = self._fresh_base()
        global_version = None
        reference_key = "base"  # what the adapter's reference (the model with the adapter disabled) is
        if adapter != GLOBAL:  # a personal adapter is a residual on top of the current global one
            global_current = self.registry.current(GLOBAL)
            if global_current:
                merge_lora(model, *self.registry.load_weights(global_current))
                global_version = global_current.label
                reference_key = f"global {global_version} {global_current.manifest.get('checksum_sha256')}"
        peft_model = add_lora(model, self.config.lora)
        refit = adapter != GLOBAL and self.config.personal_refit > 0
        if current and not refit:  # warm start
            set_peft_model_state_dict(peft_model, self.registry.load_weights(current)[1])
        start = trainable_state(peft_model) if self.config.max_drift is not None else None

        def progress(step, total, metrics):
            self.store.job_progress(job["id"], step / total,
                                    f"step {step}/{total}, loss {metrics.get('loss', float('nan')):.3f}")

        self.store.job_progress(job["id"], 0.0, f"training on {len(data.train)} examples")
        lap("model_s")
        train = replace(self.config.train, learning_rate=self.config.train.learning_rate_at(1 if refit else update))
        if adapter == GLOBAL and self.config.global_rpo_alpha is not None:
            train = replace(train, rpo_alpha=self.config.global_rpo_alpha)
        metrics = train_adapter(peft_model, self.loaded, data.train, train, progress, new_examples=data.new_events,
                                references=self._references, reference_key=reference_key)
        lap("train_s")
        if start is not None:
            metrics.update(limit_drift(peft_model, start, self._anchor(), self._anchor_base_perplexity(),
                                       1 + self.config.max_drift))
            lap("drift_s")
        metrics.update(self._evaluate(peft_model, data, personal=adapter != GLOBAL, global_version=global_version))
        lap("eval_s")
        manifest = {
            "base_model": self.loaded.model_id,
            "objective": objective(train),
            "trained_on_global": global_version,
            "feedback_ids": data.train.feedback_ids,
            "held_out_feedback_ids": data.held_out.feedback_ids,
            "new_events": data.new_events,
            "update": update,
            "refit": refit,
            "trained_until": data.trained_until,
            "hyperparameters": {"train": asdict(train), "lora": asdict(self.config.lora),
                                "max_drift": self.config.max_drift},
            "metrics": metrics,
        }
        if self.store.get_job(job["id"])["status"] == "cancelled":
            return {"message": "cancelled"}
        version = self.registry.publish(adapter, profile_id, peft_model, manifest, data.trained_until or "")
        lap("publish_s")
        log.info("Job %s timings: %s", job["id"], timings)
        return {"message": f"published {version.label}", "version": version.label, "metrics": metrics,
                "timings": timings}

    def _evaluate(self, peft_model, data: UpdateData, personal: bool, global_version: str | None) -> dict:
        """Held-out preference accuracy (the model's own likelihood prefers the chosen reply) of the adapter, of
        the model it sits on (base + global for a personal one) and of the bare base. The last two cannot change
        for a given pair until the global version does, so their margins are kept per feedback id."""
        pairs = data.held_out.pairs
        if not pairs:
            return {"eval/pairs": 0}
        train = self.config.train
        with_adapter = preference_margins(peft_model, self.loaded, pairs, train)
        with peft_model.disable_adapter():
            below = self._cached_margins(peft_model, pairs, global_version if personal else None)
        accuracy = {"adapter": (with_adapter > 0).float().mean().item(), "below": (below > 0).float().mean().item()}
        if not personal:
            return {"eval/pairs": len(pairs), "eval/accuracy_global": accuracy["adapter"],
                    "eval/accuracy_base": accuracy["below"]}
        base_margins = self._cached_margins(self.loaded.model, pairs, None)
        mine, below_right = with_adapter > 0, below > 0
        return {"eval/pairs": len(pairs), "eval/accuracy_personal": accuracy["adapter"],
                "eval/accuracy_global": accuracy["below"],
                "eval/only_personal_right": int((mine & ~below_right).sum()),
                "eval/only_global_right": int((below_right & ~mine).sum()),
                "eval/accuracy_base": (base_margins > 0).float().mean().item()}

    def _anchor(self):
        if self._anchor_batch is None:
            self._anchor_batch = anchor_batch(self.loaded)
        return self._anchor_batch

    def _anchor_base_perplexity(self) -> float:
        """The bare base model's anchor perplexity: the drift guard's yardstick (computed once)."""
        if self._anchor_base is None:
            self._anchor_base = perplexity(self.loaded.model, self._anchor())
        return self._anchor_base

    def _cached_margins(self, model, pairs, key: str | None) -> torch.Tensor:
        """Held-out margins of the model below (base, or base + global version `key`), kept per pair *content*: a
        changed vote swaps chosen and rejected and so gets its own entry."""
        keys = [pair_key(f"margin {key}", p, self.config.train) for p in pairs]
        missing = [(k, p) for k, p in zip(keys, pairs) if self._margins.get(k) is None]
        if missing:
            fresh = preference_margins(model, self.loaded, [p for _, p in missing], self.config.train).tolist()
            for (k, _), m in zip(missing, fresh):
                self._margins.put(k, m)
        return torch.tensor([self._margins.get(k) for k in keys])


def _parent_alive(pid: int) -> bool:
    """Whether `pid` is still this process's parent (an orphan is adopted by another process)."""
    return os.getppid() == pid


WORKER_ALIASES = {
    "--model": ("model.model", None),
    "--model-cache": ("model.cache_dir", None),
    "--data-dir": ("data_dir", None),
    "--threads": ("worker_threads", None),
}
"""The worker's short flags, each the same as one `--set` setting (the app passes its settings as `--set`)."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="attune-worker", description=__doc__.split("\n\n")[0],
                                     epilog=f"The data home defaults to ${DATA_HOME_ENV} or ./data.")
    add_settings_arguments(parser, WORKER_ALIASES)
    parser.add_argument("--nice", type=int, default=10,
                        help="lower the worker's CPU priority by this much, so replies win the CPU (0: off)")
    parser.add_argument("--parent-pid", type=int, default=None, help="exit when this process (the app) exits")
    parser.add_argument("--once", action="store_true", help="run the queued jobs, then exit")
    return parser


def parse_args(argv: list[str] | None = None) -> tuple[AppConfig, argparse.Namespace]:
    """The settings a worker command line asks for, and its process flags (a bad setting exits with status 2)."""
    parser = _parser()
    args = parser.parse_args(argv)
    return config_from_args(parser, args, AppConfig()), args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s worker %(name)s: %(message)s")
    config, args = parse_args(argv)
    if config.worker_threads:
        torch.set_num_threads(config.worker_threads)
    if args.nice:
        os.nice(args.nice)
    try:
        loaded = load_model(config.model, config.model_cache_dir)
    except AttuneError as exc:
        log.error("%s", exc)
        return 2
    store = Store(config.data_dir / DB_FILENAME)
    worker = Worker(loaded, store, AdapterRegistry(config.data_dir / ADAPTERS_DIR, store), config.learning)
    signal.signal(signal.SIGTERM, lambda *_: worker.stop.set())
    if args.once:
        while worker.run_once():
            pass
        return 0
    try:
        worker.run_forever(parent_pid=args.parent_pid)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
