"""The drift guard: a trained adapter that makes the anchor replies too unlikely is backtracked before publishing."""

from __future__ import annotations

import copy
import math
from dataclasses import replace

import pytest
import torch

from adapters.data import collate, encode
from adapters.drift import ANCHOR, anchor_batch, limit_drift, perplexity, trainable_state
from adapters.logprobs import sequence_logps
from adapters.lora import add_lora
from adapters.registry import personal_adapter
from adapters.worker import Worker
from assistant.config import LearningConfig, LoraSettings, TrainConfig
from storage.db import DB_FILENAME
from storage.store import Store, seeded_ids
from tests.test_worker import LEARNING, _choices, _loop
from ui.learning_text import learning_markdown

STEPS = 4


def _lora(tiny_loaded):
    torch.manual_seed(0)
    return add_lora(copy.deepcopy(tiny_loaded.model), LoraSettings(rank=4, alpha=8))


def _push(model, batch, size: float, steps: int = 3) -> None:
    """Move the LoRA parameters against the anchor: `steps` normalised gradient-ascent steps of `size` on its loss
    (an adapter that drifts for sure; random noise barely moves a random model's perplexity)."""
    params = [p for p in model.parameters() if p.requires_grad]
    for _ in range(steps):
        loss = -sequence_logps(model, batch).sum()
        grads = torch.autograd.grad(loss, params)
        norm = torch.sqrt(sum((g ** 2).sum() for g in grads))
        with torch.no_grad():
            for p, g in zip(params, grads):
                p += size * g / norm


def _ratio(model, batch, base):
    return perplexity(model, batch) / base


def test_anchor_perplexity_is_the_mean_token_loss_of_the_plain_replies(tiny_loaded):
    batch = anchor_batch(tiny_loaded)
    assert batch.input_ids.shape[0] == len(ANCHOR) >= 8
    # Recomputed reply by reply, without padding: the same per-token perplexity.
    total, tokens = 0.0, 0
    for question, reply in ANCHOR:
        one = collate([encode(tiny_loaded, [{"role": "user", "content": question}], reply, 128)],
                      tiny_loaded.tokenizer.pad_token_id)
        total += sequence_logps(tiny_loaded.model, one).item()
        tokens += one.completion_mask.sum().item()
    assert perplexity(tiny_loaded.model, batch) == pytest.approx(math.exp(-total / tokens), rel=1e-4)


def test_an_update_inside_the_limit_is_published_as_trained(tiny_loaded):
    model, batch = _lora(tiny_loaded), anchor_batch(tiny_loaded)
    base = perplexity(tiny_loaded.model, batch)
    start = trainable_state(model)
    _push(model, batch, 0.01)
    trained = trainable_state(model)
    ratio = _ratio(model, batch, base)
    metrics = limit_drift(model, start, batch, base, max_ratio=ratio + 0.01, steps=STEPS)
    assert metrics == {"drift/perplexity_ratio_trained": ratio, "drift/perplexity_ratio": ratio,
                       "drift/update_scale": 1.0}
    assert all(torch.equal(p, trained[n]) for n, p in model.named_parameters() if n in trained)


def test_an_update_past_the_limit_is_backtracked_to_the_largest_step_inside(tiny_loaded):
    model, batch = _lora(tiny_loaded), anchor_batch(tiny_loaded)
    base = perplexity(tiny_loaded.model, batch)
    _push(model, batch, 0.3)  # where the update starts: a previous version, already drifted a little
    start = trainable_state(model)
    start_ratio = _ratio(model, batch, base)
    _push(model, batch, 0.6)  # the update
    trained = trainable_state(model)
    trained_ratio = _ratio(model, batch, base)
    limit = (start_ratio + trained_ratio) / 2
    assert start_ratio < limit < trained_ratio

    metrics = limit_drift(model, start, batch, base, max_ratio=limit, steps=STEPS)
    s = metrics["drift/update_scale"]
    assert 0 < s < 1 and "drift/adapter_scale" not in metrics
    assert metrics["drift/perplexity_ratio_trained"] == pytest.approx(trained_ratio)
    # The model holds exactly start + s·(trained − start), and is inside the limit …
    for name, p in model.named_parameters():
        if name in start:
            assert torch.allclose(p, start[name] + s * (trained[name] - start[name]), atol=1e-6)
    assert _ratio(model, batch, base) == pytest.approx(metrics["drift/perplexity_ratio"])
    assert metrics["drift/perplexity_ratio"] <= limit
    # … and one bisection step further along the update is outside: s is the largest step to within 2^-steps.
    for name, p in model.named_parameters():
        if name in start:
            p.data.copy_(start[name] + (s + 2 ** -STEPS) * (trained[name] - start[name]))
    assert _ratio(model, batch, base) > limit


def test_a_start_already_outside_shrinks_the_whole_adapter(tiny_loaded):
    model, batch = _lora(tiny_loaded), anchor_batch(tiny_loaded)
    base = perplexity(tiny_loaded.model, batch)
    _push(model, batch, 0.6)
    start = trainable_state(model)
    start_ratio = _ratio(model, batch, base)
    _push(model, batch, 0.1)
    limit = 1 + (min(start_ratio, _ratio(model, batch, base)) - 1) / 3
    assert limit > 1

    metrics = limit_drift(model, start, batch, base, max_ratio=limit, steps=STEPS)
    t = metrics["drift/adapter_scale"]
    assert metrics["drift/update_scale"] == 0.0 and 0 < t < 1
    for name, p in model.named_parameters():
        if name in start:  # A as it was, B scaled: ΔW = B·A scaled by t
            assert torch.allclose(p, start[name] * (t if "lora_B" in name else 1.0), atol=1e-6)
    assert _ratio(model, batch, base) == pytest.approx(metrics["drift/perplexity_ratio"])
    assert metrics["drift/perplexity_ratio"] <= limit


def test_the_workers_drift_guard_step_backtracks_an_update_past_the_limit(store, data_home, tiny_model_dir,
                                                                         app_config):
    registry, service, worker = _loop(store, data_home, tiny_model_dir, app_config, LEARNING)
    ann = service.create_profile("Ann")["id"]
    _choices(service, ann, 4)
    built = worker.build_model(worker.select_data({"adapter": personal_adapter(ann), "profile_id": ann}))
    batch = anchor_batch(worker.loaded)
    _push(built.model, batch, 0.3)  # the update: away from the plain replies
    trained = {n: p.detach().clone() for n, p in built.model.named_parameters() if n in built.start}
    ratio = perplexity(built.model, batch) / perplexity(worker.loaded.model, batch)
    assert ratio > 1
    assert worker.guard_drift(replace(built, start=None)) == {}  # no guard: nothing measured, nothing changed
    limit = (ratio - 1) / 2  # half the drift, whatever this CPU made of the update
    guard = Worker(worker.loaded, store, registry, replace(LEARNING, max_drift=limit))
    metrics = guard.guard_drift(built)
    s = metrics["drift/update_scale"]
    assert 0 <= s < 1 and "drift/adapter_scale" not in metrics  # the start (a fresh adapter) is inside
    assert metrics["drift/perplexity_ratio_trained"] == pytest.approx(ratio)
    assert metrics["drift/perplexity_ratio"] <= 1 + limit
    for name, p in built.model.named_parameters():  # the model holds start + s·(trained − start) …
        if name in built.start:
            assert torch.allclose(p, built.start[name] + s * (trained[name] - built.start[name]), atol=1e-6)
    # … and that is the ratio the manifest records
    published = perplexity(built.model, batch) / perplexity(worker.loaded.model, batch)
    assert published == pytest.approx(metrics["drift/perplexity_ratio"])


def _against_plain_replies(service, profile_id, n, start=0):
    """n A/B choices, each preferring a babbled reply to a plain one: an update that learns them drifts."""
    conv = service.new_conversation(profile_id)["id"]
    for i in range(start, start + n):
        question, plain = ANCHOR[i % len(ANCHOR)]
        q = service.store.add_message(profile_id, conv, "user", question)
        pair = service.store.create_comparison(profile_id, conv, q.id, "Fox fox fox fox fox.", plain, model_id="m", settings={})
        service.choose(profile_id, pair.id, "a")


def _published_chain(home, tiny_model_dir, app_config, tiny_loaded, learning):
    """Three updates of one profile's adapter on votes against plain replies, in a data home of its own whose ids
    follow a fixed sequence: two chains on the same settings train on the same examples. The anchor perplexity
    ratio of each published version (personal at full weight, as the guard holds it), and its manifest."""
    store = Store(home / DB_FILENAME, new_id=seeded_ids("drift"))
    registry, service, worker = _loop(store, home, tiny_model_dir, replace(app_config, data_dir=home), learning)
    ann = service.create_profile("Ann")["id"]
    chain = []
    base = perplexity(tiny_loaded.model, anchor_batch(tiny_loaded))
    for round_ in range(3):
        _against_plain_replies(service, ann, 4, start=4 * round_)
        torch.manual_seed(round_)
        assert worker.run_once()
        version = registry.current(personal_adapter(ann))
        with service.adapters.activate(replace(service.adapters.blend_for(ann), alpha=1.0)):
            ratio = perplexity(service.loaded.model, anchor_batch(tiny_loaded)) / base
        chain.append((ratio, version.manifest, learning_markdown(service.learning_status(ann))))
    return chain


@pytest.mark.parametrize("bf16", [False, True])
def test_the_worker_publishes_only_versions_inside_the_limit(tmp_path, tiny_model_dir, app_config, tiny_loaded, bf16):
    """The same chain of updates without and with the guard, its limit set at half the drift the unguarded chain
    reached, whatever this CPU's arithmetic made of it (bf16 autocast or fp32, chosen explicitly: each drifts by its
    own amount). The guarded chain is the unguarded one until an update goes past the limit; that update is
    backtracked, and every published version is inside the limit, measured on the published weights."""
    train = TrainConfig(steps=6, learning_rate=5e-2, decay=False, rpo_alpha=0.0, bf16=bf16)  # DPO alone: plain down
    learning = LearningConfig(personal_every=4, global_every=10**6, train=train, max_drift=None,
                              lora=LoraSettings(rank=4, alpha=8))
    unguarded = _published_chain(tmp_path / "unguarded", tiny_model_dir, app_config, tiny_loaded, learning)
    assert not any(k.startswith("drift/") for _, manifest, _ in unguarded for k in manifest["metrics"])
    drift = max(ratio for ratio, _, _ in unguarded) - 1
    assert drift > 0  # the updates push the plain replies down: the guard has something to hold
    max_drift = drift / 2
    guarded = _published_chain(tmp_path / "guarded", tiny_model_dir, app_config, tiny_loaded,
                               replace(learning, max_drift=max_drift))
    first_held = next(i for i, (_, manifest, _) in enumerate(guarded)
                      if manifest["metrics"]["drift/update_scale"] < 1)  # there is one: see the docstring
    for i, ((ratio, manifest, note), (free_ratio, _, _)) in enumerate(zip(guarded, unguarded)):
        metrics = manifest["metrics"]
        assert manifest["hyperparameters"]["max_drift"] == max_drift
        assert ratio == pytest.approx(metrics["drift/perplexity_ratio"], rel=1e-4)
        assert ratio <= 1 + max_drift + 1e-6
        assert ("drift guard" in note) == (metrics["drift/update_scale"] < 1)  # the panel says what it did
        if metrics["drift/update_scale"] < 1:
            assert f"now ×{metrics['drift/perplexity_ratio']:.2f}" in note
        if i <= first_held:  # up to there the two chains trained alike: the guard held back what went past
            assert metrics["drift/perplexity_ratio_trained"] == pytest.approx(free_ratio, rel=1e-3)
    assert guarded[first_held][0] < unguarded[first_held][0]
