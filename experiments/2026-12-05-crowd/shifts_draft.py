"""The draft `Shifts` of assistant/crowd.py as measured by threshold.py (not kept in the product)."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import torch

from assistant.config import GenerationSettings
from assistant.generation import generate_texts
from assistant.model import LoadedModel
from assistant.prompts import build_prompt
from assistant.words import normalised

REFERENCE_PROMPTS = ("How do I make a cup of tea?", "What is a black hole?", "How can I save money each month?",
                     "Tell me about Rome.")
REFERENCE_SAMPLES = 4
REFERENCE_TOKENS = 40


class Shifts:
    """For each reference reply (sampled once from the base model, seeded), the change in its mean token
    log-probability when the instruction follows the request; rows centred and of unit length."""

    def __init__(self, loaded: LoadedModel, seed: int = 0):
        self.loaded = loaded
        self.seed = seed
        self._lock = threading.Lock()
        self._references = None
        self._base = None
        self._cache: dict[str, torch.Tensor] = {}

    def vectors(self, texts: Sequence[str]) -> torch.Tensor:
        with self._lock:
            references = self._ensure_references()
            for text in texts:
                key = normalised(text).lower()
                if key not in self._cache:
                    shift = self._log_probs(references, normalised(text)) - self._base
                    shift = shift - shift.mean()
                    self._cache[key] = shift / shift.norm().clamp_min(1e-8)
            return torch.stack([self._cache[normalised(t).lower()] for t in texts])

    def _ensure_references(self):
        if self._references is None:
            settings = GenerationSettings(temperature=1.0, top_p=0.95, max_new_tokens=REFERENCE_TOKENS)
            references = []
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)
                for request in REFERENCE_PROMPTS:
                    prompt = build_prompt(self.loaded, "", [{"role": "user", "content": request}], REFERENCE_TOKENS)
                    references += [(request, reply) for reply in generate_texts(
                        self.loaded, prompt, settings, num_candidates=REFERENCE_SAMPLES) if reply.strip()]
            self._references = references
            self._base = self._log_probs(references, None)
        return self._references

    def _log_probs(self, references, instruction):
        tokenizer = self.loaded.tokenizer
        rows, starts = [], []
        for request, reply in references:
            content = f"{request}\n\n{instruction}" if instruction else request
            prompt = list(build_prompt(self.loaded, "", [{"role": "user", "content": content}],
                                       REFERENCE_TOKENS).input_ids)
            rows.append(prompt + tokenizer(reply, add_special_tokens=False)["input_ids"])
            starts.append(len(prompt))
        width = max(len(r) for r in rows)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
        with torch.inference_mode():
            logits = self.loaded.model(input_ids=ids, attention_mask=mask).logits.float()
        logp = torch.log_softmax(logits[:, :-1], -1).gather(2, ids[:, 1:, None])[..., 0]
        return torch.stack([logp[i, start - 1:len(row) - 1].mean() for i, (row, start) in
                            enumerate(zip(rows, starts, strict=True))])
