"""A tiny, randomly initialised GPT-2 with its own byte-level BPE tokenizer, built on the fly.

Tests and the benchmarks' --quick modes load it through Attune's real loading code (it is saved to a folder).
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

TINY_CONTEXT = 256

_CORPUS = [
    "User: What is the capital of France?\nAssistant: The capital of France is Paris.",
    "User: Tell me a joke.\nAssistant: Why did the chicken cross the road? To get to the other side!",
    "User: How are you today?\nAssistant: I am fine, thank you. How can I help you?",
    "You are a helpful, friendly assistant. Please answer briefly and politely.",
    "The quick brown fox jumps over the lazy dog. Numbers 0 1 2 3 4 5 6 7 8 9 and emoji 😀 🎉 café naïve.",
]


def _train_tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_CORPUS * 20, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                   unk_token="<|endoftext|>")


def make_tiny_gpt2(folder: Path, seed: int = 0) -> Path:
    """Build a 2-layer random GPT-2 (≈0.1 M parameters) with its own tokenizer and save both to `folder`."""
    tokenizer = _train_tokenizer()
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=TINY_CONTEXT, n_embd=32, n_layer=2, n_head=2,
                        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
    model = GPT2LMHeadModel(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def make_tiny_llama(folder: Path, seed: int = 0) -> Path:
    """Build a 2-layer random LLaMA (grouped-query attention, tied embeddings, like SmolLM2) with the same tokenizer
    and save both to `folder`: the tiny model llama.cpp can also decode (assistant/gguf_model.py). Its weights are
    drawn wider than a trained model's initialisation so that greedy choices are rarely near ties."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = _train_tokenizer()
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=TINY_CONTEXT,
                         tie_word_embeddings=True, initializer_range=0.5, bos_token_id=tokenizer.eos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
