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
import math
import os
import signal
import threading
import time
from dataclasses import asdict, dataclass, replace

import torch
from peft import PeftModel, set_peft_model_state_dict

from adapters.drift import anchor_batch, limit_drift, perplexity, trainable_state
from adapters.evaluation import HeldOutEval, cached_margins, preference_margins
from adapters.jobs import UpdateData, global_ready, global_update, personal_update
from adapters.lora import add_lora, merge_lora
from adapters.note import KEY as NOTE_KEY
from adapters.note import LEARNED as NOTE_LEARNED
from adapters.note import learned_share, note_key
from adapters.references import ReferenceCache
from adapters.registry import GLOBAL, AdapterRegistry, AdapterVersion
from adapters.rewards import RewardLearner
from adapters.rloo import Scorer
from adapters.threads import ThreadPlan
from adapters.training import objective, train_adapter
from assistant.config import DATA_HOME_ENV, AppConfig, LearningConfig, TrainConfig
from assistant.model import LoadedModel, load_model
from assistant.overrides import add_settings_arguments, config_from_args
from storage.base import now
from storage.db import DB_FILENAME
from storage.errors import AttuneError
from storage.jobs import ERASURE
from storage.store import Store

log = logging.getLogger(__name__)

ADAPTERS_DIR = "adapters"
NOTE_PROMPTS, NOTE_PROMPT_CHARS = 6, 2_000
"""A note's learning is measured on the profile's newest distinct messages, this many, each this long at most."""


@dataclass(frozen=True)
class Selection:
    """Step 1 of a job (`Worker.select_data`): what the update trains and evaluates on, or why it has nothing to do."""

    adapter: str
    profile_id: str | None
    update: int
    """The update's place in the warm-start chain: 1 + the current version's."""
    current: AdapterVersion | None
    """The version the update starts from (None: the first)."""
    data: UpdateData | None = None
    skip: str | None = None
    """Why there is nothing to train (the job's message); None when `data` has training examples."""

    @property
    def personal(self) -> bool:
        return self.adapter != GLOBAL


@dataclass(frozen=True)
class Built:
    """Step 2 (`Worker.build_model`): the adapter to train, on the model it sits on."""

    model: PeftModel
    global_version: str | None
    """The global version merged below a personal adapter (None: the bare base is below)."""
    reference_key: str
    """Names the reference (the model with the adapter disabled) for the `ReferenceCache`."""
    refit: bool
    """Trained from scratch (`LearningConfig.personal_refit`) instead of warm-started from `Selection.current`."""
    start: dict[str, torch.Tensor] | None
    """The LoRA parameters before training, where the drift guard backtracks to (None: no guard)."""


@dataclass(frozen=True)
class Trained:
    """Step 3 (`Worker.train`): the settings the update trained with, and TRL-named metrics of its last step."""

    config: TrainConfig
    metrics: dict


class _Laps:
    """Seconds spent in each named part of a job (its `timings`)."""

    def __init__(self):
        self.timings: dict[str, float] = {}
        self._last = time.perf_counter()

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        self.timings[name] = round(now - self._last, 3)
        self._last = now


class Stopped(BaseException):
    """Raised in the worker's main thread by SIGTERM or Ctrl-C: the job in hand is abandoned and queued again (a
    publish is atomic, so nothing half-written is served), and the process exits at once."""


def _stop(*_) -> None:
    raise Stopped


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
        self.rewards = RewardLearner(store, loaded, config)  # reads the rewards the app fits; features by the base
        self._started, self._beaten = now(), -math.inf
        self.plan: ThreadPlan | None = None
        """Plans torch's threads before each training step around the app's CPU use (set by `main`)."""
        removed = registry.remove_strays()
        if removed:
            log.info("Removed %d unfinished adapter folder(s) from an interrupted publish.", len(removed))

    BEAT_SECONDS = 5.0
    """How often the worker reports itself alive while idle or training (`Store.worker_beat`)."""

    def beat(self) -> None:
        """Report this worker alive, at most every BEAT_SECONDS."""
        if time.monotonic() - self._beaten >= self.BEAT_SECONDS:
            self.store.worker_beat(os.getpid(), self._started)
            self._beaten = time.monotonic()

    def run_forever(self, poll_seconds: float = 0.5, parent_pid: int | None = None) -> None:
        """Run jobs until stopped, or until the process `parent_pid` (the app) is gone."""
        log.info("Training worker ready (pid %d).", os.getpid())
        while not self.stop.is_set():
            if parent_pid is not None and not _parent_alive(parent_pid):
                log.info("The app (pid %d) is gone; stopping.", parent_pid)
                return
            self.beat()
            if not self.run_once():
                self.stop.wait(poll_seconds)

    def run_once(self) -> bool:
        """Run the next job, if any; True if there was one."""
        job = self.store.claim_job(self.config.stale_seconds, os.getpid())
        if job is None:
            return False
        log.info("Job %s: %s (%s, attempt %d)", job["id"], job["adapter"], job["reason"], job["attempts"])
        try:
            result = self._run(job)
            if self._cancelled(job):
                log.info("Job %s was cancelled while it ran; nothing published.", job["id"])
            else:
                self.store.finish_job(job["id"], "done", result.pop("message"), result)
        except Exception as exc:  # a failed job is recorded and the worker goes on
            log.exception("Job %s failed", job["id"])
            self.store.finish_job(job["id"], "failed", f"{type(exc).__name__}: {exc}")
        except (Stopped, KeyboardInterrupt):
            log.info("Stopped during job %s; it runs again at the next start.", job["id"])
            self.store.requeue_job(job["id"], "the worker stopped before the end; it runs again at the next start")
            raise
        return True

    # ---- one job: select data → build the model → train → drift guard → evaluate → publish -------------------

    def _run(self, job: dict) -> dict:
        lap = _Laps()
        selection = self.select_data(job)
        erasure = job.get("reason") == ERASURE
        if selection.skip:
            if erasure:  # nothing to retrain on: the tainted versions go all the same
                self.registry.drop_tainted(selection.adapter)
            return {"message": selection.skip}
        lap("data_s")
        built = self.build_model(selection)
        lap("model_s")
        trained = self.train(job["id"], selection, built)
        lap("train_s")
        drift = self.guard_drift(built)
        if built.start is not None:
            lap("drift_s")
        held_out = self.evaluate(selection, built)
        note = self.note_learned(selection, built)
        lap("eval_s")
        if self._cancelled(job):
            return {"message": "cancelled"}
        if self._erased_meanwhile(selection):
            return {"message": "feedback it trained on was deleted meanwhile; nothing published (a retrain is due)"}
        metrics = {**trained.metrics, **drift, **held_out.to_metrics(), **note}
        version = self.publish(selection, built, trained.config, metrics)
        if erasure:
            self.registry.drop_tainted(selection.adapter)
        self.registry.prune(selection.adapter, self.config.keep_versions)
        lap("publish_s")
        log.info("Job %s timings: %s", job["id"], lap.timings)
        return {"message": f"published {version.label}", "version": version.label, "metrics": metrics,
                "timings": lap.timings}

    def _erased_meanwhile(self, selection: Selection) -> bool:
        """Whether a profile whose feedback this update trained on was deleted while it ran: then it must not be
        published (the deletion queued a from-scratch retrain of the global adapter)."""
        ids = [*selection.data.train.feedback_ids, *selection.data.held_out.feedback_ids]
        return len(self.store.existing_feedback_ids(ids)) < len(set(ids))

    def _cancelled(self, job: dict) -> bool:
        return self.store.get_job(job["id"])["status"] == "cancelled"

    def select_data(self, job: dict) -> Selection:
        """The job's training and held-out examples: new feedback since the adapter's last version plus a replay
        sample of older feedback (`adapters.jobs`)."""
        adapter, profile_id = job["adapter"], job["profile_id"]
        current = self.registry.current(adapter)
        since = self.store.trained_until(adapter)
        update = (current.manifest.get("update", 0) if current else 0) + 1
        if job.get("reason") == ERASURE:  # from scratch, on all the feedback there is (the erased profile's is gone)
            current, since, update = None, None, 1
        # Replay sample: fixed by the adapter and its place in the chain (not the clock), so the same database
        # gives the same replay (the benchmark also draws profile and feedback ids from its seed, so a run repeats).
        seed = int(hashlib.sha256(f"{adapter}:{update}".encode()).hexdigest()[:8], 16)
        if adapter == GLOBAL:
            if not global_ready(self.store, self.config):  # e.g. "Train now" in a home of one
                return Selection(adapter, profile_id, update, current,
                                 skip=f"the global adapter waits for feedback from {self.config.min_profiles} profiles")
            data = global_update(self.store, since, self.config, seed)
        else:
            data = personal_update(self.store, profile_id, since, self.config, seed)
        # No new feedback (e.g. Train now twice): the replay alone would publish a version that learned nothing new.
        skip = None if data.new_events and len(data.train) else "nothing new to learn from"
        return Selection(adapter, profile_id, update, current, data, skip)

    def build_model(self, selection: Selection) -> Built:
        """A fresh copy of the base (+ the current global version merged in, below a personal adapter) with a LoRA
        adapter, warm-started from the current version unless refitting."""
        model = copy.deepcopy(self.loaded.model)
        global_version = None
        reference_key = "base"  # what the adapter's reference (the model with the adapter disabled) is
        if selection.personal:  # a personal adapter is a residual on top of the current global one
            below = self.registry.newest_usable(GLOBAL)  # (a bad served version: the one before it, as served)
            if below:
                global_current, weights = below
                merge_lora(model, *weights)
                global_version = global_current.label
                reference_key = f"global {global_version} {global_current.manifest.get('checksum_sha256')}"
        peft_model = add_lora(model, self.config.lora)
        refit = selection.personal and self.config.personal_refit > 0
        start_from = self.registry.newest_usable(selection.adapter) if selection.current and not refit else None
        if start_from:  # warm start, from a version that passes its checks
            set_peft_model_state_dict(peft_model, start_from[1][1])
        start = trainable_state(peft_model) if self.config.max_drift is not None else None
        return Built(peft_model, global_version, reference_key, refit, start)

    def train_config(self, selection: Selection, refit: bool) -> TrainConfig:
        """`LearningConfig.train` at this place in the warm-start chain (a refit starts a chain), with the global
        adapter's own chosen-reply weight."""
        train = replace(self.config.train,
                        learning_rate=self.config.train.learning_rate_at(1 if refit else selection.update))
        if not selection.personal and self.config.global_rpo_alpha is not None:
            train = replace(train, rpo_alpha=self.config.global_rpo_alpha)
        return train

    def train(self, job_id: str, selection: Selection, built: Built) -> Trained:
        """Train `built.model` in place on the selected examples, reporting progress on the job."""
        data = selection.data

        def progress(step, total, metrics):
            log.debug("job %s step %d/%d loss %.4f", job_id, step, total, metrics.get("loss", float("nan")))
            self.store.job_progress(job_id, step / total, f"step {step} of {total}")
            self.beat()
            if self.plan:
                self.plan.step()

        if self.plan:
            self.plan.start()
        self.store.job_progress(job_id, 0.0, f"training on {len(data.train)} examples")
        config = self.train_config(selection, built.refit)
        metrics = train_adapter(built.model, self.loaded, data.train, config, progress, new_examples=data.new_events,
                                references=self._references, reference_key=built.reference_key,
                                reward=self.reward_for(selection) if config.objective != "dpo" else None)
        return Trained(config, metrics)

    def reward_for(self, selection: Selection) -> Scorer | None:
        """What scores the RLOO samples of this update: the profile's learned reward (else everyone's) for a personal
        adapter, everyone's for the global one; None when none has been fitted (the update trains as DPO)."""
        fitted = self.rewards.scorer(selection.profile_id) if selection.personal else self.rewards.current(None)
        if fitted is None:
            log.info("No learned reward for %s yet: this update trains as DPO", selection.adapter)
            return None
        return lambda items: torch.tensor(self.rewards.score(fitted, items))

    def guard_drift(self, built: Built) -> dict:
        """Hold the trained adapter inside `LearningConfig.max_drift` (`adapters.drift.limit_drift`, in place);
        the guard's metrics, none when it is off."""
        if built.start is None:
            return {}
        return limit_drift(built.model, built.start, self._anchor(), self._anchor_base_perplexity(),
                           1 + self.config.max_drift)

    def evaluate(self, selection: Selection, built: Built) -> HeldOutEval:
        """Held-out preference accuracy (the model's own likelihood prefers the chosen reply) of the adapter, of
        the model it sits on (base + global for a personal one) and of the bare base. The last two cannot change
        for a given pair until the global version does, so their margins are kept per pair."""
        pairs, train, model = selection.data.held_out.pairs, self.config.train, built.model
        if not pairs:
            return HeldOutEval(pairs=0)
        with_adapter = preference_margins(model, self.loaded, pairs, train)
        with model.disable_adapter():
            below = cached_margins(model, self.loaded, pairs, built.global_version if selection.personal else None,
                                   train, self._margins)
        if not selection.personal:
            return HeldOutEval.of_global(with_adapter, base=below)
        base = cached_margins(self.loaded.model, self.loaded, pairs, None, train, self._margins)
        return HeldOutEval.of_personal(with_adapter, below=below, base=base)

    def note_learned(self, selection: Selection, built: Built) -> dict:
        """A personal update of a profile with a note: how far the adapter has learned it, on the profile's recent
        prompts (`adapters.note`); {} otherwise."""
        note = self.store.note(selection.profile_id) if selection.personal else ""
        if not note:
            return {}
        prompts = [m.content for m in self.store.recent_user_messages(selection.profile_id, NOTE_PROMPTS)
                   if len(m.content) <= NOTE_PROMPT_CHARS]
        share = learned_share(built.model, self.loaded, prompts, note, self.config.train)
        return {} if share is None else {NOTE_KEY: note_key(note), NOTE_LEARNED: share}

    def publish(self, selection: Selection, built: Built, train: TrainConfig, metrics: dict) -> AdapterVersion:
        """Publish the adapter as the next version, its manifest recording what it was trained on and how."""
        data = selection.data
        manifest = {
            "base_model": self.loaded.model_id,
            "objective": objective(train, rewarded="reward" in metrics),
            "trained_on_global": built.global_version,
            "feedback_ids": data.train.feedback_ids,
            "held_out_feedback_ids": data.held_out.feedback_ids,
            "new_events": data.new_events,
            "update": selection.update,
            "refit": built.refit,
            "trained_until": data.trained_until,
            "hyperparameters": {"train": asdict(train), "lora": asdict(self.config.lora),
                                "max_drift": self.config.max_drift},
            "metrics": metrics,
        }
        return self.registry.publish(selection.adapter, selection.profile_id, built.model, manifest,
                                     data.trained_until or "")

    def _anchor(self):
        if self._anchor_batch is None:
            self._anchor_batch = anchor_batch(self.loaded)
        return self._anchor_batch

    def _anchor_base_perplexity(self) -> float:
        """The bare base model's anchor perplexity: the drift guard's yardstick (computed once)."""
        if self._anchor_base is None:
            self._anchor_base = perplexity(self.loaded.model, self._anchor())
        return self._anchor_base


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
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _stop)
    try:
        if args.once:
            while worker.run_once():
                pass
        else:
            if args.parent_pid and not config.worker_threads:
                worker.plan = ThreadPlan(args.parent_pid, torch.get_num_threads())
            worker.run_forever(parent_pid=args.parent_pid)
    except Stopped:
        log.info("Stopped.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
