"""Online learning on this machine, each figure measured side by side in one run (embedded SmolLM2-135M).

    python -m bench.learning_speed [--rounds 3] [--profiles 10000] [--parts training,latency,serving]
                                   [--set KEY=VALUE ...] [--output bench/results/learning_speed.json]

1. training compute for 8 pairs, 2 epochs of 4-pair steps: Attune's trainer vs TRL's DPOTrainer (same pairs,
   model, LoRA rank, steps, threads);
2. update latency: from the vote that completes 8 new pairs to the first token of the first reply served by
   the new version, with the real worker process started as app.py starts it;
3. tokens/s serving base + global + α·personal vs the bare base model;
4. profile switch latency (blend resolved and weights ready) with N profiles' adapters on disk, and resident
   memory as profiles are visited;
5. two profiles generating at once vs one after the other.

`--set` changes the learning settings (`LearningConfig`, e.g. `lora.top_layers=1.0`) of parts 1 and 2: the
trainer timed in 1 and the worker process of 2 (given the same `--set`). `--parts` runs a subset: `serving`
(3–5) needs `latency`, whose profile and adapters it serves.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import psutil
import torch

from adapters.blend import AdapterServer
from adapters.data import Examples, PairExample
from adapters.lora import adapted_layers, add_lora, native_bf16
from adapters.registry import GLOBAL, AdapterRegistry, personal_adapter
from adapters.training import train_adapter
from adapters.worker import ADAPTERS_DIR
from assistant.backend import choose_decoder
from assistant.config import AppConfig, GenerationSettings, LearningConfig, ModelConfig
from assistant.executor import GenerationExecutor
from assistant.generation import ReplyStream
from assistant.model import load_model
from assistant.overrides import with_overrides
from assistant.prompts import build_prompt
from assistant.service import ChatService
from bench.provenance import machine, write_result
from storage.db import DB_FILENAME
from storage.store import Store

log = logging.getLogger("bench.learning_speed")
REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / ".cache" / "models"
RESULTS = Path(__file__).parent / "results"
TOPICS = ["a fruit", "a colour", "an animal", "a city", "a sport", "a song", "a tree", "a river"]


def pairs(n: int, offset: int = 0) -> list[PairExample]:
    return [PairExample([{"role": "user", "content": f"Name {TOPICS[i % 8]}, please (request {i + offset})."}],
                        chosen=f"Sure! Here is one: number {i + offset}. 🙂",
                        rejected=f"A majestic and mystical answer {i + offset}. I am no longer here to provide it. "
                                 "You can find me online, I'm here to assist you in your quest.",
                        feedback_id=f"f{i + offset}", profile_id="u") for i in range(n)]


def med(values):
    return round(statistics.median(values), 3)


# ---- 1. training compute ----------------------------------------------------------------------------------

def training_compute(rounds: int, learning: LearningConfig) -> dict:
    from datasets import Dataset
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer

    data = pairs(8)
    ours, trl_default, trl_no_ckpt = [], [], []
    lora = learning.lora
    train = replace(learning.train, steps=4, batch_size=4)
    for _ in range(rounds):
        loaded = load_model(ModelConfig(), CACHE)
        model = add_lora(loaded.model, lora)
        adapted = len(adapted_layers(lora, loaded.model))
        start = time.perf_counter()
        train_adapter(model, loaded, Examples(data, []), train)
        ours.append(time.perf_counter() - start)
        for checkpointing, out in ((None, trl_default), (False, trl_no_ckpt)):
            loaded = load_model(ModelConfig(), CACHE)
            rows = [{"prompt": p.prompt, "chosen": [{"role": "assistant", "content": p.chosen}],
                     "rejected": [{"role": "assistant", "content": p.rejected}]} for p in data]
            extra = {} if checkpointing is None else {"gradient_checkpointing": checkpointing}
            args = DPOConfig(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=4, num_train_epochs=2,
                             learning_rate=5e-4, beta=0.1, max_length=384, report_to=[], save_strategy="no",
                             use_cpu=True, disable_tqdm=True, logging_steps=100, **extra)
            trainer = DPOTrainer(model=loaded.model, args=args, train_dataset=Dataset.from_list(rows),
                                 processing_class=loaded.tokenizer,
                                 peft_config=LoraConfig(r=lora.rank, lora_alpha=lora.alpha, task_type="CAUSAL_LM",
                                                        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
            start = time.perf_counter()
            result = trainer.train()
            out.append(time.perf_counter() - start)
            assert result.global_step == 4
    return {
        "pairs": 8, "steps": 4, "batch_size": 4, "threads": torch.get_num_threads(),
        "attune_s": med(ours), "trl_dpotrainer_default_s": med(trl_default),
        "trl_dpotrainer_no_gradient_checkpointing_s": med(trl_no_ckpt),
        "ratio_vs_trl_default": round(med(ours) / med(trl_default), 3),
        "ratio_vs_trl_fastest": round(med(ours) / min(med(trl_default), med(trl_no_ckpt)), 3),
        "attune_settings": f"bf16 autocast: {native_bf16() if train.bf16 is None else train.bf16}, "
                           f"LoRA r={lora.rank} on {adapted} of "
                           f"{loaded.model.config.num_hidden_layers} layers (the top ones), reference log-probs once, "
                           f"logits only at reply positions, prompts shared by both replies: {train.share_prompts}",
        "trl_settings": "DPOConfig defaults (fp32, LoRA r=8 on q/k/v/o of all layers), same steps and batch",
        "runs": {"attune": ours, "trl_default": trl_default, "trl_no_gradient_checkpointing": trl_no_ckpt},
    }


# ---- 2. update latency ------------------------------------------------------------------------------------

def _add_choices(service: ChatService, profile_id: str, n: int, offset: int, last_via_service: bool) -> None:
    store = service.store
    conv = service.new_conversation(profile_id)["id"]
    for i, p in enumerate(pairs(n, offset)):
        q = store.add_message(profile_id, conv, "user", p.prompt[0]["content"])
        pair = store.create_comparison(profile_id, conv, q.id, p.chosen, p.rejected, model_id="bench", settings={})
        if last_via_service and i == n - 1:
            return pair
        store.record_choice(profile_id, pair.id, "a")


def update_latency(home: Path, rounds: int, learning: LearningConfig, overrides: list[str],
                   backend: str = "torch") -> tuple[dict, ChatService]:
    config = AppConfig(data_dir=home, model=ModelConfig(cache_dir=CACHE, backend=backend))
    loaded = load_model(config.model, CACHE)
    store = Store(home / DB_FILENAME)
    registry = AdapterRegistry(home / ADAPTERS_DIR, store)
    learning = replace(learning, personal_every=8, global_every=10**9)
    decoder = choose_decoder(config.model, loaded, training=store.training_running)
    service = ChatService(store, loaded, config, adapters=AdapterServer(loaded, registry, store, learning.blend),
                          learning=learning, decoder=decoder)
    # The worker exactly as app.py starts it: at nice 10, its threads planned around this process's decoding.
    worker = subprocess.Popen([sys.executable, "-m", "adapters.worker", "--data-dir", str(home), "--model-cache",
                               str(CACHE), "--parent-pid", str(os.getpid()),
                               *(a for o in overrides for a in ("--set", o))], cwd=REPO, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    user = service.create_profile("Bench")["id"]
    service.set_alpha(user, 1.0)  # serve the personal adapter whatever its held-out score
    settings = GenerationSettings(temperature=0, max_new_tokens=16)
    rows = []
    try:
        time.sleep(8)  # the worker loads its model
        for r in range(rounds):
            last = _add_choices(service, user, 8, 100 * r, last_via_service=True)
            start = time.perf_counter()
            service.choose(user, last.id, "a")  # the vote that completes 8 new pairs: queues the update
            while service.adapters.blend_for(user).personal_version != r + 1:
                if worker.poll() is not None:
                    raise RuntimeError(f"the worker process exited ({worker.returncode})")
                time.sleep(0.05)
            published = time.perf_counter() - start
            updates = service.send(user, None, "Name a fruit, please.", settings)
            first_token = None
            for update in updates:
                if first_token is None and any(update.texts):
                    first_token = time.perf_counter() - start
            assert update.reply.adapter_versions["personal"] == f"v{r + 1:04d}"
            job = store.latest_job(personal_adapter(user))
            rows.append({"backend": update.reply.settings["backend"],
                         "published_s": round(published, 2), "first_token_of_new_version_s": round(first_token, 2),
                         "worker_job_s": round(_seconds(job["started_at"], job["finished_at"]), 2),
                         "worker_phases_s": json.loads(job["result"] or "{}").get("timings")})
            log.info("update round %d: new version served after %.1f s", r + 1, first_token)
    finally:
        worker.terminate()
        worker.wait(timeout=60)
    return {"new_pairs_per_update": 8, "backend": backend,
            "worker": "at nice 10, every core while the app is idle and one while it decodes, as app.py starts it",
            "worker_settings": overrides,
            "median_s": med([r["first_token_of_new_version_s"] for r in rows]), "rounds": rows}, service


def _seconds(a: str, b: str) -> float:
    from datetime import datetime

    return (datetime.fromisoformat(b) - datetime.fromisoformat(a)).total_seconds()


# ---- 3. serving speed with a blend ------------------------------------------------------------------------

def serving_speed(service: ChatService, rounds: int) -> dict:
    """Generate on the main thread (as the app does) with: the bare unwrapped base model; the served model
    with no adapter; the served model with global + 0.5·personal."""
    user = service.store.list_profiles()[0]["id"]
    registry = service.adapters.registry
    personal = registry.current(personal_adapter(user))
    if registry.current(GLOBAL) is None:  # a global adapter for the blend: the personal weights, republished
        from peft import PeftModel

        base = load_model(ModelConfig(), CACHE).model
        registry.publish(GLOBAL, None, PeftModel.from_pretrained(base, personal.folder), {}, "bench")
    service.set_alpha(user, 0.5)
    blend = service.adapters.blend_for(user)
    assert blend.global_version and blend.personal_version
    bare = load_model(ModelConfig(), CACHE)
    served = service.loaded
    prompt = build_prompt(served, "", [{"role": "user", "content": "Tell me about bread."}], 128)
    executor = GenerationExecutor()
    paths = {
        "bare_base": (bare, None),
        "served_no_adapter": (served, None),
        "served_global_plus_personal": (served, lambda: service.adapters.activate(blend)),
    }
    runs = {name: [] for name in paths}
    for _ in range(rounds):
        for name, (loaded, activate) in paths.items():
            stream = ReplyStream(loaded, prompt, GenerationSettings(temperature=0, max_new_tokens=128),
                                 min_new_tokens=128, executor=executor, activate=activate)
            consumer = threading.Thread(target=lambda s=stream: list(s))
            threading.Timer(0.05, consumer.start).start()
            executor.serve_forever(should_stop=lambda c=consumer: c.ident is not None and not c.is_alive(),
                                   poll_seconds=0.01)
            runs[name].append(stream.new_tokens[0] / stream.seconds)
    medians = {name: med(v) for name, v in runs.items()}
    all_layers = range(served.model.config.num_hidden_layers)
    blend_layers = service.adapters.registry.load_weights(personal)[0].get("layers_to_transform") or all_layers
    return {"tokens": 128, "tokens_per_s": medians,
            "blend_vs_bare_ratio": round(medians["served_global_plus_personal"] / medians["bare_base"], 3),
            "no_adapter_vs_bare_ratio": round(medians["served_no_adapter"] / medians["bare_base"], 3),
            "lora": f"global + personal on q/k/v/o of the top {len(blend_layers)} of {len(all_layers)} layers, "
                    "concatenated (their ranks added)",
            "runs": runs}


# ---- 4. profile switches with many adapters on disk -------------------------------------------------------

def profile_switch(service: ChatService, n_profiles: int, visits: int) -> dict:
    store, registry = service.store, service.adapters.registry
    template_user = store.list_profiles()[0]["id"]
    template = registry.current(personal_adapter(template_user))
    start = time.perf_counter()
    users = []
    for i in range(n_profiles):
        user = store.create_profile(f"p{i:05d}")["id"]
        rel = f"{personal_adapter(user)}/v0001"
        shutil.copytree(template.folder, registry.root / rel)
        store.publish_version(personal_adapter(user), user, 1, rel, None, template.manifest, "bench")
        store.set_alpha_override(user, 0.5)
        users.append(user)
    setup_s = time.perf_counter() - start
    disk_gb = sum(f.stat().st_size for f in registry.root.rglob("*") if f.is_file()) / 1e9
    process = psutil.Process()
    rng = random.Random(0)
    server = service.adapters
    rss_start = process.memory_info().rss
    timings, rss = [], []
    for i in range(visits):
        user = rng.choice(users)
        t = time.perf_counter()
        blend = server.blend_for(user)
        with server.activate(blend):
            pass
        timings.append((time.perf_counter() - t) * 1000)
        if i % max(1, visits // 10) == 0:
            rss.append(round((process.memory_info().rss - rss_start) / 2**20, 1))
    timings.sort()
    return {"profiles_on_disk": n_profiles, "adapters_on_disk_gb": round(disk_gb, 2), "setup_s": round(setup_s, 1),
            "visits": visits, "cache_size": server.config.cache_size,
            "switch_ms": {"p50": round(timings[len(timings) // 2], 2), "p95": round(timings[int(len(timings) * .95)], 2),
                          "max": round(timings[-1], 2)},
            "rss_growth_mib_every_tenth_of_visits": rss,
            "note": "files were just written, so most reads come from the page cache"}


# ---- 5. two profiles at once ------------------------------------------------------------------------------

def two_at_once(service: ChatService, rounds: int) -> dict:
    users = [u["id"] for u in service.store.list_profiles()[:2]]
    settings = GenerationSettings(temperature=0, max_new_tokens=64)
    executor = GenerationExecutor()
    service.executor = executor

    def reply(user):
        for update in service.send(user, None, "Tell me about bread.", settings):
            pass
        return update.texts[0]

    def serve_while(threads):
        starter = threading.Timer(0.05, lambda: [t.start() for t in threads])
        starter.start()
        executor.serve_forever(should_stop=lambda: starter.finished.is_set() and all(
            t.ident is not None and not t.is_alive() for t in threads), poll_seconds=0.01)

    sequential, concurrent = [], []
    for _ in range(rounds):
        start = time.perf_counter()
        serve_while([threading.Thread(target=lambda: [reply(u) for u in users])])
        sequential.append(time.perf_counter() - start)
        start = time.perf_counter()
        serve_while([threading.Thread(target=reply, args=(u,)) for u in users])
        concurrent.append(time.perf_counter() - start)
    service.executor = None
    return {"tokens_each": 64, "sequential_s": med(sequential), "concurrent_s": med(concurrent),
            "concurrent_vs_sequential": round(med(concurrent) / med(sequential), 3),
            "how": "concurrent: one reply generates on the main thread, the other on a thread of its own, "
                   "each with its own blend (thread-local LoRA weights)",
            "runs": {"sequential": sequential, "concurrent": concurrent}}


PARTS = ("training", "latency", "serving")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profiles", type=int, default=10_000)
    parser.add_argument("--visits", type=int, default=1_000)
    parser.add_argument("--parts", default=",".join(PARTS), help=f"a subset of {','.join(PARTS)}")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a LearningConfig setting for parts 1 and 2, e.g. lora.top_layers=1.0")
    parser.add_argument("--backend", default="torch", choices=("torch", "llamacpp"),
                        help="what decodes the replies of part 2 (parts 3-5 measure torch's blend)")
    parser.add_argument("--output", type=Path, default=RESULTS / "learning_speed.json")
    args = parser.parse_args(argv)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    try:
        learning = with_overrides(LearningConfig(), args.set)
    except (ValueError, TypeError) as exc:
        parser.exit(2, f"bad --set: {exc}\n")
    if not parts or set(parts) - set(PARTS) or ("serving" in parts and "latency" not in parts):
        parser.exit(2, f"--parts takes a subset of {','.join(PARTS)} (serving needs latency), got {args.parts!r}\n")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    began = time.perf_counter()
    result = {"benchmark": "learning_speed", "machine": machine(), "date": time.strftime("%Y-%m-%d"),
              "settings": args.set}
    if "training" in parts:
        log.info("1/5 training compute vs TRL DPOTrainer")
        result["training_compute"] = training_compute(args.rounds, learning)
        log.info("%s", {k: v for k, v in result["training_compute"].items() if k != "runs"})
    home = Path(tempfile.mkdtemp(prefix="attune-learning-bench-"))
    try:
        if "latency" in parts:
            log.info("2/5 update latency with the worker process")
            result["update_latency"], service = update_latency(home, args.rounds, learning, args.set, args.backend)
            log.info("%s", {k: v for k, v in result["update_latency"].items() if k != "rounds"})
        if "serving" in parts:
            log.info("3/5 serving speed with a blend")
            result["serving_speed"] = serving_speed(service, args.rounds)
            log.info("%s", {k: v for k, v in result["serving_speed"].items() if k != "runs"})
            log.info("5/5 two profiles at once")  # before 4/5, which adds thousands of profiles
            result["two_profiles_at_once"] = two_at_once(service, args.rounds)
            log.info("%s", {k: v for k, v in result["two_profiles_at_once"].items() if k != "runs"})
            log.info("4/5 profile switches with %d profiles' adapters on disk", args.profiles)
            result["profile_switch"] = profile_switch(service, args.profiles, args.visits)
            log.info("%s", result["profile_switch"])
    finally:
        shutil.rmtree(home, ignore_errors=True)
    result["seconds"] = round(time.perf_counter() - began, 1)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    write_result(args.output, result, vars(args))
    log.info("done in %.0f s -> %s", result["seconds"], args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
