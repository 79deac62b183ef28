"""Triggers, the training worker, resumption after a killed worker, reset, and the global update's cap (each step of
a job on its own: test_worker_steps.py)."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time

import pytest
import torch
from transformers import AutoConfig

from adapters.blend import AdapterServer
from adapters.jobs import global_update, held_out, profile_cap
from adapters.registry import GLOBAL, AdapterRegistry, personal_adapter
from adapters.worker import ADAPTERS_DIR, Worker
from assistant.config import (DATA_HOME_ENV, AppConfig, BlendConfig, GenerationSettings, LearningConfig, LoraSettings,
                              ModelConfig, TrainConfig)
from assistant.model import load_model
from assistant.service import ChatService
from tests.conftest import HANG, REPO
from ui.learning_text import learning_markdown

LEARNING = LearningConfig(personal_every=4, global_every=6, min_profiles=1, global_min_age_hours=0,
                          train=TrainConfig(steps=3, learning_rate=1e-3))
GREEDY = GenerationSettings(temperature=0, max_new_tokens=8)


def _fresh(tiny_model_dir):
    return load_model(ModelConfig(model=str(tiny_model_dir)), tiny_model_dir.parent)


@pytest.fixture
def parts(store, data_home, tiny_model_dir, app_config):
    registry = AdapterRegistry(data_home / ADAPTERS_DIR, store)
    served = _fresh(tiny_model_dir)
    service = ChatService(store, served, app_config, adapters=AdapterServer(served, registry, store, BlendConfig()),
                          learning=LEARNING)
    worker = Worker(_fresh(tiny_model_dir), store, registry, LEARNING)
    return service, worker, registry


HOLD_NONE = 10**9
"""`holdout_every` that holds out (all but surely) no vote: which votes are held out follows their random ids, and
with 4 votes all of them are, one run in 625 at the default of 5, and the update then has nothing to train on."""


def _choices(service, profile_id, n, start=0):
    """n A/B choices preferring the reply about foxes."""
    conv = service.new_conversation(profile_id)["id"]
    for i in range(start, start + n):
        q = service.store.add_message(profile_id, conv, "user", f"Tell me about topic {i}.")
        pair = service.store.create_comparison(profile_id, conv, q.id, f"A fox story {i}.", f"A dog story {i}.",
                                         model_id="m", settings={})
        service.choose(profile_id, pair.id, "a")


def test_feedback_triggers_personal_then_global_jobs(parts, store):
    service, _, _ = parts
    ann = service.create_profile("Ann")["id"]
    _choices(service, ann, 3)
    assert store.latest_job(personal_adapter(ann)) is None
    _choices(service, ann, 1, start=3)
    job = store.latest_job(personal_adapter(ann))
    assert (job["status"], job["reason"]) == ("queued", "auto")
    _choices(service, ann, 1, start=4)  # another vote while queued: still one job
    assert store.counts()["feedback"] == 5 and store.latest_job(personal_adapter(ann))["id"] == job["id"]
    assert store.latest_job(GLOBAL) is None
    _choices(service, ann, 1, start=5)
    assert store.latest_job(GLOBAL)["status"] == "queued"


def test_worker_publishes_and_the_next_reply_uses_the_new_version(parts, store):
    service, worker, registry = parts
    ann = service.create_profile("Ann")["id"]
    _choices(service, ann, 10)
    assert worker.run_once() and worker.run_once()  # personal and global jobs
    job = store.latest_job(personal_adapter(ann))
    assert job["status"] == "done" and job["progress"] == 1.0 and "published v0001" in job["message"]
    version = registry.current(personal_adapter(ann))
    manifest = version.manifest
    assert manifest["base_model"] == worker.loaded.model_id and manifest["objective"] == "dpo+kto+distill"
    assert manifest["parent_version"] is None and manifest["trained_on_global"] is None  # global came second
    assert len(manifest["feedback_ids"]) + len(manifest["held_out_feedback_ids"]) == 10
    assert set(manifest["hyperparameters"]) == {"train", "lora", "max_drift"}
    assert manifest["hyperparameters"]["max_drift"] == LEARNING.max_drift
    assert {"loss", "rewards/accuracies", "rewards/margins", "eval/pairs", "drift/perplexity_ratio",
            "drift/update_scale"} <= set(manifest["metrics"])
    assert registry.current(GLOBAL).version == 1
    assert not worker.run_once()  # nothing left

    update = list(service.send(ann, None, "Hello", GREEDY))[-1]
    assert update.reply.adapter_versions["personal"] == "v0001"
    assert update.reply.adapter_versions["global"] == "v0001"
    k = BlendConfig().k
    assert update.reply.adapter_versions["alpha"] == pytest.approx(10 / (10 + k), abs=1e-4)

    _choices(service, ann, 4, start=10)  # four more: a second personal version, warm-started from the first
    assert worker.run_once()
    second = registry.current(personal_adapter(ann))
    assert second.version == 2 and second.manifest["parent_version"] == "v0001"
    assert (manifest["update"], second.manifest["update"]) == (1, 2)  # places in the warm-start chain
    assert second.manifest["hyperparameters"]["train"]["learning_rate"] == pytest.approx(LEARNING.train.learning_rate_at(2))
    newly_held_out = set(second.manifest["held_out_feedback_ids"]) - set(manifest["held_out_feedback_ids"])
    assert second.manifest["trained_on_global"] == "v0001"
    assert second.manifest["new_events"] == 4 - len(newly_held_out)  # held-out votes are never trained on
    status = service.learning_status(ann)
    assert status["personal"]["version"] == "v0002" and [h["version"] for h in status["history"]] == ["v0001", "v0002"]
    assert status["since_personal"]["total"] == 0 and status["feedback"]["comparison"] == 14


def test_a_job_of_a_killed_worker_is_resumed(parts, store, tiny_model_dir):
    service, _, registry = parts
    ann = service.create_profile("Ann")["id"]
    _choices(service, ann, 4)
    claimed = store.claim_job(stale_seconds=60)  # a worker took the job... and was killed: no heartbeat since
    assert claimed["status"] == "running" and claimed["attempts"] == 1
    patient = Worker(_fresh(tiny_model_dir), store, registry, LEARNING)
    assert not patient.run_once()  # the heartbeat is fresh: the job is not taken over yet
    impatient = Worker(_fresh(tiny_model_dir), store, registry,
                       LearningConfig(**{**LEARNING.__dict__, "stale_seconds": 0.0}))
    assert impatient.run_once()
    job = store.get_job(claimed["id"])
    assert job["status"] == "done" and job["attempts"] == 2
    assert registry.current(personal_adapter(ann)).version == 1


def test_reset_drops_the_personal_adapter_and_keeps_the_feedback(parts, store):
    service, worker, registry = parts
    ann = service.create_profile("Ann")["id"]
    _choices(service, ann, 4)
    worker.run_once()
    assert registry.current(personal_adapter(ann)) is not None
    service.reset_personal(ann)
    assert registry.current(personal_adapter(ann)) is None
    assert not (registry.root / personal_adapter(ann)).exists()
    assert store.counts()["feedback"] == 4
    update = list(service.send(ann, None, "Hello", GREEDY))[-1]
    assert update.reply.adapter_versions["personal"] is None


def test_a_job_cancelled_while_running_publishes_nothing(parts, store, monkeypatch):
    service, worker, registry = parts
    ann = service.create_profile("Ann")["id"]
    _choices(service, ann, 4)
    original = worker.evaluate

    def reset_midway(*args, **kwargs):
        service.reset_personal(ann)  # the person pressed Reset while the job trained
        return original(*args, **kwargs)

    monkeypatch.setattr(worker, "evaluate", reset_midway)
    worker.run_once()
    assert registry.current(personal_adapter(ann)) is None
    assert store.latest_job(personal_adapter(ann))["status"] == "cancelled"


def test_profile_cap_keeps_every_profile_at_or_below_its_share():
    config = LearningConfig(max_share=0.25, max_per_profile=32, min_per_profile=2)
    assert profile_cap({"a": 4, "b": 4, "c": 4, "d": 4, "e": 4, "f": 4, "g": 4, "h": 4}, config) == 8
    prolific = {"loud": 100, **{f"u{i}": 4 for i in range(7)}}
    cap = profile_cap(prolific, config)
    total = sum(min(n, cap) for n in prolific.values())
    assert cap == 9 and cap / total <= 0.25
    assert profile_cap({"alone": 50}, config) == 2  # a lone profile barely moves everyone's adapter
    assert profile_cap({"a": 1000, "b": 1000, "c": 1000, "d": 1000, "e": 1000}, config) == 32  # absolute cap


def test_global_update_applies_the_cap(parts, store):
    service, _, _ = parts
    loud, quiet = service.create_profile("Loud")["id"], service.create_profile("Quiet")["id"]
    _choices(service, loud, 12)
    _choices(service, quiet, 4)  # (`global_min_events`: a profile counts from its 4th event)
    data = global_update(store, None, LEARNING, seed=0)
    by_user = {}
    for ex in (*data.train.pairs, *data.train.unpaired):
        by_user.setdefault(ex.profile_id, set()).add(ex.feedback_id)
    assert len(by_user[loud]) <= max(LEARNING.min_per_profile, int(0.25 * (len(by_user[loud]) + len(by_user[quiet]))))
    held_loud = {ex.feedback_id for ex in (*data.held_out.pairs, *data.held_out.unpaired) if ex.profile_id == loud}
    assert len(by_user[loud]) < 12 - len(held_loud)  # the cap bit: fewer than Loud's events open to training


def test_worker_command_line_runs_queued_jobs(parts, store, data_home, tiny_model_dir):
    service, _, registry = parts
    ann = service.create_profile("Ann")["id"]
    _choices(service, ann, 4)
    store.enqueue_job(GLOBAL, None, "manual")  # "Train now" in a home of one: --min-profiles 1 lets it train
    command = [sys.executable, "-m", "adapters.worker", "--model", str(tiny_model_dir), "--once", "--threads", "1",
               "--set", "learning.min_profiles=1", "--set", "learning.global_min_age_hours=0"]
    env = {**__import__("os").environ, DATA_HOME_ENV: str(data_home), "HF_HUB_OFFLINE": "1"}
    refused = subprocess.run([*command, "--set", "learning.lora.top_layer=1.0"], cwd=REPO, env=env, capture_output=True,
                             text=True, timeout=HANG)
    assert refused.returncode == 2 and "Bad --set" in refused.stderr and "no setting 'top_layer'" in refused.stderr
    assert registry.current(personal_adapter(ann)) is None
    assert [store.latest_job(a)["status"] for a in (personal_adapter(ann), GLOBAL)] == ["queued", "queued"]
    result = subprocess.run([*command, "--set", "learning.lora.top_layers=0.5", "--set", "learning.train.learning_rate=2e-3"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=HANG)
    assert result.returncode == 0, result.stderr
    assert registry.current(personal_adapter(ann)) and registry.current(GLOBAL), result.stderr[-3000:]
    assert registry.current(personal_adapter(ann)).version == 1 and registry.current(GLOBAL).version == 1
    manifest = registry.current(personal_adapter(ann)).manifest
    assert manifest["hyperparameters"]["lora"]["top_layers"] == 0.5
    assert manifest["hyperparameters"]["train"]["learning_rate"] == 2e-3  # the first update: no decay yet
    weights = registry.load_weights(registry.current(personal_adapter(ann)))[1]
    layers = {int(re.search(r"\.h\.(\d+)\.", k).group(1)) for k in weights}  # GPT-2: transformer.h.<layer>
    n_layers = AutoConfig.from_pretrained(tiny_model_dir).num_hidden_layers
    assert n_layers == 2 and layers == {1}  # the top half: the default (two thirds) would adapt both


def test_an_orphaned_worker_stops_by_itself(tiny_model_dir, data_home):
    """The worker watches the app that started it: if that process is gone, it exits instead of lingering."""
    result = subprocess.run(
        [sys.executable, "-m", "adapters.worker", "--model", str(tiny_model_dir), "--parent-pid", "1"],
        cwd=REPO, env={**__import__("os").environ, DATA_HOME_ENV: str(data_home), "HF_HUB_OFFLINE": "1"},
        capture_output=True, text=True, timeout=HANG)
    assert result.returncode == 0 and "The app (pid 1) is gone; stopping." in result.stderr


def test_stopping_the_worker_mid_job_queues_the_job_again(parts, store, data_home, tiny_model_dir):
    """SIGTERM (what the app sends on its way out) abandons the job in hand at once, even an update of a million
    steps: the worker exits cleanly, nothing is published and the job is queued for the next start."""
    service, _, registry = parts
    ann = service.create_profile("Ann")["id"]
    _choices(service, ann, 4)
    job = store.latest_job(personal_adapter(ann))
    env = {**__import__("os").environ, DATA_HOME_ENV: str(data_home), "HF_HUB_OFFLINE": "1"}
    worker = subprocess.Popen([sys.executable, "-m", "adapters.worker", "--model", str(tiny_model_dir), "--threads",
                               "1", "--nice", "0", "--set", "learning.train.steps=1000000"],
                              cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + HANG  # a guard against a hang, not the verdict
        while not store.get_job(job["id"])["message"].startswith("step "):
            assert worker.poll() is None and time.monotonic() < deadline, "the worker never started training"
            time.sleep(0.1)
        worker.send_signal(signal.SIGTERM)
        err = worker.communicate(timeout=HANG)[1]
    finally:
        worker.kill()
    assert worker.returncode == 0 and "Traceback" not in err, err[-3000:]
    assert "Stopped during job" in err
    after = store.get_job(job["id"])
    assert (after["status"], after["progress"]) == ("queued", 0.0) and "next start" in after["message"]
    assert registry.current(personal_adapter(ann)) is None


def _loop(store, data_home, tiny_model_dir, app_config, learning: LearningConfig):
    """The app's service with adapters and an in-process worker, on one data home."""
    registry = AdapterRegistry(data_home / ADAPTERS_DIR, store)
    served = _fresh(tiny_model_dir)
    service = ChatService(store, served, app_config, adapters=AdapterServer(served, registry, store, BlendConfig()),
                          learning=learning)
    return registry, service, Worker(_fresh(tiny_model_dir), store, registry, learning)


def test_the_feed_forward_of_the_top_layers_can_be_adapted_too_and_is_served(store, data_home, tiny_model_dir,
                                                                             app_config):
    """`lora.mlp_top_layers`: attention on every layer, the MLP's first projection only on the top half. The
    published weights say so, and the next reply is generated through every one of those modules."""
    learning = LearningConfig(personal_every=4, global_every=10**6, min_profiles=1, global_min_age_hours=0,
                              train=TrainConfig(steps=2, learning_rate=1e-3),
                              lora=LoraSettings(top_layers=1.0, mlp_top_layers=0.5))
    registry, service, worker = _loop(store, data_home, tiny_model_dir, app_config, learning)
    ann = service.create_profile("Ann")["id"]
    _choices(service, ann, 4)
    assert worker.run_once()
    version = registry.current(personal_adapter(ann))
    assert version.manifest["hyperparameters"]["lora"]["mlp_top_layers"] == 0.5
    modules = {k.split(".lora_")[0].removeprefix("base_model.model.") for k in registry.load_weights(version)[1]}
    layer_of = lambda path: int(re.search(r"\.h\.(\d+)\.", path).group(1))  # noqa: E731
    assert {layer_of(m) for m in modules if m.endswith("attn.c_attn")} == {0, 1}
    assert {layer_of(m) for m in modules if m.endswith("mlp.c_fc")} == {1}  # the top half of two layers
    update = list(service.send(ann, None, "Hello", GREEDY))[-1]
    assert update.reply.adapter_versions["personal"] == "v0001"
    assert any(p.endswith("h.1.mlp.c_fc") for p in service.adapters.paths)
    assert not any(p.endswith("h.0.mlp.c_fc") for p in service.adapters.paths)


def test_mlp_layers_beyond_the_adapted_layers_are_refused():
    with pytest.raises(ValueError, match="mlp_top_layers"):
        LoraSettings(top_layers=1 / 3, mlp_top_layers=2 / 3)


def test_decay_shrinks_the_step_size_along_the_warm_start_chain_and_a_reset_restarts_it(store, data_home,
                                                                                       tiny_model_dir, app_config):
    learning = LearningConfig(personal_every=4, global_every=10**6,
                              train=TrainConfig(steps=2, learning_rate=1e-3, decay=True))
    registry, service, worker = _loop(store, data_home, tiny_model_dir, app_config, learning)
    ann = service.create_profile("Ann")["id"]
    rates = []
    for round_ in range(3):
        _choices(service, ann, 4, start=4 * round_)
        assert worker.run_once()
        rates.append(registry.current(personal_adapter(ann)).manifest["hyperparameters"]["train"]["learning_rate"])
    assert rates == pytest.approx([1e-3, 1e-3 / 2, 1e-3 / 3])
    service.reset_personal(ann)
    _choices(service, ann, 4, start=12)
    assert worker.run_once()
    after_reset = registry.current(personal_adapter(ann)).manifest
    assert after_reset["update"] == 1 and after_reset["hyperparameters"]["train"]["learning_rate"] == 1e-3


def test_refit_trains_each_personal_version_from_scratch_on_the_newest_events(store, data_home, tiny_model_dir,
                                                                               app_config):
    learning = LearningConfig(personal_every=4, global_every=10**6, personal_refit=6, holdout_every=HOLD_NONE,
                              train=TrainConfig(steps=2, learning_rate=1e-3, decay=True))
    registry, service, worker = _loop(store, data_home, tiny_model_dir, app_config, learning)
    ann = service.create_profile("Ann")["id"]
    for round_ in range(3):
        _choices(service, ann, 4, start=4 * round_)
        torch.manual_seed(0)  # the LoRA init: the same for every version
        assert worker.run_once()
    third = registry.current(personal_adapter(ann))
    events = sorted(store.feedback(ann), key=lambda e: e["updated_at"])
    trainable = [e["id"] for e in events if not held_out(e["id"], learning.holdout_every)]
    assert third.manifest["update"] == 3 and third.manifest["refit"] is True
    assert third.manifest["hyperparameters"]["train"]["learning_rate"] == 1e-3  # no decay: not a chain
    assert sorted(third.manifest["feedback_ids"]) == sorted(trainable[-6:])  # the newest 6, no replay
    assert third.manifest["new_events"] == 6
    # Nothing of the earlier versions is in it: trained again after a reset, on the same events, it is the same.
    weights = registry.load_weights(third)[1]
    service.reset_personal(ann)
    store.enqueue_job(personal_adapter(ann), ann, "manual")
    torch.manual_seed(0)
    assert worker.run_once()
    again = registry.current(personal_adapter(ann))
    assert again.manifest["update"] == 1 and sorted(again.manifest["feedback_ids"]) == sorted(trainable[-6:])
    weights_again = registry.load_weights(again)[1]
    assert weights.keys() == weights_again.keys()
    assert all(torch.allclose(weights[k], weights_again[k], atol=1e-6) for k in weights)
    with pytest.raises(ValueError, match="personal_refit"):
        LearningConfig(personal_refit=-1)


def test_global_updates_can_use_their_own_chosen_reply_weight(store, data_home, tiny_model_dir, app_config):
    learning = LearningConfig(personal_every=4, global_every=4, global_rpo_alpha=0.0, min_profiles=1,
                              global_min_age_hours=0, holdout_every=HOLD_NONE,
                              train=TrainConfig(steps=2, rpo_alpha=1.0))
    registry, service, worker = _loop(store, data_home, tiny_model_dir, app_config, learning)
    ann = service.create_profile("Ann")["id"]
    _choices(service, ann, 4)
    while worker.run_once():
        pass
    personal = registry.current(personal_adapter(ann)).manifest
    global_ = registry.current(GLOBAL).manifest
    assert personal["hyperparameters"]["train"]["rpo_alpha"] == 1.0 and "distill_loss" in personal["metrics"]
    assert global_["hyperparameters"]["train"]["rpo_alpha"] == 0.0 and "distill_loss" not in global_["metrics"]
    assert (personal["objective"], global_["objective"]) == ("dpo+kto+distill", "dpo+kto")
    with pytest.raises(ValueError, match="global_rpo_alpha"):
        LearningConfig(global_rpo_alpha=-1.0)


def test_the_global_adapter_waits_for_min_profiles(store, data_home, tiny_model_dir, app_config):
    learning = LearningConfig(personal_every=4, global_every=4, min_profiles=3, global_min_age_hours=0,
                              train=TrainConfig(steps=2))
    registry, service, worker = _loop(store, data_home, tiny_model_dir, app_config, learning)
    ann, bob, cy = (service.create_profile(name)["id"] for name in ("Ann", "Bob", "Cy"))
    _choices(service, ann, 8)
    assert store.latest_job(GLOBAL) is None  # 8 events, one profile: no global update is due
    store.enqueue_job(GLOBAL, None, "manual")  # "Train now" in a home of one
    while worker.run_once():
        pass
    assert registry.current(personal_adapter(ann)) is not None and registry.current(GLOBAL) is None
    assert "waits for feedback from 3 profiles" in store.latest_job(GLOBAL)["message"]
    assert service.learning_status(ann)["global_profiles"] == {"profiles": 1, "needed": 3}
    assert "it learns once 3 profiles have given feedback (1 so far)" in learning_markdown(service.learning_status(ann))
    _choices(service, bob, 4)
    assert store.latest_job(GLOBAL)["status"] == "done"  # two profiles: still nothing queued
    _choices(service, cy, 4)
    assert store.latest_job(GLOBAL)["status"] == "queued"
    while worker.run_once():
        pass
    assert registry.current(GLOBAL).manifest["new_events"] > 0
    assert "Everyone's version:** version 1" in learning_markdown(service.learning_status(ann))
    with pytest.raises(ValueError, match="min_profiles"):
        LearningConfig(min_profiles=0)


def test_the_app_passes_its_global_min_profiles_to_the_learning_config():
    import app

    assert app.parse_args([]).learning.min_profiles == 3
    assert app.parse_args(["--set", "learning.min_profiles=1"]).learning.min_profiles == 1


def test_the_worker_the_app_starts_trains_with_the_apps_learning_settings(tmp_path):
    """Settings given to the app (its short flags and `--set`) reach the worker's command line, and the worker's
    parser rebuilds exactly the app's config from it: the two processes never disagree."""
    import app
    from adapters import worker

    config = app.parse_args(["--data-dir", str(tmp_path), "--model", "gpt2", "--set", "learning.min_profiles=1",
                             "--set", "learning.lora.top_layers=1.0", "--set", "learning.train.learning_rate=2e-3",
                             "--set", "learning.lora.target_modules=q_proj,v_proj", "--set", "learning.blend.k=8",
                             "--set", "learning.max_drift=none", "--worker-threads", "1", "--port", "8000"])
    learning = config.learning
    assert learning.lora.top_layers == 1.0 and learning.train.learning_rate == 2e-3 and learning.blend.k == 8
    assert learning.max_drift is None and learning.min_profiles == 1  # off in the worker too
    assert (config.model.model, config.worker_threads, config.port) == ("gpt2", 1, 8000)
    command = app.worker_command(config)
    assert command[command.index("--data-dir") + 1] == str(tmp_path)
    assert worker.parse_args(command[command.index("-m") + 2:])[0] == config
    defaults = app.worker_command(app.parse_args([]))
    assert "--set" not in defaults  # defaults: nothing to pass
    assert worker.parse_args(defaults[defaults.index("-m") + 2:])[0] == AppConfig()

def test_a_bad_learning_setting_on_the_command_line_is_one_clear_error(capsys):
    import app

    with pytest.raises(SystemExit) as exit_:
        app.parse_args(["--set", "learning.min_profiles=0"])
    assert exit_.value.code == 2 and "min_profiles must be at least 1" in capsys.readouterr().err
    for bad, message in (("learning.lora.top_layer=1", "no setting 'top_layer'"),
                         ("learning.lora.top_layers=2", "top_layers"),
                         ("learning.train.learning_rate=fast", "could not convert"), ("learning", "KEY=VALUE"),
                         ("explore.rate=2", "between 0 and 1"), ("port=99999", "0-65535")):
        with pytest.raises(SystemExit) as exit_:
            app.parse_args(["--set", bad])
        assert exit_.value.code == 2 and message in capsys.readouterr().err
