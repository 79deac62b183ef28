"""Training data, collation and LoRA training on the tiny GPT-2 (log-probabilities: test_logprobs.py)."""

from __future__ import annotations

import math

import pytest
import torch

from adapters.data import (Examples, PairExample, UnpairedExample, collate, encode, encode_answers,
                           examples_from_feedback)
from adapters.evaluation import preference_accuracy
from adapters.logprobs import completion_log_probs, sequence_logps, teachers
from adapters.lora import add_lora
from adapters.losses import distill_kl
from adapters.training import objective, train_adapter
from assistant.config import LoraSettings, ModelConfig, TrainConfig
from assistant.explore import instructed
from assistant.model import load_model


@pytest.fixture
def fresh_tiny(tiny_model_dir):
    """A private copy of the tiny model (LoRA wraps modules in place)."""
    return load_model(ModelConfig(model=str(tiny_model_dir)), tiny_model_dir.parent)


def test_examples_from_feedback_handles_every_kind():
    prompt = [{"role": "user", "content": "Hi"}]
    base = dict(profile_id="u", prompt=prompt)
    events = [
        {**base, "id": "f1", "kind": "comparison", "choice": "a", "a": "A1", "b": "B1"},
        {**base, "id": "f2", "kind": "comparison", "choice": "b", "a": "A2", "b": "B2"},
        {**base, "id": "f3", "kind": "comparison", "choice": "tie", "a": "A3", "b": "B3"},
        {**base, "id": "f4", "kind": "comparison", "choice": "both_bad", "a": "A4", "b": "B4"},
        {**base, "id": "f5", "kind": "thumbs", "value": 1, "completion": "good", "superseded": ["old1", "old2"]},
        {**base, "id": "f6", "kind": "thumbs", "value": -1, "completion": "bad", "superseded": ["older"]},
    ]
    ex = examples_from_feedback(events)
    assert [(p.chosen, p.rejected, p.feedback_id) for p in ex.pairs] == [
        ("A1", "B1", "f1"), ("B2", "A2", "f2"), ("good", "old1", "f5"), ("good", "old2", "f5")]
    assert [(u.completion, u.label) for u in ex.unpaired] == [("A4", False), ("B4", False), ("good", True),
                                                              ("bad", False)]
    assert ex.feedback_ids == ["f1", "f2", "f4", "f5", "f6"]  # the tie teaches nothing
    assert [p.chosen_instruction for p in ex.pairs] == [None] * 4


def test_a_chosen_explorer_carries_its_instruction_even_when_stored_by_name_only():
    from assistant.config import DEFAULT_PROBES

    listing = next(p for p in DEFAULT_PROBES if p.name == "list")
    base = dict(profile_id="u", prompt=[{"role": "user", "content": "Hi"}], kind="comparison", a="A", b="B")
    events = [
        {**base, "id": "f1", "choice": "b", "probe": {"a": None, "b": "x"}, "instruction": {"a": None, "b": "Rhyme."}},
        {**base, "id": "f2", "choice": "a", "probe": {"a": "list", "b": None}, "instruction": {"a": None, "b": None}},
        {**base, "id": "f3", "choice": "a", "probe": {"a": None, "b": "list"}, "instruction": {"a": None, "b": None}},
        {**base, "id": "f4", "choice": "a", "probe": {"a": "gone", "b": None}, "instruction": {"a": None, "b": None}},
    ]
    assert [p.chosen_instruction for p in examples_from_feedback(events).pairs] == [
        "Rhyme.", listing.instruction, None, None]  # the rejected explorer's instruction is not the chosen one's


def test_retry_then_like_forms_a_pair_from_the_database(store):
    from storage.store import Store  # noqa: F401  (fixture type)

    user = store.create_profile("Ann")
    conv = store.create_conversation(user["id"], "t")
    q = store.add_message(user["id"], conv["id"], "user", "Hi")
    first = store.add_message(user["id"], conv["id"], "assistant", "meh", parent_id=q.id)
    second = store.add_message(user["id"], conv["id"], "assistant", "great", parent_id=q.id, replaces=first.id)
    store.record_thumbs(user["id"], second.id, 1)
    ex = examples_from_feedback(store.feedback(user["id"]))
    assert [(p.chosen, p.rejected) for p in ex.pairs] == [("great", "meh")]


def test_collate_against_hand_built_tensors():
    batch = collate([([5, 6, 7, 8], 2), ([9, 10, 11], 1)], pad_token_id=0)
    assert batch.input_ids.tolist() == [[5, 6, 7, 8], [9, 10, 11, 0]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    assert batch.completion_mask.tolist() == [[False, False, True, True], [False, True, True, False]]


def test_training_shares_prompts_only_where_they_are_shared(tiny_model_dir, monkeypatch):
    """A step of pairs runs the shared forward; the unpaired KTO term (a reply and a reply to another prompt) runs
    the plain one, as does a step with `share_prompts` off; and the result is the same either way."""
    import adapters.training as training

    calls = []
    real = training.shared_prompt_log_probs
    monkeypatch.setattr(training, "shared_prompt_log_probs", lambda *a: calls.append(len(a[1])) or real(*a))
    data = Examples(_synthetic_pairs(8, 0), [UnpairedExample([{"role": "user", "content": q}], "A fox!", True,
                                                             f"u{i}", "u") for i, q in enumerate(("Hi", "Hello?"))])
    losses = []
    for share in (True, False):
        loaded = load_model(ModelConfig(model=str(tiny_model_dir)), tiny_model_dir.parent)
        model = add_lora(loaded.model, LoraSettings())
        config = TrainConfig(steps=3, batch_size=4, learning_rate=1e-2, bf16=False, share_prompts=share)
        steps = []
        train_adapter(model, loaded, data, config, progress=lambda step, total, m: steps.append(m["loss"]))
        losses.append(steps)
    assert calls == [4, 4, 4]  # three steps of four pairs with sharing on; never for the unpaired term
    # The first step's loss is computed from the same weights: equal. Later ones follow Adam's first update, whose
    # g/|g| turns the last-digit differences of near-zero gradients into different steps: close, not equal.
    assert losses[0][0] == pytest.approx(losses[1][0], abs=1e-5)
    assert losses[0] == pytest.approx(losses[1], rel=0.02)


def test_training_keeps_the_base_models_dropout_off_and_loras_on(fresh_tiny):
    """As TRL's `disable_dropout`: GPT-2's own dropout (0.1) would make the policy's log-probs noisy against a
    reference computed without it; LoRA's dropout is a setting of ours and stays in force."""
    from adapters.training import _train_mode

    model = add_lora(fresh_tiny.model, LoraSettings(dropout=0.1))
    _train_mode(model)
    dropouts = {n: m.training for n, m in model.named_modules() if isinstance(m, torch.nn.Dropout)}
    assert any("lora_dropout" in n for n in dropouts) and any("lora_dropout" not in n for n in dropouts)
    assert all(on == ("lora_dropout" in n) for n, on in dropouts.items())


def _synthetic_pairs(n: int, offset: int) -> list[PairExample]:
    """A clear taste: replies about foxes beat replies about dogs, whatever the question."""
    topics = ["the weather", "breakfast", "a good book", "the weekend", "music", "travel", "work", "sleep"]
    return [PairExample([{"role": "user", "content": f"Tell me about {topics[i % 8]} number {i + offset}."}],
                        chosen=f"The quick brown fox jumps {i % 5} times.",
                        rejected=f"The lazy dog sleeps {i % 5} times.", feedback_id=f"f{i}", profile_id="u")
            for i in range(n)]


def test_training_learns_a_clear_preference_and_changes_only_lora(fresh_tiny):
    torch.manual_seed(0)
    base_before = {k: v.clone() for k, v in fresh_tiny.model.state_dict().items()}
    model = add_lora(fresh_tiny.model, LoraSettings(rank=8, alpha=16))
    train, held_out = _synthetic_pairs(16, 0), _synthetic_pairs(32, 1000)
    before = preference_accuracy(model, fresh_tiny, held_out)
    unpaired = [UnpairedExample(p.prompt, p.chosen, True, p.feedback_id, "u") for p in train[:4]]
    from adapters.data import Examples

    seen = []
    metrics = train_adapter(model, fresh_tiny, Examples(train, unpaired),
                            TrainConfig(steps=40, learning_rate=5e-3, beta=0.1),
                            progress=lambda step, total, m: seen.append(step))
    after = preference_accuracy(model, fresh_tiny, held_out)
    assert before == 0.0  # at the start the policy is its reference: no margin anywhere
    assert after > 0.9, (before, after, metrics)
    assert metrics["rewards/accuracies"] > 0.9 and metrics["rewards/margins"] > 0
    assert seen == list(range(1, 41))
    changed_lora = 0
    for name, value in model.named_parameters():
        base_name = name.replace("base_model.model.", "").replace(".base_layer", "")
        if "lora_" in name:
            changed_lora += int("lora_B" in name and value.abs().sum().item() > 0)
        else:
            assert not value.requires_grad
            assert torch.equal(value, base_before[base_name]), name
    assert changed_lora > 0


def test_rpo_term_keeps_the_chosen_reply_likely_where_dpo_alone_lets_it_fall(tiny_model_dir):
    """DPO only widens the gap, so both replies may lose likelihood; the NLL term (TRL's rpo_alpha) holds the
    chosen one up."""
    from adapters.data import Examples

    train = _synthetic_pairs(16, 0)
    chosen_logp = {}
    for rpo in (0.0, 1.0):
        torch.manual_seed(0)
        loaded = load_model(ModelConfig(model=str(tiny_model_dir)), tiny_model_dir.parent)
        model = add_lora(loaded.model, LoraSettings(rank=8, alpha=16))
        metrics = train_adapter(model, loaded, Examples(train, []),
                                TrainConfig(steps=30, learning_rate=5e-3, beta=0.1, rpo_alpha=rpo, chosen_term="nll"))
        assert ("nll_loss" in metrics) == bool(rpo)
        chosen_logp[rpo] = metrics["logps/chosen"]
    assert chosen_logp[1.0] > chosen_logp[0.0] + 1.0, chosen_logp
    with pytest.raises(ValueError, match="rpo_alpha"):
        TrainConfig(rpo_alpha=-1)


def test_the_step_size_decays_with_the_chosen_power_along_the_warm_start_chain():
    sqrt_decay, harmonic = TrainConfig(learning_rate=4e-3, decay_power=0.5), TrainConfig(learning_rate=4e-3)
    assert [sqrt_decay.learning_rate_at(k) for k in (0, 1, 4, 16)] == pytest.approx([4e-3, 4e-3, 2e-3, 1e-3])
    assert [harmonic.learning_rate_at(k) for k in (1, 2, 8)] == pytest.approx([4e-3, 2e-3, 5e-4])
    assert TrainConfig(learning_rate=4e-3, decay=False, decay_power=1.0).learning_rate_at(8) == 4e-3
    with pytest.raises(ValueError, match="decay_power"):
        TrainConfig(decay_power=-0.5)


def test_an_empty_cut_reply_still_trains_to_finite_weights(fresh_tiny):
    """A blank reply cut at its budget keeps one token (end-of-sequence), so the NLL term never divides by 0."""
    from adapters.data import Examples

    fresh_tiny.tokenizer.chat_template = (  # chat models put no space before the reply: "" is zero tokens
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}")
    assert fresh_tiny.has_chat_template
    prompt = [{"role": "user", "content": "Hi"}]
    ids, prompt_len = encode(fresh_tiny, prompt, "   ", 64, ended=False)
    assert ids[prompt_len:] == [fresh_tiny.tokenizer.eos_token_id]
    pairs = [PairExample(prompt, "", "Hello there", "f1", "u", chosen_ended=False),
             PairExample(prompt, "Hello", "", "f2", "u", rejected_ended=False)]
    model = add_lora(fresh_tiny.model, LoraSettings(rank=4, alpha=8))
    for term in ("nll", "distill"):
        metrics = train_adapter(model, fresh_tiny, Examples(pairs, []),
                                TrainConfig(steps=3, rpo_alpha=1.0, chosen_term=term))
        assert math.isfinite(metrics["loss"]) and math.isfinite(metrics[f"{term}_loss"])
    assert all(torch.isfinite(p).all() for n, p in model.named_parameters() if "lora_" in n)


def _mean_kl(model, loaded, taught, plain) -> float:
    """Mean over replies of KL(reference given `taught` prompts ‖ `model` given `plain` ones), top-64."""
    pad = loaded.tokenizer.pad_token_id
    with torch.no_grad():
        with model.disable_adapter():
            teach, _ = teachers(model, taught, pad, 64)
        log_probs, rows = completion_log_probs(model, collate(plain, pad))
        return distill_kl(log_probs, rows, teach).mean().item()


INSTRUCTION = "Answer about the fox."


def _replies_after(loaded, pairs, hinted: bool) -> list:
    """Each pair's chosen reply after its prompt, with `INSTRUCTION` added (hinted) or as sent."""
    return [encode(loaded, instructed(p.prompt, INSTRUCTION) if hinted else p.prompt, p.chosen, 128) for p in pairs]


@pytest.fixture(scope="module")
def follower(tiny_model_dir, tmp_path_factory):
    return _instruction_follower(tiny_model_dir, tmp_path_factory.mktemp("follower"))


def _instruction_follower(tiny_model_dir, folder):
    """The tiny GPT-2 fine-tuned (all weights) to answer about the fox when asked to and about the dog otherwise:
    a reference model whose behaviour an instruction changes, saved like any model."""
    from transformers import AutoTokenizer

    loaded = load_model(ModelConfig(model=str(tiny_model_dir)), tiny_model_dir.parent)
    pairs = _synthetic_pairs(16, 0)
    data = collate([encode(loaded, instructed(p.prompt, INSTRUCTION), p.chosen, 128) for p in pairs]
                   + [encode(loaded, p.prompt, p.rejected, 128) for p in pairs], loaded.tokenizer.pad_token_id)
    torch.manual_seed(0)
    optimizer = torch.optim.Adam(loaded.model.parameters(), lr=1e-2)
    loaded.model.train()
    for _ in range(60):
        loss = -sequence_logps(loaded.model, data).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    loaded.model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(folder)
    return folder


def test_distilling_a_probed_reply_teaches_the_instructed_behaviour_without_the_instruction(follower, tmp_path):
    """Context distillation: after training on chosen replies that were generated under an instruction, the policy
    given the plain prompt is closer to the reference given the instructed one, on held-out prompts too."""
    from adapters.data import Examples

    loaded = load_model(ModelConfig(model=str(follower)), tmp_path)
    train, held = _synthetic_pairs(16, 0), _synthetic_pairs(8, 500)
    taught = [PairExample(p.prompt, p.chosen, p.rejected, p.feedback_id, "u", chosen_instruction=INSTRUCTION)
              for p in train]

    def sequences(pairs, hinted):
        return _replies_after(loaded, pairs, hinted)

    torch.manual_seed(0)
    model = add_lora(loaded.model, LoraSettings(rank=8, alpha=16))
    before = _mean_kl(model, loaded, sequences(held, True), sequences(held, False))
    metrics = train_adapter(model, loaded, Examples(taught, []),
                            TrainConfig(steps=30, learning_rate=5e-3, rpo_alpha=1.0, chosen_term="distill"))
    after = _mean_kl(model, loaded, sequences(held, True), sequences(held, False))
    assert "distill_loss" in metrics and "nll_loss" not in metrics
    assert before > 0.1 and after < 0.2 * before, (before, after)


def test_distilling_plain_replies_is_a_kl_leash_to_the_reference(follower, tmp_path):
    """Without an instruction the distillation teacher is the reference itself: the policy moves less from it
    (token-level KL on the chosen replies) than with the NLL term or DPO alone, and still learns the preference."""
    from adapters.data import Examples

    # `follower` says "dog" unless asked for the fox; the chosen replies are about the fox.
    train, held = _synthetic_pairs(16, 0), _synthetic_pairs(16, 500)
    drift, accuracy = {}, {}
    for term, alpha in (("dpo", 0.0), ("nll", 1.0), ("distill", 1.0)):
        torch.manual_seed(0)
        loaded = load_model(ModelConfig(model=str(follower)), tmp_path)
        plain = [encode(loaded, p.prompt, p.chosen, 128) for p in held]
        model = add_lora(loaded.model, LoraSettings(rank=8, alpha=16))
        train_adapter(model, loaded, Examples(train, []), TrainConfig(
            steps=30, learning_rate=5e-3, rpo_alpha=alpha, chosen_term="nll" if term == "dpo" else term))
        drift[term] = _mean_kl(model, loaded, plain, plain)
        accuracy[term] = preference_accuracy(model, loaded, held)
    assert drift["distill"] < 0.5 * drift["dpo"] and drift["distill"] < 0.5 * drift["nll"], drift
    assert accuracy["distill"] >= 0.9, accuracy
    with pytest.raises(ValueError, match="chosen_term"):
        TrainConfig(chosen_term="sft")


def test_the_everyday_text_leash_keeps_other_plain_replies_near_the_reference(follower, tmp_path):
    """PPO-ptx's idea with a KL: a few plain replies (`adapters.everyday`) held to the reference in every step keep
    plain replies it never saw (the drift guard's anchor) closer to the reference, and the preference is learnt."""
    from adapters.data import Examples
    from adapters.drift import ANCHOR

    train, held = _synthetic_pairs(16, 0), _synthetic_pairs(16, 500)
    drift, accuracy, metrics = {}, {}, {}
    for weight in (0.0, 4.0):
        torch.manual_seed(0)
        loaded = load_model(ModelConfig(model=str(follower)), tmp_path)
        anchor = encode_answers(loaded, ANCHOR, 128)
        model = add_lora(loaded.model, LoraSettings(rank=8, alpha=16))
        metrics[weight] = train_adapter(model, loaded, Examples(train, []), TrainConfig(
            steps=30, learning_rate=5e-3, rpo_alpha=0.0, everyday_weight=weight))
        drift[weight] = _mean_kl(model, loaded, anchor, anchor)
        accuracy[weight] = preference_accuracy(model, loaded, held)
    assert "everyday_distill_loss" in metrics[4.0] and "everyday_distill_loss" not in metrics[0.0]
    assert drift[4.0] < 0.5 * drift[0.0], drift
    assert accuracy[4.0] >= 0.9, accuracy
    assert objective(TrainConfig(everyday_weight=1.0)) == "dpo+kto+distill+everyday_distill"
    with pytest.raises(ValueError, match="everyday_weight"):
        TrainConfig(everyday_weight=-1)


def _greedy_fox_share(model, loaded, pairs) -> float:
    """Share of greedy replies to the pairs' plain prompts that are about the fox."""
    from adapters.data import fit_prompt
    from assistant.generation import left_padded

    pad = loaded.tokenizer.pad_token_id
    ids, mask = left_padded([fit_prompt(loaded, p.prompt, 128, None, 12) for p in pairs], pad)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=12, do_sample=False,
                             pad_token_id=pad, eos_token_id=loaded.tokenizer.eos_token_id)
    replies = loaded.tokenizer.batch_decode(out[:, ids.shape[1]:], skip_special_tokens=True)
    return sum("fox" in r for r in replies) / len(replies)


def test_on_policy_distillation_teaches_the_policy_where_its_own_replies_go(follower, tmp_path):
    """Chosen = rejected (DPO has nothing to learn) and no chosen-reply term: the on-policy term alone turns the
    policy's greedy replies to plain held-out prompts from the dog to the fox, the reference's behaviour when
    instructed. With the term off they stay about the dog."""
    from adapters.data import Examples

    train, held = _synthetic_pairs(16, 0), _synthetic_pairs(8, 500)
    neutral = [PairExample(p.prompt, "Okay.", "Okay.", p.feedback_id, "u", chosen_instruction=INSTRUCTION)
               for p in train]
    before, after, metrics = {}, {}, {}
    for weight in (0.0, 1.0):
        torch.manual_seed(0)
        loaded = load_model(ModelConfig(model=str(follower)), tmp_path)
        model = add_lora(loaded.model, LoraSettings(rank=8, alpha=16))
        before[weight] = _greedy_fox_share(model, loaded, held)
        metrics[weight] = train_adapter(model, loaded, Examples(neutral, []), TrainConfig(
            steps=30, learning_rate=5e-3, rpo_alpha=0.0, on_policy_weight=weight, on_policy_tokens=12, bf16=False))
        after[weight] = _greedy_fox_share(model, loaded, held)
    assert before == {0.0: 0.0, 1.0: 0.0}
    assert after[1.0] >= 0.75 and after[0.0] == 0.0, after
    assert "on_policy_distill_loss" in metrics[1.0] and "on_policy_distill_loss" not in metrics[0.0]


def test_on_policy_targets_sample_plain_prompts_and_teach_under_the_instruction(follower, tmp_path):
    from adapters.data import fit_prompt
    from adapters.training import on_policy_targets

    loaded = load_model(ModelConfig(model=str(follower)), tmp_path)
    model = add_lora(loaded.model, LoraSettings(rank=8, alpha=16))
    pairs = _synthetic_pairs(6, 0)
    probed = [PairExample(p.prompt, p.chosen, p.rejected, p.feedback_id, "u",
                          chosen_instruction=INSTRUCTION if i % 2 else None) for i, p in enumerate(pairs)]
    config = TrainConfig(on_policy_weight=1.0, on_policy_pairs=2, on_policy_tokens=8, bf16=False)
    state = torch.get_rng_state()
    sequences, taught = on_policy_targets(model, loaded, probed, config)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's random state is untouched
    assert len(sequences) == len(taught) == 2  # pairs 1 and 3: the first two with an instruction
    for (ids, prompt_len), teacher, pair in zip(sequences, taught, (probed[1], probed[3])):
        assert ids[:prompt_len] == fit_prompt(loaded, pair.prompt, config.max_length, config.max_prompt_tokens, 8)
        reply = ids[prompt_len:]
        assert 1 <= len(reply) <= 8 and teacher.log_probs.shape == (len(reply), config.distill_top_k + 1)
        told = fit_prompt(loaded, instructed(pair.prompt, INSTRUCTION), config.max_length, config.max_prompt_tokens, 8)
        with torch.no_grad(), model.disable_adapter():  # the teacher reads the reply after the instructed prompt
            expected, _ = teachers(model, [(told + reply, len(told))], loaded.tokenizer.pad_token_id,
                                   config.distill_top_k)
        assert torch.allclose(teacher.log_probs, expected[0].log_probs, atol=1e-5)
    again, _ = on_policy_targets(model, loaded, probed, config)
    assert again == sequences  # a seed fixed by the prompts: an update repeats
    assert on_policy_targets(model, loaded, [probed[0], probed[2]], config) == ([], [])
    with pytest.raises(ValueError, match="on_policy"):
        TrainConfig(on_policy_weight=-1)


def _forwards(model) -> list[int]:
    """A counter of `model`'s forward calls (hooked on the underlying transformer)."""
    calls = [0]
    model.get_base_model().register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


@pytest.mark.parametrize("term", ["nll", "distill"])
def test_reference_cache_skips_known_pairs_and_trains_exactly_the_same(tiny_model_dir, term):
    from adapters.data import Examples
    from adapters.references import ReferenceCache

    pairs = _synthetic_pairs(6, 0)
    pairs[1] = PairExample(pairs[1].prompt, pairs[1].chosen, pairs[1].rejected, "f1", "u",
                           chosen_instruction="Answer about the fox.")
    config = TrainConfig(steps=3, learning_rate=5e-3, bf16=False, chosen_term=term)
    cache, runs = ReferenceCache(), {}
    for name, use in (("plain", None), ("fills", cache), ("hits", cache), ("other reference", cache)):
        torch.manual_seed(0)
        loaded = load_model(ModelConfig(model=str(tiny_model_dir)), tiny_model_dir.parent)
        model = add_lora(loaded.model, LoraSettings(rank=4, alpha=8))
        calls = _forwards(model)
        train_adapter(model, loaded, Examples(pairs, []), config, references=use,
                      reference_key="v2" if name == "other reference" else "v1")
        runs[name] = (calls[0], {k: v.clone() for k, v in model.state_dict().items() if "lora_" in k})
    assert len(cache) == 2 * len(pairs)  # one entry per pair and reference
    steps = 2 * config.steps  # each step runs the prompts, then both replies (`share_prompts`)
    assert runs["hits"][0] == steps  # only the training steps: every reference value came from the cache
    assert runs["fills"][0] > steps and runs["other reference"][0] == runs["fills"][0]
    for name in ("fills", "hits"):
        assert all(torch.allclose(runs[name][1][k], v, atol=1e-6) for k, v in runs["plain"][1].items()), name


def test_reference_cache_forgets_the_least_recently_used():
    from adapters.references import ReferenceCache

    cache = ReferenceCache(size=2)
    cache.put("a", (1.0, 2.0, None))
    cache.put("b", (3.0, 4.0, None))
    assert cache.get("a") == (1.0, 2.0, None)  # "a" is now the most recent
    cache.put("c", (5.0, 6.0, None))
    assert cache.get("b") is None and cache.get("a") and cache.get("c") and len(cache) == 2

