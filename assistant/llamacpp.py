"""Decoding with llama.cpp (llama-cpp-python): the embedded GGUF as shipped, with LoRA adapters set per request.

One `Llama` context decodes one stream at a time (a lock); the adapters (GGUF LoRA files, adapters/gguf_lora.py)
are loaded once into the model and the active set with its scales is set on the context per request
(`llama_set_adapters_lora`: base + global at 1 + personal at α). When the set changes the cached keys and values
were computed under another blend, so the context starts afresh. Prompt token ids come from the same tokenizer as the
torch path; the repetition penalty counts the reply's tokens only, as the torch path's does.
"""

from __future__ import annotations

import atexit
import ctypes
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import numpy as np

from assistant.config import GenerationSettings
from storage.errors import ModelUnavailable

log = logging.getLogger(__name__)

MAX_ADAPTERS = 64
"""GGUF adapters kept loaded in the model (least recently used go first)."""


def available() -> bool:
    """Whether llama-cpp-python is installed (it is built from source: an optional part)."""
    import importlib.util
    return importlib.util.find_spec("llama_cpp") is not None


class LlamaCppDecoder:
    """The model at `gguf_path` in llama.cpp, `threads` CPU threads, a context of `context_window` tokens."""

    def __init__(self, gguf_path: Path, context_window: int, threads: int, seed: int = 0):
        if not available():
            raise ModelUnavailable("llama-cpp-python is not installed (make llamacpp builds it).")
        from llama_cpp import Llama

        self.llm = Llama(model_path=str(gguf_path), n_ctx=context_window, n_threads=threads,
                         n_threads_batch=threads, seed=seed, verbose=False)
        self._adapters: OrderedDict[str, ctypes.c_void_p] = OrderedDict()
        self._active: tuple = ()
        self._lock = threading.Lock()
        atexit.register(self.close)  # (freed by the interpreter's own teardown, llama-cpp-python logs a TypeError)

    def close(self) -> None:
        """Free the adapters and the model (idempotent)."""
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            llm.close()

    def _adapter(self, path: Path):
        import llama_cpp

        key = str(path)
        if key in self._adapters:
            self._adapters.move_to_end(key)
            return self._adapters[key]
        handle = llama_cpp.llama_adapter_lora_init(self.llm.model, key.encode())
        if not handle:
            raise ModelUnavailable(f"llama.cpp could not load the adapter {path.parent.name}/{path.name}.")
        self._adapters[key] = handle
        while len(self._adapters) > MAX_ADAPTERS:
            stale_key, stale = self._adapters.popitem(last=False)
            if stale_key not in {p for p, _ in self._active}:
                llama_cpp.llama_adapter_lora_free(stale)
        return handle

    def _set_adapters(self, adapters: list[tuple[Path, float]]) -> None:
        """Make `adapters` (GGUF path, scale) the active set; a changed set starts the context afresh."""
        import llama_cpp

        wanted = tuple((str(p), float(s)) for p, s in adapters if s != 0.0)
        if wanted == self._active:
            return
        handles = [self._adapter(Path(p)) for p, _ in wanted]
        array = (llama_cpp.llama_adapter_lora_p_ctypes * len(handles))(*handles) if handles else None
        scales = (ctypes.c_float * len(handles))(*(s for _, s in wanted)) if handles else None
        llama_cpp.llama_set_adapters_lora(self.llm.ctx, array, len(handles), scales)
        self._active = wanted
        self.llm._ctx.kv_cache_clear()  # keys and values computed under the old blend must not be reused
        self.llm.reset()

    def next_logits(self, input_ids: list[int], adapters: list[tuple[Path, float]]) -> np.ndarray:
        """The logits of the token after `input_ids` with `adapters` active (shape (vocabulary,))."""
        import llama_cpp

        with self._lock:
            self._set_adapters(adapters)
            self.llm.reset()
            self.llm.eval(input_ids)
            last = llama_cpp.llama_get_logits_ith(self.llm.ctx, -1)
            return np.ctypeslib.as_array(last, shape=(self.llm.n_vocab(),)).copy()

    def generate(self, input_ids: list[int], settings: GenerationSettings, max_new_tokens: int,
                 adapters: list[tuple[Path, float]], on_token: Callable[[int], None],
                 should_stop: Callable[[], bool], seed: int | None = None) -> bool:
        """Decode up to `max_new_tokens` after `input_ids`, calling `on_token` with each; True if the model ended
        the reply itself (an end-of-generation token), False at the budget or when `should_stop()`."""
        from llama_cpp import LogitsProcessorList, llama_vocab_is_eog

        with self._lock:
            self._set_adapters(adapters)
            self.llm.reset()
            if seed is not None:
                self.llm.set_seed(seed)
            penalty = _ReplyRepetitionPenalty(settings.repetition_penalty, len(input_ids))
            temperature = float(settings.temperature)
            steps = self.llm.generate(input_ids, temp=temperature, top_p=float(settings.top_p), top_k=0, min_p=0.0,
                                      repeat_penalty=1.0, reset=True,
                                      logits_processor=LogitsProcessorList([penalty]) if penalty.active else None)
            vocab = self.llm._model.vocab
            for count, token in enumerate(steps):
                if llama_vocab_is_eog(vocab, token):
                    return True
                on_token(int(token))
                if count + 1 >= max_new_tokens or should_stop():
                    return False
        return False


class _ReplyRepetitionPenalty:
    """CTRL's repetition penalty on the tokens generated so far, never on the prompt's (transformers'
    `RepetitionPenaltyLogitsProcessor` with `prompt_ignore_length`, as the torch path applies it)."""

    def __init__(self, penalty: float, prompt_length: int):
        self.penalty, self.prompt_length = float(penalty), prompt_length
        self.active = self.penalty != 1.0

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        seen = np.unique(np.asarray(input_ids[self.prompt_length:], dtype=np.int64))
        if seen.size:
            picked = scores[seen]
            scores[seen] = np.where(picked < 0, picked * self.penalty, picked / self.penalty)
        return scores
