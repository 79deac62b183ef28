"""Streaming generation of one reply or several candidates: in one batched `generate` call (torch), or one
llama.cpp context per candidate (assistant/llamacpp.py).

`generate` runs in a worker thread and hands each step's tokens (one per candidate) to a queue; the caller's
iterator decodes them and yields the visible text of every candidate. Each call owns its streamer, queue and
cancel flag, so concurrent requests share only the read-only model.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from transformers import LogitsProcessorList, RepetitionPenaltyLogitsProcessor, StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from assistant.config import GenerationSettings
from assistant.executor import GenerationExecutor
from assistant.llamacpp import LlamaCppDecoder
from assistant.model import LoadedModel
from assistant.prompts import Prompt
from assistant.remote import OpenAIDecoder

log = logging.getLogger(__name__)


class _ExpectedOverride(logging.Filter):
    """`sampling_kwargs` replaces transformers' repetition penalty by its own on purpose (see there): not a warning."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "RepetitionPenaltyLogitsProcessor" not in record.getMessage()


logging.getLogger("transformers.generation.utils").addFilter(_ExpectedOverride())

_END = object()


INCOMPLETE = "\ufffd"
"""What a byte-level tokenizer decodes the bytes of an unfinished UTF-8 character to."""


def visible_text(text: str, stop_strings: tuple[str, ...]) -> tuple[str, bool]:
    """Cut `text` at the first stop string; otherwise hold back a tail that could start one, and a character
    whose bytes have not all arrived (decoding a token that ends inside a multi-byte character, e.g. half of an
    emoji, gives U+FFFD; the next token completes it, and a reply cut at its token budget drops it).

    Returns (text safe to show, whether a stop string was reached).
    """
    cut = min((i for i in (text.find(s) for s in stop_strings) if i >= 0), default=-1)
    if cut >= 0:
        return text[:cut].rstrip(INCOMPLETE), True
    text = text.rstrip(INCOMPLETE)
    hold = 0
    for stop in stop_strings:
        for n in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:n]):
                hold = max(hold, n)
                break
    return text[: len(text) - hold], False


def left_padded(rows: list[list[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) of prompts of different lengths in one batch, padded on the left so every
    row's next token comes right after its own prompt."""
    width = max(len(r) for r in rows)
    input_ids = torch.tensor([[pad_token_id] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return input_ids, mask


def sampling_kwargs(temperature: float, top_p: float, repetition_penalty: float = 1.0, prompt_width: int = 0) -> dict:
    """`generate` arguments for nucleus sampling at `temperature`, or greedy decoding at 0; with a
    `repetition_penalty` above 1 on the tokens of the reply only (the first `prompt_width` tokens, the left-padded
    prompt, are not penalised: a reply should use the words of the question)."""
    if temperature > 0:
        kwargs = dict(do_sample=True, temperature=float(temperature), top_p=float(top_p), top_k=0)
    else:
        kwargs = dict(do_sample=False, temperature=None, top_p=None, top_k=None)
    if repetition_penalty != 1.0:
        # Passed both ways so the custom processor takes the built-in one's place, before temperature and top-p.
        kwargs.update(repetition_penalty=float(repetition_penalty), logits_processor=LogitsProcessorList(
            [RepetitionPenaltyLogitsProcessor(float(repetition_penalty), prompt_ignore_length=int(prompt_width))]))
    return kwargs


class _QueueStreamer(BaseStreamer):
    """Receives (batch,) token tensors from `generate` and forwards them as lists; skips the prompt."""

    def __init__(self, sink: queue.Queue):
        self.sink = sink
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        self.sink.put(value.reshape(-1).tolist())

    def end(self) -> None:
        self.sink.put(_END)


class _Cancelled(StoppingCriteria):
    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs):
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


@dataclass
class ReplyStream:
    """Iterate to get, after each step, the visible text of every candidate. Stats fill in as it runs."""

    loaded: LoadedModel
    prompt: Prompt
    settings: GenerationSettings
    num_candidates: int = 1
    """Candidates sampled from `prompt` in one batch (compare mode: 2)."""
    candidate_prompts: tuple[Prompt, ...] = ()
    """Instead: one candidate per prompt, in one left-padded batch (compare mode with an exploration probe).
    Overrides `num_candidates`; `prompt` stays the one the reply is recorded against."""
    min_temperature: float = 0.0
    min_new_tokens: int = 0
    """Suppress end-of-sequence before this many tokens (benchmarks use it for fixed-length runs)."""
    executor: GenerationExecutor | None = None
    """Where `generate` runs; None: a thread of its own."""
    activate: Callable[[], AbstractContextManager] | None = None
    """Entered around `generate` on the thread that runs it (the adapter blend of this request)."""
    stop: threading.Event | None = None
    """The person's Stop: once set, generation ends after the current token and the stream finishes normally with
    what was written (`stopped` in `stats`)."""
    decoder: LlamaCppDecoder | OpenAIDecoder | None = None
    """Decode with llama.cpp or on a server instead, with `decoder_adapters` (`activate` is then not used)."""
    decoder_adapters: list[tuple[Path, float]] = field(default_factory=list)
    """The blend as `decoder` takes it: (GGUF LoRA file, scale) for llama.cpp; (merged adapter folder, 1) for a
    server."""
    owner: str | None = None
    """The profile the reply is for: `decoder` keeps what it read for that profile's next turn only."""
    texts: list[str] = field(default_factory=list)
    new_tokens: list[int] = field(default_factory=list)
    ended: list[bool] = field(default_factory=list)
    """Per candidate: it ended by itself (end-of-sequence or a stop string), not at the token budget."""
    seconds_to_first_token: float | None = None
    seconds: float = 0.0
    finished: bool = False

    def __post_init__(self):
        if self.candidate_prompts:
            self.num_candidates = len(self.candidate_prompts)

    def _generate_kwargs(self, sink: queue.Queue, cancel: threading.Event) -> dict:
        tokenizer = self.loaded.tokenizer
        temperature = max(float(self.settings.temperature), self.min_temperature)
        prompts = self.candidate_prompts or (self.prompt,)
        input_ids, attention_mask = left_padded([p.input_ids for p in prompts], tokenizer.pad_token_id)
        kwargs = dict(
            input_ids=input_ids,
            attention_mask=attention_mask,
            max_new_tokens=min(p.max_new_tokens for p in prompts),
            min_new_tokens=self.min_new_tokens or None,
            num_return_sequences=1 if self.candidate_prompts else self.num_candidates,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            streamer=_QueueStreamer(sink),
            stopping_criteria=StoppingCriteriaList([_Cancelled(cancel)] + ([_Cancelled(self.stop)] if self.stop else [])),
        )
        kwargs.update(sampling_kwargs(temperature, self.settings.top_p, self.settings.repetition_penalty,
                                      input_ids.shape[1]))
        if self.prompt.stop_strings:
            kwargs.update(stop_strings=list(self.prompt.stop_strings), tokenizer=tokenizer)
        return kwargs

    def _produce(self, kwargs: dict, sink: queue.Queue, cancel: threading.Event) -> None:
        """Generate into `sink`, on the thread that runs it: llama.cpp when it decodes this reply, else torch with
        the blend active."""
        if self.decoder is not None:
            self._decode(sink, cancel)
            return
        with torch.inference_mode(), (self.activate() if self.activate else nullcontext()):
            self.loaded.model.generate(**kwargs)

    def _decode(self, sink: queue.Queue, cancel: threading.Event) -> None:
        """The decoder's path (llama.cpp, a server): every candidate decoded at once (the first on this thread), each
        token into `sink` as {candidate: token}, the tokenizer's end-of-sequence when the model ended a candidate
        itself, then the end of the stream."""
        settings = replace(self.settings, temperature=max(float(self.settings.temperature), self.min_temperature))
        prompts = self.candidate_prompts or (self.prompt,) * self.num_candidates
        budget = min(p.max_new_tokens for p in prompts)
        failure: list[BaseException] = []

        def candidate(row: int, prompt: Prompt) -> None:
            try:
                if self.decoder.generate(prompt.input_ids, settings, budget, self.decoder_adapters,
                                         lambda token: sink.put({row: token}),
                                         lambda: cancel.is_set() or self._done[row] or bool(
                                             self.stop and self.stop.is_set()),
                                         min_new_tokens=self.min_new_tokens, owner=self.owner):
                    sink.put({row: self.loaded.tokenizer.eos_token_id})
            except BaseException as exc:  # raised on the stream's thread below
                failure.append(exc)
                cancel.set()

        others = [threading.Thread(target=candidate, args=(row, p), name=f"candidate-{row}", daemon=True)
                  for row, p in enumerate(prompts) if row]
        try:
            for thread in others:
                thread.start()
            candidate(0, prompts[0])
            for thread in others:
                thread.join()
        finally:
            sink.put(_END)
        if failure:
            raise failure[0]

    def __iter__(self) -> Iterator[list[str]]:
        sink: queue.Queue = queue.Queue()
        cancel = threading.Event()
        failure: list[BaseException] = []
        kwargs = self._generate_kwargs(sink, cancel) if self.decoder is None else {}

        finished = threading.Event()

        def run():
            try:
                self._produce(kwargs, sink, cancel)
            except BaseException as exc:  # surfaced in the caller's thread below
                failure.append(exc)
                sink.put(_END)
            finally:
                finished.set()

        n = self.num_candidates
        tokens: list[list[int]] = [[] for _ in range(n)]
        done = self._done = [False] * n  # (read by `_decode`: a finished candidate's decoder stops)
        self.ended = [False] * n
        self.texts = [""] * n
        eos = self.loaded.tokenizer.eos_token_id
        start = time.perf_counter()
        if self.executor is None:
            threading.Thread(target=run, name="generate", daemon=True).start()
        else:
            self.executor.submit(run)
        try:
            while True:
                step = sink.get()
                if step is _END:
                    break
                if self.seconds_to_first_token is None:
                    self.seconds_to_first_token = time.perf_counter() - start
                for row, token in (step.items() if isinstance(step, dict) else enumerate(step[:n])):
                    if done[row]:
                        continue
                    if token == eos:
                        done[row] = self.ended[row] = True
                        continue
                    tokens[row].append(token)
                    text = self.loaded.tokenizer.decode(tokens[row], skip_special_tokens=True)
                    self.texts[row], stopped = visible_text(text, self.prompt.stop_strings)
                    done[row] = self.ended[row] = stopped
                if all(done):
                    cancel.set()
                yield list(self.texts)
            if failure:
                raise failure[0]
            self.finished = True
        finally:
            cancel.set()  # also when the consumer walks away mid-stream
            finished.wait()
            self.seconds = time.perf_counter() - start
            self.new_tokens = [len(t) for t in tokens]
            self.texts = [t.strip() for t in self.texts]

    def stats(self) -> dict:
        return {
            "new_tokens": self.new_tokens,
            "ended": self.ended,
            "seconds": round(self.seconds, 3),
            "seconds_to_first_token": round(self.seconds_to_first_token or 0.0, 3),
            "interrupted": not self.finished,
            "stopped": bool(self.stop and self.stop.is_set()),
            "backend": self.decoder.name if self.decoder is not None else "torch",
        }


def generate_texts(loaded: LoadedModel, prompt: Prompt, settings: GenerationSettings, num_candidates: int = 1,
                   min_temperature: float = 0.0) -> list[str]:
    """Run a stream to the end and return the final texts."""
    stream = ReplyStream(loaded, prompt, settings, num_candidates=num_candidates, min_temperature=min_temperature)
    for _ in stream:
        pass
    return stream.texts
