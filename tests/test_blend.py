"""Serving blends: exact LoRA math (checked against PEFT), α, LRU cache, per-thread blends."""

from __future__ import annotations

import threading

import pytest
import torch
from peft import PeftModel

from adapters.blend import AdapterServer, Blend, auto_alpha, sign_test_p
from adapters.lora import add_lora
from adapters.registry import GLOBAL, AdapterRegistry, personal_adapter
from assistant.config import BlendConfig, GenerationSettings, LoraSettings, ModelConfig
from assistant.generation import generate_texts
from assistant.model import load_model
from assistant.prompts import build_prompt
from assistant.service import ChatService


def _fresh(tiny_model_dir):
    return load_model(ModelConfig(model=str(tiny_model_dir)), tiny_model_dir.parent)


def _publish(registry, tiny_model_dir, adapter, profile_id, seed, rank=4, metrics=None):
    model = add_lora(_fresh(tiny_model_dir).model, LoraSettings(rank=rank, alpha=2 * rank))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return registry.publish(adapter, profile_id, model, {"metrics": metrics or {}}, "t")


@pytest.fixture
def setup(store, data_home, tiny_model_dir):
    registry = AdapterRegistry(data_home / "adapters", store)
    ann, bob = store.create_profile("Ann")["id"], store.create_profile("Bob")["id"]
    _publish(registry, tiny_model_dir, GLOBAL, None, 1)
    _publish(registry, tiny_model_dir, personal_adapter(ann), ann, 2, rank=2)
    _publish(registry, tiny_model_dir, personal_adapter(bob), bob, 3)
    return registry, ann, bob


def _ids():
    return torch.tensor([[5, 17, 42, 8, 99, 3]])


def _logits(model):
    with torch.no_grad():
        return model(_ids()).logits


def test_auto_alpha():
    assert auto_alpha(0, 16) == 0.0
    assert auto_alpha(16, 16) == 0.5
    assert auto_alpha(48, 16) == 0.75
    with pytest.raises(ValueError):
        BlendConfig(k=0)


def test_wrapping_without_adapters_changes_nothing(tiny_model_dir, store, data_home):
    plain = _fresh(tiny_model_dir)
    served = _fresh(tiny_model_dir)
    server = AdapterServer(served, AdapterRegistry(data_home / "adapters", store), store, BlendConfig())
    assert server.paths == set()  # nothing is wrapped until an adapter covers it
    assert torch.equal(_logits(plain.model), _logits(served.model))
    with server.activate(Blend(None, None, 0.0, "none")):
        assert torch.equal(_logits(plain.model), _logits(served.model))


def test_blend_equals_peft_cat_combination(setup, tiny_model_dir, store):
    registry, ann, _ = setup
    served = _fresh(tiny_model_dir)
    server = AdapterServer(served, registry, store, BlendConfig())
    alpha = 0.3
    with server.activate(Blend(1, 1, alpha, "test", ann)):
        ours = _logits(served.model)
    # Only the adapters' modules were wrapped: per GPT-2 layer attn.c_attn, attn.c_proj, mlp.c_proj, not mlp.c_fc
    # (the top two thirds of 2 layers round up to both), and with no blend the wrapped model is the base model again.
    assert server.paths == {f"transformer.h.{layer}.{module}" for layer in (0, 1)
                            for module in ("attn.c_attn", "attn.c_proj", "mlp.c_proj")}
    assert torch.equal(_logits(served.model), _logits(_fresh(tiny_model_dir).model))
    reference = PeftModel.from_pretrained(_fresh(tiny_model_dir).model, registry.current(GLOBAL).folder,
                                          adapter_name="global")
    reference.load_adapter(registry.current(personal_adapter(ann)).folder, adapter_name="personal")
    reference.add_weighted_adapter(["global", "personal"], [1.0, alpha], "mix", combination_type="cat")
    reference.set_adapter("mix")
    assert torch.allclose(ours, _logits(reference), atol=1e-5)
    assert not torch.allclose(ours, _logits(_fresh(tiny_model_dir).model), atol=1e-3)  # the blend does something


def test_alpha_follows_feedback_count_override_and_gate(setup, tiny_model_dir, store):
    registry, ann, bob = setup
    server = AdapterServer(_fresh(tiny_model_dir), registry, store, BlendConfig(k=4))
    assert server.blend_for(ann).alpha == 0.0  # no feedback yet: n = 0
    conv = store.create_conversation(ann, "t")["id"]
    for i in range(4):
        q = store.add_message(ann, conv, "user", f"q{i}")
        r = store.add_message(ann, conv, "assistant", f"a{i}", parent_id=q.id)
        store.record_thumbs(ann, r.id, 1)
    blend = server.blend_for(ann)
    assert blend.alpha == pytest.approx(0.5) and blend.personal_version == 1 and blend.global_version == 1
    assert blend.record() == {"global": "v0001", "personal": "v0001", "alpha": 0.5,
                              "alpha_reason": "n/(n+k) with n=4, k=4"}
    store.set_alpha_override(ann, 1.0)
    assert server.blend_for(ann).alpha == 1.0 and server.blend_for(ann).reason == "set by you"
    store.set_alpha_override(ann, None)
    # A personal version that scored below global-only on held-out votes is not served.
    _publish(registry, tiny_model_dir, personal_adapter(ann), ann, 4,
             metrics={"eval/accuracy_personal": 0.4, "eval/accuracy_global": 0.7, "eval/pairs": 5})
    gated = server.blend_for(ann)
    assert gated.alpha == 0.0 and gated.personal_version is None and "below the global" in gated.reason
    # Worse on 2 of the 3 votes where the two disagree is not evidence (sign test p = 0.5): served.
    _publish(registry, tiny_model_dir, personal_adapter(ann), ann, 4,
             metrics={"eval/accuracy_personal": 0.5, "eval/accuracy_global": 0.67, "eval/pairs": 6,
                      "eval/only_personal_right": 1, "eval/only_global_right": 2})
    assert server.blend_for(ann).personal_version == 3 and server.blend_for(ann).alpha == pytest.approx(0.5)
    # Worse on all 4 disagreements (p = 0.06): held back.
    _publish(registry, tiny_model_dir, personal_adapter(ann), ann, 4,
             metrics={"eval/accuracy_personal": 0.2, "eval/accuracy_global": 1.0, "eval/pairs": 5,
                      "eval/only_personal_right": 0, "eval/only_global_right": 4})
    assert server.blend_for(ann).personal_version is None
    assert server.blend_for(bob).personal_version is None  # Bob: n = 0


def test_lru_eviction_and_reload_give_identical_outputs(setup, tiny_model_dir, store):
    registry, ann, bob = setup
    for user in (ann, bob):
        store.set_alpha_override(user, 0.8)
    loaded = _fresh(tiny_model_dir)
    server = AdapterServer(loaded, registry, store, BlendConfig(cache_size=1))
    settings = GenerationSettings(temperature=0, max_new_tokens=20)
    prompt = build_prompt(loaded, "", [{"role": "user", "content": "Tell me a joke."}], 20)

    def reply(user):
        blend = server.blend_for(user)
        return generate_texts(loaded, prompt, settings) if blend is None else _generate(loaded, server, blend, prompt,
                                                                                         settings)

    first = reply(ann)
    loads = server.loads_from_disk
    other = reply(bob)
    again = reply(ann)
    assert server.loads_from_disk > loads + 1  # Ann's tensors were evicted by Bob's and read again
    assert again == first and other != first


def _generate(loaded, server, blend, prompt, settings):
    from assistant.generation import ReplyStream

    stream = ReplyStream(loaded, prompt, settings, activate=lambda: server.activate(blend))
    list(stream)
    return stream.texts


def test_two_profiles_generating_at_once_get_their_own_blend(setup, tiny_model_dir, store, app_config):
    registry, ann, bob = setup
    for user in (ann, bob):
        store.set_alpha_override(user, 1.0)
    loaded = _fresh(tiny_model_dir)
    service = ChatService(store, loaded, app_config, adapters=AdapterServer(loaded, registry, store, BlendConfig()))
    settings = GenerationSettings(temperature=0, max_new_tokens=40)
    alone = {u: list(service.send(u, None, "Tell me a joke.", settings))[-1].texts[0] for u in (ann, bob)}
    assert alone[ann] != alone[bob]
    results, barrier = {}, threading.Barrier(2)

    def run(user):
        barrier.wait()
        results[user] = list(service.send(user, None, "Tell me a joke.", settings))[-1]

    threads = [threading.Thread(target=run, args=(u,)) for u in (ann, bob)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert {u: r.texts[0] for u, r in results.items()} == alone
    assert results[ann].reply.adapter_versions == {"global": "v0001", "personal": "v0001", "alpha": 1.0,
                                                   "alpha_reason": "set by you"}


@pytest.mark.parametrize("worse, better, p", [(0, 0, 1.0), (3, 0, 0.125), (4, 0, 0.0625), (5, 1, 7 / 64),
                                              (1, 3, 15 / 16), (2, 2, 11 / 16)])
def test_sign_test_against_hand_computed_tails(worse, better, p):
    assert sign_test_p(worse, better) == pytest.approx(p)


def test_an_adapter_made_for_another_model_is_not_served(setup, store, tiny_model_dir):
    from transformers import GPT2Config, GPT2LMHeadModel

    registry, ann, _ = setup
    other = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=32, n_embd=48, n_layer=2, n_head=2))
    registry.publish(GLOBAL, None, add_lora(other, LoraSettings(rank=4, alpha=8)), {}, "t2")  # checksums are fine
    server = AdapterServer(_fresh(tiny_model_dir), registry, store, BlendConfig())
    assert server.usable(GLOBAL).version == 1  # the one before serves
    assert "does not fit this model (module transformer.h." in registry.history(GLOBAL)[1].unusable
