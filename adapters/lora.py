"""LoRA on a causal LM: which modules and layers are adapted, the PEFT config, the compute type of training, and
peft's saved tensors read back as per-module updates (for merging into a model and for serving blends)."""

from __future__ import annotations

import math
import re

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import PreTrainedModel

from assistant.config import LoraSettings, TrainConfig

TARGET_MODULES = {
    "gpt2": ["c_attn", "c_proj"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj"],
}
"""The attention projections adapted per architecture, unless `LoraSettings.target_modules` names others."""
DEFAULT_TARGETS = ["q_proj", "v_proj"]
MLP_MODULES = {
    "gpt2": ["mlp.c_fc", "mlp.c_proj"],
    "llama": ["mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"],
    "mistral": ["mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"],
    "qwen2": ["mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"],
}
"""The feed-forward projections `LoraSettings.mlp_top_layers` adapts, as paths inside one layer."""


def top_layers(model: PreTrainedModel, fraction: float) -> list[int]:
    """Indexes of the top `fraction` of the model's layers (at least one; none for 0)."""
    n = model.config.num_hidden_layers
    return list(range(n - max(1, math.ceil(n * fraction)), n)) if fraction else []


def adapted_layers(settings: LoraSettings, model: PreTrainedModel) -> list[int]:
    """Indexes of the adapted layers (the top `settings.top_layers` of them)."""
    return top_layers(model, settings.top_layers)


def peft_config(settings: LoraSettings, model: PreTrainedModel) -> LoraConfig:
    kind = model.config.model_type
    targets = list(settings.target_modules or TARGET_MODULES.get(kind, DEFAULT_TARGETS))
    layers = adapted_layers(settings, model)
    common = dict(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout, task_type="CAUSAL_LM",
                  fan_in_fan_out=kind == "gpt2")
    if not settings.mlp_top_layers:
        return LoraConfig(target_modules=targets, layers_to_transform=layers, **common)
    if kind not in MLP_MODULES:
        raise ValueError(f"lora.mlp_top_layers: no feed-forward module names known for {kind!r}; "
                         "name them in lora.target_modules instead")
    # Two sets of layers: one regex (peft full-matches it against each module's path; layers_to_transform
    # cannot be combined with it).
    mlp_layers = top_layers(model, settings.mlp_top_layers)

    def part(names: list[str], indexes: list[int]) -> str:
        return (rf".*\.({'|'.join(map(str, indexes))})\.(.*\.)?"
                rf"({'|'.join(re.escape(name) for name in names)})")

    pattern = f"{part(targets, layers)}|{part(MLP_MODULES[kind], mlp_layers)}"
    return LoraConfig(target_modules=pattern, **common)


def add_lora(model: PreTrainedModel, settings: LoraSettings) -> PeftModel:
    """Wrap `model` with a fresh, trainable LoRA adapter; every base weight is frozen."""
    return get_peft_model(model, peft_config(settings, model))


def native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (otherwise autocast is slower than fp32)."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def autocast(config: TrainConfig) -> torch.autocast:
    """bf16 autocast for training when `config.bf16` asks for it (None: when the CPU has native bf16)."""
    enabled = config.bf16 if config.bf16 is not None else native_bf16()
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled)


def lora_updates(config: dict, tensors: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """A saved peft LoRA adapter (`adapter_config.json` as a dict, `adapter_model.safetensors`' tensors) as the
    update of each module it adapts: module path in the base model (e.g. "transformer.h.1.attn.c_attn") →
    (A, shape (r, in), and scale·B, shape (out, r)), in float32, so ΔW = scale·B·A with scale = lora_alpha / r.

    peft names a module's tensors "base_model.model.<path>.lora_A.weight" and "….lora_B.weight"."""
    scale = config["lora_alpha"] / config["r"]
    updates = {}
    for key, a in tensors.items():
        if ".lora_A." not in key:
            continue
        path = key.removeprefix("base_model.model.").split(".lora_A.")[0]
        updates[path] = (a.float(), tensors[key.replace(".lora_A.", ".lora_B.")].float() * scale)
    return updates


def merge_lora(model: torch.nn.Module, config: dict, tensors: dict[str, torch.Tensor]) -> None:
    """Add a saved LoRA adapter's update into `model`'s weights in place (W += scale·B·A, `lora_updates`)."""
    for path, (a, scaled_b) in lora_updates(config, tensors).items():
        delta = scaled_b @ a  # (out, in)
        weight = model.get_submodule(path).weight
        with torch.no_grad():
            # GPT-2's Conv1D stores (in, out): peft marks it with fan_in_fan_out (a square one cannot be told by shape).
            weight += delta.T if config.get("fan_in_fan_out") else delta
