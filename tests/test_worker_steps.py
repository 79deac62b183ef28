"""Each step of a training job on its own (`Worker._run`: select data → build the model → train → drift guard →
evaluate → publish), on a real SQLite file and the tiny random GPT-2; the drift guard's step is in test_drift.py."""

from __future__ import annotations

import json
from dataclasses import asdict, replace

import pytest
import torch
from peft import get_peft_model_state_dict

from adapters.data import Examples, PairExample
from adapters.evaluation import HeldOutEval, cached_margins, preference_margins
from adapters.jobs import UpdateData, held_out
from adapters.lora import add_lora, merge_lora
from adapters.references import ReferenceCache
from adapters.registry import GLOBAL, personal_adapter
from adapters.training import objective
from adapters.worker import Selection
from assistant.config import GenerationSettings
from tests.test_worker import LEARNING, _choices, _fresh, _loop
from ui.learning_text import learning_markdown


@pytest.fixture
def parts(store, data_home, tiny_model_dir, app_config):
    registry, service, worker = _loop(store, data_home, tiny_model_dir, app_config, LEARNING)
    return service, worker, registry


def _job(profile_id: str | None) -> dict:
    """The fields of a queued job's row the data step reads."""
    return {"adapter": personal_adapter(profile_id) if profile_id else GLOBAL, "profile_id": profile_id}


def _voted(parts, n: int = 4) -> tuple[str, Selection]:
    """A profile with `n` A/B choices, and the data step's selection for its adapter."""
    service, worker, _ = parts
    ann = service.create_profile("Ann")["id"]
    _choices(service, ann, n)
    return ann, worker.select_data(_job(ann))


def _randomize(model, seed: int, std: float = 0.3) -> None:
    """Give every LoRA parameter random values: an adapter that changes the model's preferences."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * std)


def test_select_data_holds_out_votes_replays_old_ones_and_says_why_it_has_nothing(parts, store):
    service, worker, _ = parts
    ann = service.create_profile("Ann")["id"]
    assert worker.select_data(_job(ann)).skip == "nothing new to learn from"
    _choices(service, ann, 10)
    selection = worker.select_data(_job(ann))
    ids = {e["id"] for e in store.feedback(ann)}
    held = {i for i in ids if held_out(i, LEARNING.holdout_every)}
    assert selection.skip is None and selection.personal and (selection.update, selection.current) == (1, None)
    assert set(selection.data.held_out.feedback_ids) == held
    assert set(selection.data.train.feedback_ids) == ids - held and selection.data.new_events == len(ids - held)
    assert worker.select_data(_job(ann)) == selection  # the same database selects the same examples
    assert worker.run_once()
    after = worker.select_data(_job(ann))  # nothing new since v0001: only a replay of what it learnt from
    assert (after.update, after.current.label, after.data.new_events) == (2, "v0001", 0)
    assert set(after.data.train.feedback_ids) <= ids - held


def test_build_model_puts_a_personal_adapter_on_the_merged_global_one_and_warm_starts_it(parts, store,
                                                                                         tiny_model_dir):
    service, worker, registry = parts
    ann = service.create_profile("Ann")["id"]
    _choices(service, ann, 6)
    while worker.run_once():  # personal v0001, then global v0001
        pass
    global_v, personal_v = registry.current(GLOBAL), registry.current(personal_adapter(ann))
    built = worker.build_model(worker.select_data(_job(ann)))
    assert built.global_version == "v0001" and not built.refit
    assert built.reference_key == f"global v0001 {global_v.manifest['checksum_sha256']}"
    ids = torch.tensor([[5, 17, 42, 8, 99, 3]])
    below = _fresh(tiny_model_dir).model
    merge_lora(below, *registry.load_weights(global_v))
    with torch.no_grad(), built.model.disable_adapter():  # the reference: base + global merged
        assert torch.equal(built.model(ids).logits, below(ids).logits)
        assert not torch.allclose(built.model(ids).logits, _fresh(tiny_model_dir).model(ids).logits)
    saved, state = registry.load_weights(personal_v)[1], get_peft_model_state_dict(built.model)
    assert saved.keys() == state.keys() and all(torch.equal(saved[k], state[k]) for k in saved)  # warm start
    assert built.start.keys() == {n for n, p in built.model.named_parameters() if p.requires_grad}
    global_built = worker.build_model(worker.select_data(_job(None)))
    assert (global_built.global_version, global_built.reference_key) == (None, "base")
    with torch.no_grad():  # the worker's base was copied, never merged into
        assert torch.equal(worker.loaded.model(ids).logits, _fresh(tiny_model_dir).model(ids).logits)


def test_train_reports_progress_on_the_job_and_the_settings_it_trained_with(parts, store):
    worker = parts[1]
    ann, selection = _voted(parts)
    job = store.latest_job(personal_adapter(ann))
    trained = worker.train(job["id"], selection, worker.build_model(selection))
    row = store.get_job(job["id"])
    steps = LEARNING.train.steps
    assert row["progress"] == 1.0 and row["message"] == f"step {steps} of {steps}"
    assert trained.config == worker.train_config(selection, refit=False) and "rewards/accuracies" in trained.metrics


def test_held_out_eval_names_the_fields_a_manifest_records():
    personal = HeldOutEval.of_personal(torch.tensor([1.0, -1.0, 2.0, -3.0]), below=torch.tensor([-1.0, -1.0, 3.0, 2.0]),
                                       base=torch.tensor([1.0, 1.0, 1.0, -1.0]))
    assert personal == HeldOutEval(pairs=4, accuracy_personal=0.5, accuracy_global=0.5, only_personal_right=1,
                                   only_global_right=1, accuracy_base=0.75)
    assert personal.to_metrics() == {"eval/pairs": 4, "eval/accuracy_personal": 0.5, "eval/accuracy_global": 0.5,
                                     "eval/only_personal_right": 1, "eval/only_global_right": 1,
                                     "eval/accuracy_base": 0.75}
    assert HeldOutEval.from_metrics({"loss": 0.3, **personal.to_metrics(), "drift/update_scale": 1.0}) == personal
    global_ = HeldOutEval.of_global(torch.tensor([1.0, -1.0]), base=torch.tensor([-1.0, -1.0]))
    assert global_.to_metrics() == {"eval/pairs": 2, "eval/accuracy_global": 0.5, "eval/accuracy_base": 0.0}
    assert HeldOutEval.from_metrics({}) == HeldOutEval() and HeldOutEval().to_metrics() == {"eval/pairs": 0}


def test_evaluate_measures_the_adapter_the_model_below_and_the_base_on_held_out_votes(parts, store, tiny_model_dir):
    service, worker, registry = parts
    ann = service.create_profile("Ann")["id"]
    base = _fresh(tiny_model_dir)
    global_model = add_lora(_fresh(tiny_model_dir).model, LEARNING.lora)
    _randomize(global_model, 1)
    global_v = registry.publish(GLOBAL, None, global_model, {"metrics": {}}, "t")
    prompt = lambda i: [{"role": "user", "content": f"Tell me about topic {i}."}]  # noqa: E731
    pairs = [PairExample(prompt(i), f"A fox story {i}.", f"A dog story {i}.", f"f{i}", ann) for i in range(12)]
    data = UpdateData(Examples([], []), Examples(pairs, []), None, 0)
    selection = Selection(personal_adapter(ann), ann, 1, None, data)
    built = worker.build_model(selection)
    _randomize(built.model, 2)

    def right(model) -> torch.Tensor:
        return preference_margins(model, base, pairs, LEARNING.train) > 0

    below_model = _fresh(tiny_model_dir).model
    merge_lora(below_model, *registry.load_weights(global_v))
    mine, below = right(built.model), right(below_model)
    bare = right(base.model)
    assert len({tuple(mine.tolist()), tuple(below.tolist()), tuple(bare.tolist())}) == 3  # three different models
    ev = worker.evaluate(selection, built)
    assert ev == HeldOutEval(pairs=12, accuracy_personal=pytest.approx(mine.float().mean().item()),
                             accuracy_global=pytest.approx(below.float().mean().item()),
                             only_personal_right=int((mine & ~below).sum()),
                             only_global_right=int((below & ~mine).sum()),
                             accuracy_base=pytest.approx(bare.float().mean().item()))
    as_global = worker.evaluate(replace(selection, adapter=GLOBAL, profile_id=None), built)
    assert as_global.accuracy_personal is None and as_global.only_personal_right is None
    assert worker.evaluate(replace(selection, data=replace(data, held_out=Examples([], []))), built) == HeldOutEval()


def test_publish_writes_what_the_version_learnt_from_and_its_metrics_into_the_manifest(parts, store):
    _, worker, registry = parts
    ann, selection = _voted(parts)
    built = worker.build_model(selection)
    train = worker.train_config(selection, built.refit)
    held = HeldOutEval(pairs=3, accuracy_personal=1.0, accuracy_global=0.0, only_personal_right=3,
                       only_global_right=0, accuracy_base=0.0)
    metrics = {"loss": 0.25, "drift/update_scale": 1.0, **held.to_metrics()}
    version = worker.publish(selection, built, train, metrics)
    assert registry.current(personal_adapter(ann)).label == version.label == "v0001"
    manifest = json.loads((version.folder / "manifest.json").read_text())
    data = selection.data
    assert {k: manifest[k] for k in ("base_model", "objective", "trained_on_global", "feedback_ids",
                                     "held_out_feedback_ids", "new_events", "update", "refit", "trained_until")} == {
        "base_model": worker.loaded.model_id, "objective": objective(train), "trained_on_global": None,
        "feedback_ids": data.train.feedback_ids, "held_out_feedback_ids": data.held_out.feedback_ids,
        "new_events": data.new_events, "update": 1, "refit": False, "trained_until": data.trained_until}
    assert manifest["hyperparameters"] == json.loads(json.dumps(
        {"train": asdict(train), "lora": asdict(LEARNING.lora), "max_drift": LEARNING.max_drift}))
    assert manifest["metrics"] == metrics and HeldOutEval.from_metrics(manifest["metrics"]) == held
    assert store.trained_until(personal_adapter(ann)) == data.trained_until


def test_held_out_margins_of_the_model_below_follow_a_changed_vote(parts):
    _, worker, _ = parts
    prompt = [{"role": "user", "content": "Name a fruit."}]
    voted = PairExample(prompt, "An apple.", "A chair, maybe.", "f1", "ann")
    changed = PairExample(prompt, "A chair, maybe.", "An apple.", "f1", "ann")  # the same vote, turned around
    cache = ReferenceCache()

    def margins(pair):
        return cached_margins(worker.loaded.model, worker.loaded, [pair], None, worker.config.train, cache)

    first, again = margins(voted), margins(changed)
    assert first.item() != 0 and again.item() == pytest.approx(-first.item(), abs=1e-4)
    assert len(cache) == 2
    assert margins(voted).item() == first.item() and len(cache) == 2  # kept, not recomputed


def test_train_now_with_nothing_new_publishes_nothing(parts, store):
    service, worker, registry = parts
    ann = service.create_profile("Ann")["id"]
    _choices(service, ann, 4)
    assert worker.run_once()
    first = registry.current(personal_adapter(ann))
    service.train_now(ann)  # no vote since: the replay alone would make a version that learned nothing new
    assert worker.run_once()
    assert registry.current(personal_adapter(ann)).version == first.version
    assert store.latest_job(personal_adapter(ann))["message"] == "nothing new to learn from"


def test_a_corrupted_version_falls_back_to_the_one_before_and_replies_go_on(parts, store, data_home):
    service, worker, registry = parts
    ann = service.create_profile("Ann")["id"]
    mine = personal_adapter(ann)
    for start in (0, 4):  # versions 1 and 2
        _choices(service, ann, 4, start=start)
        while worker.run_once():
            pass
    assert [v.version for v in registry.history(mine)] == [1, 2], store.latest_job(mine)
    service.set_alpha(ann, 1.0)
    first, second = registry.history(mine)
    weights = second.folder / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # one flipped bit pattern in the served file
    weights.write_bytes(bytes(data))
    final = list(service.send(ann, None, "Hello?", GenerationSettings(temperature=0, max_new_tokens=4)))[-1]
    assert final.reply.adapter_versions["personal"] == "v0001"  # served, with the version before
    bad = registry.history(mine)[1]
    assert bad.unusable == f"Adapter {mine} v0002 failed its checksum (adapter_model.safetensors)."
    assert str(data_home) not in bad.unusable
    assert "version 2 could not be used:** Adapter" in learning_markdown(service.learning_status(ann))

    config = first.folder / "adapter_config.json"  # a config edited to serve garbage (lora_alpha 1e6)
    config.write_text(config.read_text().replace('"lora_alpha": ', '"lora_alpha": 1000000, "was": '))
    service.adapters.forget(mine)
    final = list(service.send(ann, None, "Hello again?", GenerationSettings(temperature=0, max_new_tokens=4)))[-1]
    assert final.reply.adapter_versions["personal"] is None  # no usable version left: everyone's taste (none here)
    assert "failed its checksum (adapter_config.json)" in registry.history(mine)[0].unusable
