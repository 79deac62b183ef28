"""Decoding with llama.cpp (llama-cpp-python): the embedded GGUF as shipped, with LoRA adapters set per request.

A `LlamaCppDecoder` holds a few contexts of the model (`contexts`, each a `Llama` on the same memory-mapped file):
one reply decodes in one context, so as many replies (or compare mode's two candidates) decode at once, each on its
own thread. The adapters (GGUF LoRA files, adapters/gguf_lora.py) load once per context and the active set with its
scales is set on the context per request (`llama_set_adapters_lora`: base + global at 1 + personal at α). When the
set changes, the cached keys and values were computed under another blend, so the context starts afresh; when it
stays and the prompt extends what the context last read for the same profile (the next turn of a conversation),
only the new tokens are read. A request takes the free context that already holds the longest part of its prompt
under its blend and owner. Nothing is reused across owners: a shorter time to first token would tell one person
that another had just sent the same words.

Threads: a reply alone on the process's main thread (where the app decodes: assistant/executor.py) takes the
`threads` cores; two replies at once, a reply on another thread, or any reply while a training job runs
(`training()`) take one each; re-planned at every token. Prompt token ids come from the same
tokenizer as the torch path; the repetition penalty counts the reply's tokens only, as the torch path's does.
"""

from __future__ import annotations

import atexit
import ctypes
import logging
import os
import random
import threading
from collections import OrderedDict
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from assistant.config import GenerationSettings
from storage.errors import ModelUnavailable

log = logging.getLogger(__name__)

MAX_ADAPTERS = 64
"""GGUF adapters kept loaded per context (least recently used go first)."""

Blend = tuple[tuple[str, float], ...]


def available() -> bool:
    """Whether llama-cpp-python is installed (it is built from source: an optional part)."""
    import importlib.util
    return importlib.util.find_spec("llama_cpp") is not None


class _Context:
    """One llama.cpp context of the model with its loaded adapters, its active blend and what it last read."""

    def __init__(self, gguf_path: Path, context_window: int, threads: int, seed: int):
        from llama_cpp import Llama

        self.llm = Llama(model_path=str(gguf_path), n_ctx=context_window, n_threads=threads,
                         n_threads_batch=threads, seed=seed, flash_attn=True, verbose=False)
        self.adapters: OrderedDict[str, ctypes.c_void_p] = OrderedDict()
        self.active: Blend = ()
        self.owner: str | None = None
        self.threads = threads

    def close(self) -> None:
        llm, self.llm = self.llm, None
        if llm is not None:
            llm.close()

    def cached(self, input_ids: list[int], blend: Blend, owner: str | None = None) -> int:
        """How many leading tokens of `input_ids` this context holds keys and values for, read for `owner` under
        `blend`."""
        if blend != self.active or owner != self.owner:
            return 0
        held = self.llm.input_ids[:self.llm.n_tokens]
        n = min(len(held), len(input_ids))
        mismatch = np.flatnonzero(held[:n] != np.asarray(input_ids[:n]))
        return int(mismatch[0]) if mismatch.size else n

    def forget(self, owners: set[str], adapters: set[str]) -> None:
        """Drop the keys, values and token ids this context holds if it read them for one of `owners`, and free the
        loaded `adapters` (file paths)."""
        import llama_cpp

        if self.owner in owners or any(k.split("\x1f")[0] in adapters for k, _ in self.active):
            self.claim((), None)
            self._clear()
        for key in [k for k in self.adapters if k.split("\x1f")[0] in adapters]:
            llama_cpp.llama_adapter_lora_free(self.adapters.pop(key))

    def set_threads(self, threads: int) -> None:
        import llama_cpp

        if threads != self.threads:
            llama_cpp.llama_set_n_threads(self.llm.ctx, threads, threads)
            self.threads = threads

    def _adapter(self, key: str, keep: set[str]):
        """The loaded adapter of `key` (a file's `_identity`), loading it first; the least recently used beyond
        MAX_ADAPTERS are freed, never one in `keep` (the active set, the one being set)."""
        import llama_cpp

        if key in self.adapters:
            self.adapters.move_to_end(key)
            return self.adapters[key]
        path = key.split("\x1f")[0]
        handle = llama_cpp.llama_adapter_lora_init(self.llm.model, path.encode())
        if not handle:
            name = Path(path)
            raise ModelUnavailable(f"llama.cpp could not load the adapter {name.parent.name}/{name.name}.")
        self.adapters[key] = handle
        for stale in [k for k in self.adapters if k not in keep][:max(0, len(self.adapters) - MAX_ADAPTERS)]:
            llama_cpp.llama_adapter_lora_free(self.adapters.pop(stale))
        return handle

    def claim(self, blend: Blend, owner: str | None) -> None:
        """Decode next for `owner` with `blend` ((GGUF path, scale), …) active: a changed set or owner starts the
        context afresh."""
        import llama_cpp

        if owner != self.owner:
            self.owner = owner
            self._clear()
        if blend == self.active:
            return
        keep = {k for k, _ in self.active} | {k for k, _ in blend}
        handles = [self._adapter(k, keep) for k, _ in blend]
        array = (llama_cpp.llama_adapter_lora_p_ctypes * len(handles))(*handles) if handles else None
        scales = (ctypes.c_float * len(handles))(*(s for _, s in blend)) if handles else None
        llama_cpp.llama_set_adapters_lora(self.llm.ctx, array, len(handles), scales)
        self.active = blend
        self._clear()  # keys and values computed under the old blend must not be reused

    def _clear(self) -> None:
        """Forget what was read: the keys and values and the token ids (another profile's words)."""
        self.llm._ctx.kv_cache_clear()
        self.llm.input_ids.fill(0)
        self.llm.reset()


class LlamaCppDecoder:
    """The model at `gguf_path` in llama.cpp: `contexts` contexts of `context_window` tokens sharing `threads` CPU
    threads (one each while `training()` says a training job runs beside)."""

    name = "llamacpp"

    def __init__(self, gguf_path: Path, context_window: int, threads: int, seed: int = 0, contexts: int = 2,
                 training: Callable[[], bool] = lambda: False):
        if not available():
            raise ModelUnavailable("llama-cpp-python is not installed (make llamacpp builds it).")
        self.threads, self.training = max(1, threads), training
        self._free = [_Context(gguf_path, context_window, self.threads, seed) for _ in range(max(1, contexts))]
        self._all = list(self._free)
        self._busy = 0
        self._pending: dict[int, tuple[set[str], set[str]]] = {}  # id(busy context) → (owners, adapters) to forget
        self._changed = threading.Condition()
        atexit.register(self.close)  # (freed by the interpreter's own teardown, llama-cpp-python logs a TypeError)

    @property
    def contexts(self) -> int:
        return len(self._all)

    def close(self) -> None:
        """Free the adapters and the models (idempotent)."""
        for context in self._all:
            context.close()

    def forget(self, owner: str, adapters: list[Path]) -> None:
        """Drop the keys and values the contexts hold for `owner` and the `adapters` (GGUF files) they loaded: an
        erased profile's. A context decoding for it drops them when it finishes."""
        owners, paths = {owner}, {str(p) for p in adapters}
        with self._changed:
            for context in self._all:
                if context in self._free:
                    context.forget(owners, paths)
                else:  # (once, when it is handed back: a later version at the same path is not dropped again)
                    pending = self._pending.setdefault(id(context), (set(), set()))
                    pending[0].update(owners)
                    pending[1].update(paths)

    def _threads_each(self, training: bool) -> int:
        """Two OpenMP threads pay only on the process's main thread, alone and with no trainer beside (else they
        wait on each other: docs/benchmarks.md#model-speed); one otherwise."""
        if training or threading.current_thread() is not threading.main_thread():
            return 1
        return max(1, self.threads // max(1, self._busy))

    @contextmanager
    def _context(self, input_ids: list[int], blend: Blend, owner: str | None):
        """A free context, the one holding the longest part of `input_ids` read for `owner` under `blend` (else the
        least recently used), waiting for one when all decode."""
        with self._changed:
            self._changed.wait_for(lambda: self._free)
            best = max(range(len(self._free)), key=lambda i: (self._free[i].cached(input_ids, blend, owner), -i))
            context = self._free.pop(best)
            self._busy += 1
        try:
            context.claim(blend, owner)
            yield context
        finally:
            with self._changed:
                self._busy -= 1
                if id(context) in self._pending:
                    context.forget(*self._pending.pop(id(context)))
                self._free.append(context)
                self._changed.notify()

    def next_logits(self, input_ids: list[int], adapters: list[tuple[Path, float]]) -> np.ndarray:
        """The logits of the token after `input_ids` with `adapters` active (shape (vocabulary,))."""
        import llama_cpp

        with self._context(input_ids, _blend(adapters), None) as context:
            context.llm.reset()
            context.llm.eval(input_ids)
            last = llama_cpp.llama_get_logits_ith(context.llm.ctx, -1)
            return np.ctypeslib.as_array(last, shape=(context.llm.n_vocab(),)).copy()

    def generate(self, input_ids: list[int], settings: GenerationSettings, max_new_tokens: int,
                 adapters: list[tuple[Path, float]], on_token: Callable[[int], None],
                 should_stop: Callable[[], bool], seed: int | None = None, min_new_tokens: int = 0,
                 owner: str | None = None) -> bool:
        """Decode up to `max_new_tokens` after `input_ids`, calling `on_token` with each; True if the model ended
        the reply itself (an end-of-generation token), False at the budget or when `should_stop()`. Sampling draws
        from `seed`, else from a fresh one (Python's `random`): two replies to one prompt differ. `owner` (the
        profile) scopes what the context keeps for the next turn."""
        from llama_cpp import LogitsProcessorList, llama_vocab_is_eog

        training = self.training()
        blend = _blend(adapters)
        with self._context(input_ids, blend, owner) as context:
            llm = context.llm
            context.set_threads(self._threads_each(training))  # (for the prompt; re-planned at every token)
            llm.set_seed(random.getrandbits(31) if seed is None else seed)
            sampled = float(settings.temperature) > 0
            steps = llm.generate(  # (keeps the keys and values of the prompt's leading tokens the context holds)
                input_ids, temp=1.0 if sampled else 0.0, top_p=1.0, top_k=0, min_p=0.0, repeat_penalty=1.0,
                reset=True, logits_processor=LogitsProcessorList([_Step(
                    settings, len(input_ids), min_new_tokens, llm,
                    lambda: context.set_threads(self._threads_each(training)))]))
            vocab = llm._model.vocab
            for count, token in enumerate(steps):
                if llama_vocab_is_eog(vocab, token):
                    return True
                on_token(int(token))
                if count + 1 >= max_new_tokens or should_stop():
                    return False
        return False


def _blend(adapters: list[tuple[Path, float]]) -> Blend:
    """The active set's key: each file with its inode, modification time and size (a version number reused after a
    reset is another file at the same path: its weights, and what was read under them, must not pass for the old)."""
    return tuple((_identity(p), float(s)) for p, s in adapters if s != 0.0)


def _identity(path: Path) -> str:
    try:
        stat = os.stat(path)
    except OSError:
        return str(path)  # (llama.cpp then says it cannot load it)
    return f"{path}\x1f{stat.st_ino}\x1f{stat.st_mtime_ns}\x1f{stat.st_size}"


class _Step:
    """Called by llama-cpp-python before each token is sampled (the first of its sampler chain, which then only
    draws: greedy, or from the softmax at temperature 1): re-plans the threads (`plan`), applies the reply's repetition
    penalty, holds end-of-generation back before `min_new_tokens`, then temperature and top-p in transformers' order
    (llama.cpp's own chain cuts the nucleus before it applies the temperature)."""

    def __init__(self, settings: GenerationSettings, prompt_length: int, min_new_tokens: int, llm,
                 plan: Callable[[], None] = lambda: None):
        self.penalty = _ReplyRepetitionPenalty(settings.repetition_penalty, prompt_length)
        self.temperature, self.top_p = float(settings.temperature), float(settings.top_p)
        self.prompt_length, self.min_new_tokens, self.plan = prompt_length, min_new_tokens, plan
        from llama_cpp import llama_vocab_is_eog

        vocab = llm._model.vocab
        self.eog = [t for t in range(llm.n_vocab()) if llama_vocab_is_eog(vocab, t)] if min_new_tokens else []

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        self.plan()
        if self.penalty.active:
            scores = self.penalty(input_ids, scores)
        if len(input_ids) - self.prompt_length < self.min_new_tokens:
            scores[self.eog] = -np.inf
        if self.temperature > 0:
            scores = nucleus(scores / self.temperature, self.top_p)
        return scores


def nucleus(scores: np.ndarray, top_p: float) -> np.ndarray:
    """`scores` with every token outside the smallest set whose probability reaches `top_p` at -inf (transformers'
    `TopPLogitsWarper`: the tokens whose cumulative probability, from the least likely up, is at most 1 - top_p
    go; the most likely always stays)."""
    if top_p >= 1.0:
        return scores
    order = np.argsort(scores, kind="stable")
    probabilities = np.exp(scores[order] - scores[order][-1])
    cumulative = np.cumsum(probabilities / probabilities.sum())
    drop = cumulative <= 1.0 - top_p
    drop[-1] = False
    scores = scores.copy()
    scores[order[drop]] = -np.inf
    return scores


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
