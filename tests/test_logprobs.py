"""Log-probabilities of replies (`adapters.logprobs`): against full forwards, with a shared prompt, and teachers."""

from __future__ import annotations

import pytest
import torch

from adapters.data import collate, encode
from adapters.logprobs import (completion_log_probs, sequence_logps, shared_prompt_log_probs, shares_prompts,
                               teachers)
from adapters.lora import add_lora
from adapters.losses import distill_kl
from assistant.config import LoraSettings, ModelConfig
from assistant.model import load_model
from tests.test_training import _synthetic_pairs


@pytest.fixture
def fresh_tiny(tiny_model_dir):
    """A private copy of the tiny model (LoRA wraps modules in place)."""
    return load_model(ModelConfig(model=str(tiny_model_dir)), tiny_model_dir.parent)


def test_sequence_logps_equal_a_full_forward(fresh_tiny):
    tok = fresh_tiny.tokenizer
    seqs = [encode(fresh_tiny, [{"role": "user", "content": "Tell me a joke."}], "Why did the fox", 128),
            encode(fresh_tiny, [{"role": "user", "content": "Hi"}], "Hello there, friend", 128)]
    batch = collate(seqs, tok.pad_token_id)
    got = sequence_logps(fresh_tiny.model, batch)
    for row, (ids, prompt_len) in enumerate(seqs):
        logits = fresh_tiny.model(torch.tensor([ids])).logits[0].float()
        logps = torch.log_softmax(logits, -1)
        expected = sum(logps[t - 1, ids[t]] for t in range(prompt_len, len(ids)))
        assert got[row].item() == pytest.approx(expected.item(), abs=1e-4)
    assert seqs[0][0][-1] == tok.eos_token_id  # replies end with end-of-sequence, as generation does


def _tiny_llama():
    """A random 2-layer Llama (rotary positions, grouped-query attention): the architecture of the embedded model."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    return LlamaForCausalLM(config).eval()


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_a_shared_prompt_forward_gives_the_plain_forwards_log_probs_and_gradients(fresh_tiny, arch):
    """Prompts of different lengths (so padded ones leave a masked gap before their replies), replies of different
    lengths, a one-token reply: every log-probability, its row, and every LoRA gradient match the plain forward of
    the full sequences, which runs each prompt twice."""
    model = add_lora(fresh_tiny.model if arch == "gpt2" else _tiny_llama(), LoraSettings(top_layers=1.0))
    for name, param in model.named_parameters():  # LoRA B starts at zero: give the adapter something to do
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.1)
    gen = torch.Generator().manual_seed(1)
    ids = lambda n: torch.randint(3, 90, (n,), generator=gen).tolist()  # noqa: E731
    prompts = [ids(7), ids(3), ids(12)]
    first = [(p + ids(k), len(p)) for p, k in zip(prompts, (5, 1, 9))]
    second = [(p + ids(k), len(p)) for p, k in zip(prompts, (2, 8, 4))]
    pad = 0
    assert shares_prompts(first, second) and not shares_prompts(first, second[::-1])

    def run(forward):
        model.zero_grad()
        log_probs, rows = forward()
        batch = collate(first + second, pad)
        targets = batch.input_ids[:, 1:][batch.completion_mask[:, 1:]]
        picked = log_probs.gather(1, targets[:, None]).squeeze(1)
        (picked * torch.linspace(0.5, 2.0, len(picked))).sum().backward()  # weights every token differently
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        return log_probs.detach(), rows, grads

    plain = run(lambda: completion_log_probs(model, collate(first + second, pad)))
    shared = run(lambda: shared_prompt_log_probs(model, first, second, pad))
    assert torch.equal(shared[1], plain[1])
    assert torch.allclose(shared[0], plain[0], atol=1e-5)
    assert set(shared[2]) == set(plain[2]) and len(plain[2]) >= 4
    for name, grad in plain[2].items():
        assert grad.abs().max() > 0 and torch.allclose(shared[2][name], grad, atol=1e-5, rtol=1e-4), name


def test_teachers_keep_the_top_k_and_the_rest_of_the_mass(fresh_tiny):
    sequences = [encode(fresh_tiny, p.prompt, p.chosen, 128) for p in _synthetic_pairs(3, 0)]
    batch = collate(sequences, fresh_tiny.tokenizer.pad_token_id)
    with torch.no_grad():
        taught, sums = teachers(fresh_tiny.model, sequences, fresh_tiny.tokenizer.pad_token_id, top_k=5, chunk=2)
        log_probs, rows = completion_log_probs(fresh_tiny.model, batch)
        assert torch.allclose(sums, sequence_logps(fresh_tiny.model, batch), atol=1e-4)
    assert [t.log_probs.shape for t in taught] == [(len(ids) - n, 6) for ids, n in sequences]
    assert all(torch.allclose(t.log_probs.exp().sum(-1), torch.ones(len(t.log_probs)), atol=1e-5) for t in taught)
    first = log_probs[rows == 0]
    assert torch.equal(taught[0].token_ids.long(), first.topk(5, dim=-1).indices)
    assert taught[0].token_ids.dtype == torch.int32
    assert distill_kl(first, rows[rows == 0], taught[:1]).item() == pytest.approx(0.0, abs=1e-5)
