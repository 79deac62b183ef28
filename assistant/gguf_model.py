"""A LLaMA-family transformers model as an F32 GGUF, so that llama.cpp decodes exactly the weights torch does
(`--backend llamacpp` for a model other than the embedded one, whose Q4_1 GGUF ships with it).

The layout is llama.cpp's `convert_hf_to_gguf.py` for `LlamaForCausalLM`: the `llama.*` hyper-parameters, the
byte-level BPE vocabulary (tokens, types, merges; llama.cpp never tokenizes for Attune, which sends and receives token
ids, but it loads the vocabulary and reads the end-of-generation tokens from it), and the tensors under their GGUF
names with q and k rows permuted for llama.cpp's rotary layout (`permute_rows`). Written once per model into the
model cache, named after a fingerprint of the weights.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from storage.errors import ModelUnavailable

log = logging.getLogger(__name__)

LAYER = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
         "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
         "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
"""HF LLaMA module of a layer (after `model.layers.N.`) → llama.cpp tensor (after `blk.N.`)."""


def permute_rows(weight: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's `LlamaModel.permute` for q (n_head heads) and k (n_head_kv): within each head, the two rotary
    halves are interleaved. Acts on rows (output features), so on a LoRA pair it is B's to carry."""
    rows = weight.shape[0]
    return weight.reshape(n_head, 2, rows // n_head // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def supported(model) -> str | None:
    """Why llama.cpp cannot take this model as an F32 GGUF written here, or None if it can."""
    config = model.config
    if config.model_type != "llama":
        return f"a {config.model_type} model (this writer knows LLaMA-family models)"
    rope = _rope(config)
    if rope.get("rope_type", rope.get("type", "default")) != "default" or getattr(config, "attention_bias", False) \
            or getattr(config, "mlp_bias", False):
        return "rope scaling or biases, which this writer does not carry over"
    if getattr(config, "head_dim", None) not in (None, config.hidden_size // config.num_attention_heads):
        return "a head size other than hidden size / heads"
    return None


def _rope(config) -> dict:
    """The rotary settings (transformers 5's `rope_parameters`; `rope_scaling` and `rope_theta` before it)."""
    rope = dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
    rope.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
    return rope


def fingerprint(model) -> str:
    """16 hex digits that change with the configuration or any weight (a strided sample of every tensor)."""
    digest = hashlib.sha256(json.dumps(model.config.to_dict(), sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().reshape(-1)
        digest.update(name.encode() + flat[:: max(1, flat.numel() // 4096)].float().numpy().tobytes())
    return digest.hexdigest()[:16]


def gguf_for(model, tokenizer, cache_root: Path) -> Path:
    """The model's F32 GGUF in `cache_root/gguf/`, written there first if missing (a temporary file, then renamed)."""
    why = supported(model)
    if why:
        raise ModelUnavailable(f"llama.cpp cannot decode {why}: use --backend torch.")
    path = Path(cache_root) / "gguf" / f"{fingerprint(model)}-f32.gguf"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".gguf", dir=path.parent)
        os.close(fd)
        try:
            write_llama_gguf(Path(tmp), model, tokenizer)
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)
        log.info("Wrote the model as an F32 GGUF for llama.cpp: %s", path.name)
    return path


def _vocabulary(tokenizer, size: int) -> tuple[list[str], list[int], list[str]]:
    """(tokens, token types, merges) of a byte-level BPE tokenizer, padded to `size`."""
    from gguf import TokenType

    special = set(tokenizer.all_special_ids)
    tokens = [tokenizer.convert_ids_to_tokens(i) for i in range(len(tokenizer))]
    types = [int(TokenType.CONTROL if i in special else TokenType.NORMAL) for i in range(len(tokens))]
    tokens += [f"[PAD{i}]" for i in range(len(tokens), size)]
    types += [int(TokenType.UNUSED)] * (size - len(types))
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"].get("merges", [])
    return tokens, types, [m if isinstance(m, str) else " ".join(m) for m in merges]


def write_llama_gguf(path: Path, model, tokenizer) -> None:
    """Write a LLaMA-family `model` (transformers) with its byte-level BPE `tokenizer` as an F32 GGUF at `path`."""
    from gguf import GGUFWriter, LlamaFileType

    config = model.config
    heads, kv_heads = config.num_attention_heads, getattr(config, "num_key_value_heads", None) or \
        config.num_attention_heads
    writer = GGUFWriter(str(path), arch="llama")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_freq_base(float(_rope(config)["rope_theta"]))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_rope_dimension_count(config.hidden_size // heads)
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(LlamaFileType.ALL_F32)
    tokens, types, merges = _vocabulary(tokenizer, config.vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_add_bos_token(False)
    for key, token_id in (("bos", tokenizer.bos_token_id), ("eos", tokenizer.eos_token_id),
                          ("pad", tokenizer.pad_token_id)):
        if token_id is not None:
            getattr(writer, f"add_{key}_token_id")(int(token_id))
    for name, array in _tensors(model, heads, kv_heads):
        writer.add_tensor(name, np.ascontiguousarray(array, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _tensors(model, heads: int, kv_heads: int):
    """(GGUF name, array) of every weight, q and k rows permuted."""
    state = {k: v.detach().to(torch.float32).cpu().numpy() for k, v in model.state_dict().items()}
    yield "token_embd.weight", state["model.embed_tokens.weight"]
    for layer in range(model.config.num_hidden_layers):
        for module, name in LAYER.items():
            array = state[f"model.layers.{layer}.{module}.weight"]
            if module in ("self_attn.q_proj", "self_attn.k_proj"):
                array = permute_rows(array, heads if module == "self_attn.q_proj" else kv_heads)
            yield f"blk.{layer}.{name}.weight", array
    yield "output_norm.weight", state["model.norm.weight"]
    if not model.config.tie_word_embeddings:
        yield "output.weight", state["lm_head.weight"]
