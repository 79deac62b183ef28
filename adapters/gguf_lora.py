"""A PEFT LoRA adapter as a GGUF LoRA file, which llama.cpp loads beside the base model's GGUF
(`llama_adapter_lora_init`).

The layout follows llama.cpp's `convert_lora_to_gguf.py`: metadata `general.architecture` (the base's), `general.type
= "adapter"`, `adapter.type = "lora"`, `adapter.lora.alpha`; per adapted module two f32 tensors named after the base
weight, `blk.N.attn_q.weight.lora_a` (PEFT's `lora_A`, numpy shape (r, in)) and `….lora_b` (`lora_B`, (out, r)).
llama.cpp computes scale·B·(A·x) with scale = alpha / r, as PEFT does. The converter stores a LLaMA model's q and k
projections with their rows permuted for its RoPE layout (`LlamaModel.permute`); the permutation acts on output rows,
so for a LoRA pair it applies to B alone (`permute_rows`, shared with assistant/gguf_model.py).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from gguf import GGUFType, GGUFWriter, Keys

from assistant.gguf_model import permute_rows
from storage.errors import AdapterUnusable

logging.getLogger("gguf").setLevel(logging.WARNING)  # (it logs every file it writes, and its byte order, at INFO)

SUPPORTED = {"llama"}
"""`config.model_type` of the base models whose adapters this writes (the embedded SmolLM2 is one)."""
MODULES = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
           "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
           "mlp.down_proj": "ffn_down"}
"""HF LLaMA module (after `model.layers.N.`) → llama.cpp tensor name (after `blk.N.`)."""


def gguf_name(peft_key: str) -> tuple[str, str]:
    """(llama.cpp tensor name, HF module) of a PEFT tensor key: `base_model.model.model.layers.3.self_attn.q_proj.
    lora_A.weight` → (`blk.3.attn_q.weight.lora_a`, "self_attn.q_proj")."""
    path, _, rest = peft_key.removeprefix("base_model.model.").rpartition(".lora_")
    suffix = "lora_a" if rest.startswith("A") else "lora_b"
    parts = path.split(".")
    if len(parts) < 5 or parts[:2] != ["model", "layers"] or ".".join(parts[3:]) not in MODULES:
        raise AdapterUnusable(f"A LoRA tensor llama.cpp cannot place: {peft_key}.")
    module = ".".join(parts[3:])
    return f"blk.{int(parts[2])}.{MODULES[module]}.weight.{suffix}", module


def write_gguf_lora(path: Path, adapter_config: dict, tensors: dict[str, torch.Tensor], model_config) -> None:
    """Write `tensors` (a PEFT adapter's state dict, with its `adapter_config`) for a base model of `model_config`
    (its transformers config) as a GGUF LoRA at `path`."""
    if model_config.model_type not in SUPPORTED:
        raise AdapterUnusable(f"GGUF adapters are written for {sorted(SUPPORTED)} models, "
                              f"not {model_config.model_type}.")
    heads = {"self_attn.q_proj": model_config.num_attention_heads,
             "self_attn.k_proj": getattr(model_config, "num_key_value_heads", None) or model_config.num_attention_heads}
    writer = GGUFWriter(str(path), arch=model_config.model_type)
    writer.add_type(GGUFType.ADAPTER)
    writer.add_string(Keys.Adapter.TYPE, "lora")
    writer.add_float32(Keys.Adapter.LORA_ALPHA, float(adapter_config["lora_alpha"]))
    for key in sorted(tensors):
        name, module = gguf_name(key)
        array = tensors[key].detach().to(torch.float32).cpu().numpy()
        if name.endswith("lora_b") and module in heads:
            array = permute_rows(array, heads[module])
        writer.add_tensor(name, np.ascontiguousarray(array))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
