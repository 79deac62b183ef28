"""A blend as one LoRA adapter, for servers that take one adapter per request (vLLM, llama.cpp's server).

base + Σ scaleᵢ·(alphaᵢ/rᵢ)·Bᵢ·Aᵢ is exactly one LoRA of rank Σ rᵢ: the A matrices stacked by rows, the B matrices
side by side with each one's scale folded in, and alpha equal to the rank (PEFT's scale alpha/r then is 1). A module
only one part adapts gets zeros in the other's rows and columns. The result is a PEFT adapter (`adapter_config.json`
and its tensors) that PEFT, vLLM and the GGUF writer take as they are.
"""

from __future__ import annotations

import torch

A, B = ".lora_A.weight", ".lora_B.weight"


def merge_lora_parts(parts: list[tuple[dict, dict[str, torch.Tensor], float]]) -> tuple[dict, dict[str, torch.Tensor]]:
    """(adapter_config, tensors) of one adapter equal to the sum of `parts`, each (adapter_config, PEFT tensors,
    scale). Every part must adapt the same base model."""
    if not parts:
        raise ValueError("merge_lora_parts needs at least one adapter.")
    rank = sum(int(config["r"]) for config, _, _ in parts)
    modules = sorted({key[: -len(A)] for _, tensors, _ in parts for key in tensors if key.endswith(A)})
    merged: dict[str, torch.Tensor] = {}
    offset = 0
    for config, tensors, scale in parts:
        r = int(config["r"])
        factor = float(scale) * float(config["lora_alpha"]) / r
        for module in modules:
            a, b = tensors.get(module + A), tensors.get(module + B)
            if a is None or b is None:
                continue
            stacked_a = merged.setdefault(module + A, torch.zeros(rank, a.shape[1], dtype=torch.float32))
            stacked_b = merged.setdefault(module + B, torch.zeros(b.shape[0], rank, dtype=torch.float32))
            stacked_a[offset:offset + r] = a.float()
            stacked_b[:, offset:offset + r] = b.float() * factor
        offset += r
    config = {**parts[0][0], "r": rank, "lora_alpha": rank, "rank_pattern": {}, "alpha_pattern": {},
              "layers_to_transform": None, "layers_pattern": None,
              "target_modules": sorted({module.rsplit(".", 1)[-1] for module in modules})}
    return config, merged
