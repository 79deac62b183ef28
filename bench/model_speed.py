"""Model speed on this machine: cold and warm load, time to first token and tokens/s of the embedded model.

    python -m bench.model_speed [--repeats 3] [--output bench/results/model_speed.json]

- cold load: GGUF → de-quantized fp32 → safetensors cache, in a fresh temporary cache folder;
- warm load: from that cache, in a new process (what a restart costs), and the load call alone;
- generation: a 100-token prompt and 128 new tokens, greedy, side by side in one run: Attune's streaming path
  as the app runs it (`generate` on the main thread, see assistant/executor.py), the same path with
  `generate` on a worker thread (what a plain threaded server gets), and a bare `model.generate`;
- with llama-cpp-python installed, also the llamacpp backend (the shipped Q4_1 GGUF) bare and with a blend of two
  random adapters (base + global + 0.5·personal); both backends' time to first token at a 1,000-token prompt, read
  from scratch and as the next turn of a conversation the context holds (all but the last 40 tokens); two profiles
  with blends of their own at once against one after the other; replies back to back while a trainer runs beside
  (Attune's DPO steps on the embedded model, one thread at nice 10, as the app starts its worker beside llama.cpp),
  with llama.cpp's thread plan (one thread while a job trains) and without it (two), and the trainer's steps/s; the
  resident memory the decoder's contexts add.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import psutil

import torch

from assistant.config import GenerationSettings, ModelConfig
from assistant.executor import GenerationExecutor
from assistant.generation import ReplyStream
from assistant.model import LoadedModel, load_model
from assistant.prompts import Prompt, build_prompt
from bench.provenance import machine, write_result

log = logging.getLogger("bench.model_speed")

PROMPT_TOKENS = 100
LONG_PROMPT_TOKENS = 1000
NEW_TOKENS = 128
WINDOW_S = 15.0
"""Seconds each path serves back to back beside the trainer."""
RESULTS = Path(__file__).parent / "results"


def prompt_of_length(loaded: LoadedModel, n_tokens: int) -> Prompt:
    """A chat prompt of exactly `n_tokens` tokens (template included)."""
    words = ("Tell me, in a long and detailed answer, about the history of bread making in Europe, "
             "the grains people used, and how ovens changed over the centuries. ") * 40  # (≈ 1,400 tokens)
    ids = loaded.tokenizer(words, add_special_tokens=False)["input_ids"]
    lo, hi = 1, len(ids)
    while lo < hi:  # longest content whose rendered prompt fits n_tokens
        mid = (lo + hi + 1) // 2
        text = loaded.tokenizer.decode(ids[:mid])
        if len(build_prompt(loaded, "", [{"role": "user", "content": text}], NEW_TOKENS).input_ids) <= n_tokens:
            lo = mid
        else:
            hi = mid - 1
    return build_prompt(loaded, "", [{"role": "user", "content": loaded.tokenizer.decode(ids[:lo])}], NEW_TOKENS)


def warm_load_in_new_process(cache: Path) -> dict:
    code = (
        "import time; t0 = time.perf_counter()\n"
        "from assistant.config import ModelConfig\nfrom assistant.model import load_model\n"
        "t1 = time.perf_counter()\n"
        f"load_model(ModelConfig(model='embedded'), __import__('pathlib').Path({str(cache)!r}))\n"
        "t2 = time.perf_counter(); print(t1 - t0, t2 - t1, t2 - t0)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parent.parent).stdout.split()
    imports, load, total = map(float, out[-3:])
    return {"imports_s": round(imports, 2), "load_s": round(load, 2), "process_total_s": round(total, 2)}


def random_blend(loaded: LoadedModel, folder: Path, seeds: tuple[int, int]) -> list[tuple[Path, float]]:
    """A global and a personal adapter of today's shape (rank 8, attention of the top two thirds), random weights
    drawn from `seeds`, as GGUF LoRA files: the blend base + global + 0.5·personal for llama.cpp."""
    import copy

    from peft import get_peft_model_state_dict

    from adapters.gguf_lora import write_gguf_lora
    from adapters.lora import add_lora
    from assistant.config import LoraSettings

    blend = []
    for seed, scale in zip(seeds, (1.0, 0.5)):
        path = folder / f"adapter{seed}.gguf"
        blend.append((path, scale))
        if path.exists():
            continue
        model = add_lora(copy.deepcopy(loaded.model), LoraSettings())
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.randn(p.shape, generator=generator) * 0.01)
        write_gguf_lora(path, {"lora_alpha": LoraSettings().alpha}, get_peft_model_state_dict(model), model.config)
    return blend


def time_stream(loaded: LoadedModel, prompt: Prompt, executor: GenerationExecutor | None, decoder=None,
                gguf: list | None = None, owner: str | None = None) -> dict:
    """Attune's streaming path. With an executor, as the app runs it: the consumer (Gradio's handler) on a
    worker thread, `generate` on this main thread. Without one: `generate` on a thread of its own. With a
    `decoder`, llama.cpp decodes (with the `gguf` adapters), as the app's llamacpp backend does, for `owner` (a
    fresh one by default: nothing read before is reused)."""
    settings = GenerationSettings(temperature=0, max_new_tokens=NEW_TOKENS)
    stream = ReplyStream(loaded, prompt, settings, min_new_tokens=NEW_TOKENS, executor=executor, decoder=decoder,
                         decoder_adapters=list(gguf or []), owner=owner or uuid.uuid4().hex)
    if executor is None:
        list(stream)
    else:
        consumer = threading.Thread(target=lambda: list(stream))
        threading.Timer(0.05, consumer.start).start()  # once this thread serves
        executor.serve_forever(should_stop=lambda: consumer.ident is not None and not consumer.is_alive(),
                               poll_seconds=0.01)
    tokens = stream.new_tokens[0]
    return {"ttft_s": stream.seconds_to_first_token, "total_s": stream.seconds, "new_tokens": tokens,
            "tokens_per_s": tokens / stream.seconds}


def time_bare(loaded: LoadedModel, prompt: Prompt) -> dict:
    ids = torch.tensor([prompt.input_ids])
    start = time.perf_counter()
    with torch.inference_mode():
        out = loaded.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS,
                                    min_new_tokens=NEW_TOKENS, do_sample=False,
                                    pad_token_id=loaded.tokenizer.pad_token_id)
    seconds = time.perf_counter() - start
    tokens = out.shape[1] - ids.shape[1]
    return {"total_s": seconds, "new_tokens": tokens, "tokens_per_s": tokens / seconds}


def llamacpp_paths(loaded: LoadedModel, prompt: Prompt, folder: Path) -> tuple[dict, dict]:
    """The app's llamacpp backend (two contexts, as it serves), bare and with a blend, two profiles at once, and
    torch and llama.cpp on a 1,000-token prompt (time to first token), side by side with the torch paths, when
    llama-cpp-python is installed; and the memory its contexts take."""
    from assistant.llamacpp import LlamaCppDecoder, available
    from assistant.model import embedded_gguf_path

    if not available():
        log.info("llama-cpp-python is not installed (make llamacpp): torch only.")
        return {}, {}
    rss = psutil.Process().memory_info().rss
    decoder = LlamaCppDecoder(embedded_gguf_path(), loaded.context_window, threads=torch.get_num_threads())
    memory = {"llamacpp_contexts": decoder.contexts,
              "llamacpp_decoder_mib": round((psutil.Process().memory_info().rss - rss) / 2**20, 1),
              "torch_weights_mib": round(sum(p.numel() * p.element_size() for p in loaded.model.parameters()) / 2**20,
                                         1)}
    blend, other = random_blend(loaded, folder, (1, 2)), random_blend(loaded, folder, (1, 3))
    long = prompt_of_length(loaded, LONG_PROMPT_TOKENS)
    assert len(long.input_ids) == LONG_PROMPT_TOKENS, len(long.input_ids)

    def next_turn() -> dict:
        """The context holds the conversation but its last 40 tokens (the new message and the template's)."""
        decoder.generate(long.input_ids[:-40], GenerationSettings(temperature=0), 1, [], lambda t: None,
                         lambda: False, owner="conversation")
        return time_stream(loaded, long, GenerationExecutor(), decoder, owner="conversation")

    def two_profiles(at_once: bool) -> dict:
        runs = [lambda: time_stream(loaded, prompt, None, decoder, blend),
                lambda: time_stream(loaded, prompt, None, decoder, other)]
        start = time.perf_counter()
        if at_once:
            threads = [threading.Thread(target=run) for run in runs]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        else:
            for run in runs:
                run()
        seconds = time.perf_counter() - start
        return {"total_s": seconds, "new_tokens": 2 * NEW_TOKENS, "tokens_per_s": 2 * NEW_TOKENS / seconds}

    return {"llamacpp": lambda: time_stream(loaded, prompt, GenerationExecutor(), decoder),
            "llamacpp_blend": lambda: time_stream(loaded, prompt, GenerationExecutor(), decoder, blend),
            "llamacpp_two_profiles_one_after_the_other": lambda: two_profiles(False),
            "llamacpp_two_profiles_at_once": lambda: two_profiles(True),
            "attune_main_thread_1000_prompt": lambda: time_stream(loaded, long, GenerationExecutor()),
            "llamacpp_1000_prompt": lambda: time_stream(loaded, long, GenerationExecutor(), decoder),
            "llamacpp_1000_prompt_next_turn": next_turn}, memory | {"decoder": decoder, "blend": blend}


def train_forever(cache: Path, steps: Path) -> None:
    """The trainer beside the replies: Attune's DPO steps (4 pairs a step) on the embedded model at nice 10, as the
    worker runs, a line appended to `steps` after each (run in a process of its own until killed)."""
    from dataclasses import replace

    from adapters.data import Examples
    from adapters.lora import add_lora
    from adapters.training import train_adapter
    from assistant.config import LearningConfig
    from bench.learning_speed import pairs

    os.nice(10)
    learning = LearningConfig()
    loaded = load_model(ModelConfig(), Path(cache))
    model = add_lora(loaded.model, learning.lora)
    train, data = replace(learning.train, steps=1, batch_size=4), Examples(pairs(4), [])
    with open(steps, "a") as out:
        while True:
            train_adapter(model, loaded, data, train)
            out.write("step\n")
            out.flush()


def while_training(loaded: LoadedModel, prompt: Prompt, cache: Path, llama: dict) -> dict:
    """Replies back to back for `WINDOW_S` per path while a trainer runs beside on one thread at nice 10 (as the app
    starts its worker when llama.cpp serves: app.worker_plan): tokens/s of torch and of llama.cpp with its thread
    plan (one thread while a job trains) and without it (two), and the trainer's steps per second meanwhile."""
    paths = {"attune_main_thread": lambda: time_stream(loaded, prompt, GenerationExecutor())}
    if llama:
        decoder, blend = llama["decoder"], llama["blend"]

        def planned(training: bool):
            decoder.training = lambda: training
            try:
                return time_stream(loaded, prompt, GenerationExecutor(), decoder, blend)
            finally:
                decoder.training = lambda: False

        paths |= {"llamacpp_blend_one_thread": lambda: planned(True),
                  "llamacpp_blend_two_threads": lambda: planned(False)}
    with tempfile.TemporaryDirectory(prefix="attune-bench-trainer-") as tmp:
        steps = Path(tmp) / "steps"
        steps.touch()
        code = f"from bench.model_speed import train_forever; train_forever({str(cache)!r}, {str(steps)!r})"
        trainer = subprocess.Popen([sys.executable, "-c", code], cwd=Path(__file__).resolve().parent.parent,
                                   env={**os.environ, "OMP_NUM_THREADS": "1"})
        try:
            while not steps.read_text():  # the trainer has loaded and made its first step
                if trainer.poll() is not None:
                    raise RuntimeError(f"the trainer exited ({trainer.returncode})")
                time.sleep(0.5)
            result = {}
            for name, run in [("trainer_alone", None), *paths.items()]:
                before, start, rows = steps.read_text().count("\n"), time.perf_counter(), []
                if run is None:
                    time.sleep(WINDOW_S)
                while run is not None and time.perf_counter() - start < WINDOW_S:
                    rows.append(run())
                seconds = time.perf_counter() - start
                result[name] = {"trainer_steps_per_s": round((steps.read_text().count("\n") - before) / seconds, 3)}
                if rows:
                    result[name]["tokens_per_s"] = round(statistics.median(r["tokens_per_s"] for r in rows), 3)
                    result[name]["replies"] = len(rows)
        finally:
            trainer.kill()
            trainer.wait()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", type=Path, default=RESULTS / "model_speed.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    with tempfile.TemporaryDirectory(prefix="attune-bench-") as tmp:
        cache = Path(tmp)
        start = time.perf_counter()
        loaded = load_model(ModelConfig(model="embedded"), cache)
        cold = time.perf_counter() - start
        warm_process = warm_load_in_new_process(cache)
        start = time.perf_counter()
        load_model(ModelConfig(model="embedded"), cache)
        warm_call = time.perf_counter() - start

        prompt = prompt_of_length(loaded, PROMPT_TOKENS)
        time_bare(loaded, prompt)  # warm-up: first call allocates
        paths = {"attune_main_thread": lambda: time_stream(loaded, prompt, GenerationExecutor()),
                 "attune_worker_thread": lambda: time_stream(loaded, prompt, None),
                 "bare_generate": lambda: time_bare(loaded, prompt)}
        llama_paths, llama = llamacpp_paths(loaded, prompt, Path(tmp))
        paths |= llama_paths
        runs: dict[str, list[dict]] = {name: [] for name in paths}
        for _ in range(args.repeats):  # interleaved, so every path sees the same machine state
            for name, run in paths.items():
                runs[name].append(run())
        training = while_training(loaded, prompt, cache, llama)

    def med(name, key):
        return round(statistics.median(r[key] for r in runs[name]), 3)

    medians = {name: {"tokens_per_s": med(name, "tokens_per_s"),
                      **({"ttft_s": med(name, "ttft_s")} if "ttft_s" in runs[name][0] else {})} for name in paths}
    result = {
        "benchmark": "model_speed",
        "model": loaded.model_id,
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d"),
        "cold_load_s": round(cold, 2),
        "warm_load_new_process": warm_process,
        "warm_load_call_s": round(warm_call, 2),
        "prompt_tokens": len(prompt.input_ids),
        "new_tokens": NEW_TOKENS,
        "repeats": args.repeats,
        "medians": medians,
        "ratio_vs_bare": {name: round(med(name, "tokens_per_s") / med("bare_generate", "tokens_per_s"), 3)
                          for name in paths if name != "bare_generate"},
        "targets": targets(medians, training) if llama else {},
        "memory": {k: v for k, v in llama.items() if k not in ("decoder", "blend")},
        "while_training": training,
        "runs": runs,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    write_result(args.output, result, vars(args))
    log.info("cold load %.1f s | warm load %.2f s (new process: %.2f s with imports) | prompt %d tokens, %d new",
             cold, warm_process["load_s"], warm_process["process_total_s"], len(prompt.input_ids), NEW_TOKENS)
    for name in paths:
        log.info("  %-42s %6.1f tok/s  TTFT %s", name, medians[name]["tokens_per_s"], medians[name].get("ttft_s", "-"))
    for name, row in training.items():
        log.info("  while training: %-26s %6.1f tok/s, trainer %.2f steps/s", name, row.get("tokens_per_s", 0),
                 row["trainer_steps_per_s"])
    for name, value in result["targets"].items():
        log.info("  %-42s %s", name, value)
    log.info("-> %s", args.output)
    return 0


def targets(m: dict, training: dict) -> dict:
    """Issue 24's ratios, each measured side by side in this run."""
    return {
        "blend_vs_torch": round(m["llamacpp_blend"]["tokens_per_s"] / m["attune_main_thread"]["tokens_per_s"], 3),
        "blend_vs_bare_llamacpp": round(m["llamacpp_blend"]["tokens_per_s"] / m["llamacpp"]["tokens_per_s"], 3),
        "ttft_1000_vs_torch": round(m["llamacpp_1000_prompt"]["ttft_s"]
                                    / m["attune_main_thread_1000_prompt"]["ttft_s"], 3),
        "ttft_1000_next_turn_vs_torch": round(m["llamacpp_1000_prompt_next_turn"]["ttft_s"]
                                              / m["attune_main_thread_1000_prompt"]["ttft_s"], 3),
        "two_profiles_at_once_vs_one_reply_alone": round(
            m["llamacpp_two_profiles_at_once"]["tokens_per_s"] / m["llamacpp_blend"]["tokens_per_s"], 3),
        "two_profiles_at_once_vs_one_after_the_other": round(
            m["llamacpp_two_profiles_at_once"]["tokens_per_s"]
            / m["llamacpp_two_profiles_one_after_the_other"]["tokens_per_s"], 3),
        "while_training_blend_vs_torch": round(training["llamacpp_blend_one_thread"]["tokens_per_s"]
                                               / training["attune_main_thread"]["tokens_per_s"], 3),
    }


if __name__ == "__main__":
    raise SystemExit(main())
