"""Which decoder serves replies: an OpenAI-compatible server when asked for; llama.cpp on the embedded GGUF when
asked for or available and agreeing with the torch path on a short greedy reply (the start-up self-check); else
torch (`ModelConfig.backend`)."""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from assistant.config import EMBEDDED_MODEL, GenerationSettings, ModelConfig
from assistant.gguf_model import gguf_for
from assistant.llamacpp import LlamaCppDecoder, available
from assistant.model import EMBEDDED_ALIASES, LoadedModel, embedded_gguf_path
from assistant.prompts import build_prompt
from assistant.remote import OpenAIDecoder
from storage.errors import InvalidInput, ModelUnavailable

log = logging.getLogger(__name__)

CHECK_TOKENS = 8
"""Greedy tokens the self-check decodes both ways; they must all agree."""


def self_check(decoder: LlamaCppDecoder, loaded: LoadedModel) -> bool:
    """Whether llama.cpp writes the torch path's first `CHECK_TOKENS` greedy tokens of a fixed prompt."""
    ids = build_prompt(loaded, "You are a helpful assistant.", [{"role": "user", "content": "Say hello."}],
                       CHECK_TOKENS).input_ids
    with torch.inference_mode():
        out = loaded.model.generate(torch.tensor([ids]), max_new_tokens=CHECK_TOKENS, do_sample=False,
                                    pad_token_id=loaded.tokenizer.pad_token_id)
    expected = out[0, len(ids):].tolist()
    got: list[int] = []
    decoder.generate(ids, GenerationSettings(temperature=0.0, repetition_penalty=1.0), CHECK_TOKENS, [], got.append,
                     lambda: False)
    got += [loaded.tokenizer.eos_token_id] * (len(expected) - len(got))  # (it ended early: compare the ends)
    return got == expected


def choose_decoder(config: ModelConfig, loaded: LoadedModel,
                   training: Callable[[], bool] | None = None,
                   cache_root: Path | None = None) -> LlamaCppDecoder | OpenAIDecoder | None:
    """The llama.cpp decoder to serve with, or None for torch, with one log line saying which and why. While
    `training()` says a worker trains beside it, each reply takes one thread (two collapse when the trainer shares
    the cores). `cache_root`: where a model other than the embedded one is written as a GGUF (`--backend llamacpp`)."""
    if config.backend == "torch":
        log.info("Decoding with torch (--backend torch).")
        return None
    if config.backend == "openai":
        if not config.server.startswith(("http://", "https://")):
            raise InvalidInput("--backend openai needs --server URL (http://… or https://…).")
        decoder = OpenAIDecoder(config.server, loaded.tokenizer, config.server_model, config.server_loads_adapters)
        log.info("Decoding on the server at %s (base model %s; adapters %s).", config.server, decoder.base_model,
                 "registered as they appear" if config.server_loads_adapters else "served by name")
        return decoder
    embedded = config.model in EMBEDDED_ALIASES or config.model == EMBEDDED_MODEL
    if not available() or (not embedded and config.backend != "llamacpp"):
        why = "llama-cpp-python is not installed" if not available() else "the model is not the embedded one"
        if config.backend == "llamacpp":
            raise ModelUnavailable(f"--backend llamacpp cannot serve: {why} (make llamacpp installs it).")
        log.info("Decoding with torch: %s.", why)
        return None
    # The embedded model's shipped Q4_1 file; another LLaMA-family model as an F32 GGUF of its very weights.
    gguf = embedded_gguf_path() if embedded else gguf_for(loaded.model, loaded.tokenizer,
                                                          cache_root or Path(tempfile.gettempdir()) / "attune")
    threads = max(1, os.cpu_count() or 1)
    decoder = LlamaCppDecoder(gguf, loaded.context_window, threads, contexts=config.llamacpp_contexts,
                              training=training or (lambda: False))
    if not self_check(decoder, loaded):
        if config.backend == "llamacpp":
            raise ModelUnavailable("--backend llamacpp failed its self-check: its greedy reply differs from torch's.")
        log.warning("Decoding with torch: llama.cpp's greedy reply differed from torch's in the self-check.")
        return None
    log.info("Decoding with llama.cpp (%d contexts, %d threads; one each while a job trains), the self-check "
             "agreeing with torch.", decoder.contexts, threads)
    return decoder
