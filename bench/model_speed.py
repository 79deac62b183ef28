"""Model speed on this machine: cold and warm load, time to first token and tokens/s of the embedded model.

    python -m bench.model_speed [--repeats 3] [--output bench/results/model_speed.json]

- cold load: GGUF → de-quantized fp32 → safetensors cache, in a fresh temporary cache folder;
- warm load: from that cache, in a new process (what a restart costs), and the load call alone;
- generation: a 100-token prompt and 128 new tokens, greedy, side by side in one run: Attune's streaming path
  as the app runs it (`generate` on the main thread, see assistant/executor.py), the same path with
  `generate` on a worker thread (what a plain threaded server gets), and a bare `model.generate`;
- with llama-cpp-python installed, also the llamacpp backend (the shipped Q4_1 GGUF) bare and with a blend of two
  random adapters (base + global + 0.5·personal), and both backends' time to first token at a 1,000-token prompt.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

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


def random_blend(loaded: LoadedModel, folder: Path) -> list[tuple[Path, float]]:
    """A global and a personal adapter of today's shape (rank 8, attention of the top two thirds), random weights,
    as GGUF LoRA files: the blend base + global + 0.5·personal for llama.cpp."""
    import copy

    from peft import get_peft_model_state_dict

    from adapters.gguf_lora import write_gguf_lora
    from adapters.lora import add_lora
    from assistant.config import LoraSettings

    blend = []
    for seed, scale in ((1, 1.0), (2, 0.5)):
        model = add_lora(copy.deepcopy(loaded.model), LoraSettings())
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.randn(p.shape, generator=generator) * 0.01)
        path = folder / f"adapter{seed}.gguf"
        write_gguf_lora(path, {"lora_alpha": LoraSettings().alpha}, get_peft_model_state_dict(model), model.config)
        blend.append((path, scale))
    return blend


def time_stream(loaded: LoadedModel, prompt: Prompt, executor: GenerationExecutor | None, decoder=None,
                gguf: list | None = None) -> dict:
    """Attune's streaming path. With an executor, as the app runs it: the consumer (Gradio's handler) on a
    worker thread, `generate` on this main thread. Without one: `generate` on a thread of its own. With a
    `decoder`, llama.cpp decodes (with the `gguf` adapters), as the app's llamacpp backend does."""
    settings = GenerationSettings(temperature=0, max_new_tokens=NEW_TOKENS)
    stream = ReplyStream(loaded, prompt, settings, min_new_tokens=NEW_TOKENS, executor=executor, decoder=decoder,
                         gguf_adapters=list(gguf or []))
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


def llamacpp_paths(loaded: LoadedModel, prompt: Prompt, folder: Path) -> dict:
    """The app's llamacpp backend, bare and with a blend, and torch and llama.cpp on a 1,000-token prompt (time to
    first token): side by side with the torch paths, when llama-cpp-python is installed."""
    from assistant.llamacpp import LlamaCppDecoder, available
    from assistant.model import embedded_gguf_path

    if not available():
        log.info("llama-cpp-python is not installed (make llamacpp): torch only.")
        return {}
    decoder = LlamaCppDecoder(embedded_gguf_path(), loaded.context_window, threads=torch.get_num_threads())
    blend, long = random_blend(loaded, folder), prompt_of_length(loaded, LONG_PROMPT_TOKENS)
    assert len(long.input_ids) == LONG_PROMPT_TOKENS, len(long.input_ids)
    return {"llamacpp": lambda: time_stream(loaded, prompt, GenerationExecutor(), decoder),
            "llamacpp_blend": lambda: time_stream(loaded, prompt, GenerationExecutor(), decoder, blend),
            "attune_main_thread_1000_prompt": lambda: time_stream(loaded, long, GenerationExecutor()),
            "llamacpp_1000_prompt": lambda: time_stream(loaded, long, GenerationExecutor(), decoder)}


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
    paths |= llamacpp_paths(loaded, prompt, Path(tempfile.mkdtemp(prefix="attune-bench-gguf-")))
    runs: dict[str, list[dict]] = {name: [] for name in paths}
    for _ in range(args.repeats):  # interleaved, so every path sees the same machine state
        for name, run in paths.items():
            runs[name].append(run())

    def med(name, key):
        return round(statistics.median(r[key] for r in runs[name]), 3)

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
        "medians": {name: {"tokens_per_s": med(name, "tokens_per_s"),
                           **({"ttft_s": med(name, "ttft_s")} if name != "bare_generate" else {})}
                    for name in paths},
        "ratio_vs_bare": {name: round(med(name, "tokens_per_s") / med("bare_generate", "tokens_per_s"), 3)
                          for name in paths if name != "bare_generate"},
        "ratio_vs_attune_torch": {name: round(med(name, "tokens_per_s") / med("attune_main_thread", "tokens_per_s"),
                                              3) for name in paths if name.startswith("llamacpp")},
        "runs": runs,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    write_result(args.output, result, vars(args))
    m = result["medians"]
    log.info("cold load %.1f s | warm load %.2f s (new process: %.2f s with imports) | prompt %d tokens, %d new",
             cold, warm_process["load_s"], warm_process["process_total_s"], len(prompt.input_ids), NEW_TOKENS)
    for name in paths:
        log.info("  %-22s %6.1f tok/s  TTFT %s  ratio vs bare %s", name, m[name]["tokens_per_s"],
                 m[name].get("ttft_s", "-"), result["ratio_vs_bare"].get(name, 1.0))
    log.info("-> %s", args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
