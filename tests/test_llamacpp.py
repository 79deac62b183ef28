"""llama.cpp decoding of the embedded model against the torch path: the same greedy tokens from the same prompt ids,
bare and with LoRA adapters at scales (the GGUF files the registry writes at publish). Runs where llama-cpp-python is
installed (`make llamacpp` builds it); the embedded model's Q4_1 weights are the torch path's, de-quantized."""

from __future__ import annotations

import copy

import pytest
import torch

from adapters.lora import add_lora, merge_lora
from adapters.registry import GGUF, GLOBAL, AdapterRegistry, personal_adapter
from assistant.config import GenerationSettings, LoraSettings, ModelConfig
from assistant.llamacpp import LlamaCppDecoder, available
from assistant.model import embedded_gguf_path, load_model
from assistant.prompts import build_prompt
from tests.conftest import EMBEDDED_CACHE

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not available(), reason="llama-cpp-python is not installed")]

TOKENS = 24
NEAR_TIE = 1.0
"""llama.cpp multiplies Q4_1 weights by 8-bit activations and keeps an F16 KV cache, the torch path computes in fp32:
their logits differ by about 0.2 on average, so where torch's two best tokens are closer than this, llama.cpp may pick
the other one. The greedy replies must agree up to the first such near tie."""


@pytest.fixture(scope="module")
def embedded():
    return load_model(ModelConfig(), EMBEDDED_CACHE)


@pytest.fixture(scope="module")
def decoder(embedded):
    return LlamaCppDecoder(embedded_gguf_path(), context_window=1024, threads=1)


def _prompt(embedded):
    return build_prompt(embedded, "You are a helpful assistant.", [{"role": "user", "content": "Name three fruits."}],
                        TOKENS).input_ids


def _torch_tokens(model, embedded, ids) -> tuple[list[int], list[float]]:
    """Greedy reply tokens (through the end-of-sequence token if the model wrote one) and, at each, the margin of
    the best logit over the second best."""
    with torch.inference_mode():
        out = model.generate(torch.tensor([ids]), max_new_tokens=TOKENS, do_sample=False, output_scores=True,
                             return_dict_in_generate=True, pad_token_id=embedded.tokenizer.pad_token_id)
    tokens = out.sequences[0, len(ids):].tolist()
    margins = [float(top[0] - top[1]) for top in (step[0].topk(2).values for step in out.scores)]
    eos = embedded.tokenizer.eos_token_id
    end = tokens.index(eos) + 1 if eos in tokens else len(tokens)
    return tokens[:end], margins[:end]


def _agree(mine: list[int], reference: tuple[list[int], list[float]]) -> None:
    """`mine` is the reference up to the first near tie of the reference (then it may go either way)."""
    tokens, margins = reference
    for i, (got, want) in enumerate(zip(mine, tokens)):
        if got != want:
            assert margins[i] < NEAR_TIE, f"token {i}: {got} against {want}, torch's margin {margins[i]:.2f}"
            return
    assert len(mine) == len(tokens)


def _llama_tokens(decoder, ids, adapters, eos: int) -> list[int]:
    tokens: list[int] = []
    if decoder.generate(ids, GenerationSettings(temperature=0.0, repetition_penalty=1.0), TOKENS, adapters,
                        tokens.append, lambda: False):
        tokens.append(eos)  # (llama.cpp ends at its end-of-generation token without handing it on)
    return tokens


def _random_lora(model, seed: int, scale: float = 0.02):
    torch.manual_seed(seed)  # (PEFT draws lora_A from the global generator)
    lora = add_lora(copy.deepcopy(model), LoraSettings(rank=8, alpha=16))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=generator) * scale)
    return lora


def test_bare_greedy_tokens_agree_with_the_torch_path(embedded, decoder):
    ids = _prompt(embedded)
    eos = embedded.tokenizer.eos_token_id
    _agree(_llama_tokens(decoder, ids, [], eos), _torch_tokens(embedded.model, embedded, ids))


def test_a_blend_of_gguf_adapters_decodes_as_the_merged_torch_model(embedded, decoder, store, data_home):
    registry = AdapterRegistry(data_home / "adapters", store)
    ann = store.create_profile("Ann")["id"]
    everyone = registry.publish(GLOBAL, None, _random_lora(embedded.model, 1), {}, "t")
    mine = registry.publish(personal_adapter(ann), ann, _random_lora(embedded.model, 2), {}, "t")
    merged = copy.deepcopy(embedded.model)
    merge_lora(merged, *registry.load_weights(everyone))
    config, tensors = registry.load_weights(mine)
    merge_lora(merged, {**config, "lora_alpha": config["lora_alpha"] * 0.5}, tensors)  # personal at α 0.5
    ids = _prompt(embedded)
    expected = _torch_tokens(merged, embedded, ids)
    assert expected[0] != _torch_tokens(embedded.model, embedded, ids)[0]  # the adapters change the reply
    eos = embedded.tokenizer.eos_token_id
    _agree(_llama_tokens(decoder, ids, [(everyone.folder / GGUF, 1.0), (mine.folder / GGUF, 0.5)], eos), expected)
    _agree(_llama_tokens(decoder, ids, [], eos), _torch_tokens(embedded.model, embedded, ids))  # and back
    decoder.generate(ids, GenerationSettings(temperature=0.0), 4, [(mine.folder / GGUF, 1.0)], lambda t: None,
                     lambda: False, owner=ann)
    held = [c for c in decoder._all if c.cached(ids, c.active, ann)]
    assert held
    decoder.forget(ann, [mine.folder / GGUF])  # Ann's profile is erased: her token ids go too
    loaded = {key.split("\x1f")[0] for c in decoder._all for key in c.adapters}
    assert all(c.owner is None and not c.llm.input_ids.any() for c in held)
    decoder.generate(ids, GenerationSettings(temperature=0.0), 4, [], lambda t: None, lambda: False, owner=ann)
    assert any(c.cached(ids, (), ann) for c in decoder._all)  # (forgetting is once: a reset profile's next turn)
    assert str(mine.folder / GGUF) not in loaded and str(everyone.folder / GGUF) in loaded  # (everyone's stays)

def test_the_app_serves_replies_and_compare_mode_with_llama_cpp(data_home):
    from tests.conftest import api_client, serving
    from tests.test_app import create_profile, send

    with serving(["--model", "embedded", "--model-cache", str(EMBEDDED_CACHE), "--data-dir", str(data_home),
                  "--backend", "llamacpp", "--no-worker"]) as (url, service):
        assert service.decoder is not None  # the self-check agreed
        client = api_client(url, download_files=False)
        ann = create_profile(client, "Ann")
        final, outputs = send(client, ann, None, "Name three fruits.")
        conversation = final["conversation"]["value"]
        reply = client.predict(ann, conversation, api_name="/messages")[1]
        assert reply["content"] and reply["settings"]["backend"] == "llamacpp" and len(outputs) >= 3  # streamed
        send(client, ann, conversation, "And three vegetables?", compare=True)
        pending = client.predict(ann, conversation, api_name="/pending")
        assert pending["a"] and pending["b"]
        messages = service.store.conversation_messages(ann, conversation)
        candidates = [m for m in messages if m.status == "candidate"]
        assert {m.settings.get("backend") for m in candidates} == {"llamacpp"} and len(candidates) == 2
        assert all(m.content for m in candidates)  # (that two samples differ is a decoder test's: their text
        # here hangs on Python's global random state, which the tests before this one moved)


def test_q_and_k_adapters_land_where_the_converter_moved_their_rows(embedded, decoder, store, data_home):
    """An adapter on q and k alone, whose effect passes through the rotary layout llama.cpp's converter permutes:
    llama.cpp's logits with it are torch's (merged) as closely as without it. Written without the permutation, the
    error was 0.547 against an effect of 0.370 and a base error of 0.240; with it, 0.235 (2026-12-05)."""
    import numpy as np

    torch.manual_seed(1)
    lora = add_lora(copy.deepcopy(embedded.model), LoraSettings(rank=8, alpha=16, target_modules=("q_proj", "k_proj")))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.1)
    version = AdapterRegistry(data_home / "adapters", store).publish(GLOBAL, None, lora, {}, "t")
    merged = copy.deepcopy(embedded.model)
    merge_lora(merged, *AdapterRegistry(data_home / "adapters", store).load_weights(version))
    ids = _prompt(embedded)
    with torch.inference_mode():
        base, adapted = (m(torch.tensor([ids])).logits[0, -1].numpy() for m in (embedded.model, merged))
    effect = np.abs(adapted - base).mean()
    base_error = np.abs(decoder.next_logits(ids, []) - base).mean()
    error = np.abs(decoder.next_logits(ids, [(version.folder / GGUF, 1.0)]) - adapted).mean()
    assert effect > base_error  # the adapter moves the logits more than the two paths differ by themselves
    assert error < base_error + 0.25 * effect, (error, base_error, effect)


def test_stop_ends_after_the_current_token_and_a_seed_repeats_a_sampled_reply(embedded, decoder):
    ids = _prompt(embedded)
    tokens: list[int] = []
    ended = decoder.generate(ids, GenerationSettings(temperature=0.0), TOKENS, [], tokens.append,
                             lambda: len(tokens) >= 3)
    assert tokens and len(tokens) == 3 and ended is False

    def sampled(seed):
        out: list[int] = []
        decoder.generate(ids, GenerationSettings(temperature=1.0, top_p=1.0), TOKENS, [], out.append, lambda: False,
                         seed=seed)
        return out

    assert sampled(7) == sampled(7)
    assert len({tuple(sampled(seed)) for seed in range(6)}) > 1  # and the seed is what varies it


def test_two_replies_to_one_prompt_differ_without_a_seed_and_min_new_tokens_holds_the_end_back(embedded, decoder):
    import random

    ids = _prompt(embedded)
    random.seed(0)  # (the fresh seeds come from Python's generator: fixed here, so the test is deterministic)

    def sampled(**kwargs):
        out: list[int] = []
        ended = decoder.generate(ids, GenerationSettings(temperature=1.0, top_p=1.0), TOKENS, [], out.append,
                                 lambda: False, **kwargs)
        return out, ended

    assert sampled()[0] != sampled()[0]  # Retry writes another reply
    short = build_prompt(embedded, "Answer with one word.", [{"role": "user", "content": "Yes or no?"}], 8).input_ids
    out: list[int] = []
    assert decoder.generate(short, GenerationSettings(temperature=0.0), 8, [], out.append, lambda: False) is True
    held: list[int] = []
    decoder.generate(short, GenerationSettings(temperature=0.0), 40, [], held.append, lambda: False,
                     min_new_tokens=len(out) + 5)
    assert len(held) >= len(out) + 5 and held[:len(out)] == out  # the same reply, not ended where it ended


def test_the_next_turn_reads_only_its_new_tokens_and_writes_what_a_fresh_context_writes(embedded):
    one = LlamaCppDecoder(embedded_gguf_path(), context_window=1024, threads=1, contexts=1)
    turns = [{"role": "user", "content": "Name three fruits."}]
    first = build_prompt(embedded, "You are a helpful assistant.", turns, TOKENS).input_ids
    reply: list[int] = []
    one.generate(first, GenerationSettings(temperature=0.0), TOKENS, [], reply.append, lambda: False)
    turns += [{"role": "assistant", "content": embedded.tokenizer.decode(reply, skip_special_tokens=True)},
              {"role": "user", "content": "And three vegetables?"}]
    second = build_prompt(embedded, "You are a helpful assistant.", turns, TOKENS).input_ids
    context = one._all[0]
    assert context.cached(second, ()) >= len(first)  # the first turn's prompt is not read again
    assert context.cached(second, (("other.gguf", 1.0),)) == 0  # (under another blend nothing is reused)
    _agree(_llama_tokens(one, second, [], embedded.tokenizer.eos_token_id),
           _torch_tokens(embedded.model, embedded, second))
    one.close()


def test_compare_mode_decodes_two_candidates_and_threads_follow_the_trainer(embedded):
    from assistant.generation import ReplyStream

    training = [False]
    two = LlamaCppDecoder(embedded_gguf_path(), context_window=1024, threads=2, training=lambda: training[0])
    prompt = build_prompt(embedded, "You are a helpful assistant.", [{"role": "user", "content": "Tell a joke."}],
                          TOKENS)
    stream = ReplyStream(embedded, prompt, GenerationSettings(temperature=1.0), num_candidates=2, decoder=two)
    for _ in stream:
        pass
    assert all(stream.new_tokens) and stream.texts[0] != stream.texts[1] and stream.stats()["backend"] == "llamacpp"
    tokens: list[int] = []
    ids = _prompt(embedded)  # (held by one context after this)
    two.generate(ids, GenerationSettings(temperature=0.0), 4, [], tokens.append, lambda: False)
    assert max(c.threads for c in two._all) == 2  # alone and no job running: both cores
    training[0] = True
    two.generate(ids, GenerationSettings(temperature=0.0), 4, [], tokens.append, lambda: False)
    used = max(two._all, key=lambda c: c.cached(ids, ()))  # (the context holding this prompt decoded it again)
    assert used.threads == 1  # a job trains beside: one thread, the other core is the trainer's
    two.close()


def test_a_version_number_reused_after_a_reset_serves_the_new_weights(embedded, decoder, store, data_home):
    registry = AdapterRegistry(data_home / "adapters", store)
    ann = store.create_profile("Ann")["id"]
    first = registry.publish(personal_adapter(ann), ann, _random_lora(embedded.model, 2, 0.05), {}, "t")
    ids, eos = _prompt(embedded), embedded.tokenizer.eos_token_id
    before = _llama_tokens(decoder, ids, [(first.folder / GGUF, 1.0)], eos)
    registry.drop(personal_adapter(ann))  # Reset: the next version is v0001 again, at the same path
    second = registry.publish(personal_adapter(ann), ann, _random_lora(embedded.model, 5, 0.05), {}, "t")
    assert second.folder == first.folder
    merged = copy.deepcopy(embedded.model)
    merge_lora(merged, *registry.load_weights(second))
    expected = _torch_tokens(merged, embedded, ids)
    assert expected[0] != before  # (the two versions write different replies)
    after = _llama_tokens(decoder, ids, [(second.folder / GGUF, 1.0)], eos)
    assert after != before  # not the first version's weights, nor what was read under them
    _agree(after, expected)
