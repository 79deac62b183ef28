"""Each version of an adapter on a LLaMA-family base is also written as a GGUF LoRA for llama.cpp: its metadata,
tensor names and orientation as llama.cpp's converter writes them, q and k in the converter's RoPE row order, and the
file covered by the manifest."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from gguf import GGUFReader
from transformers import LlamaConfig, LlamaForCausalLM

from adapters.gguf_lora import gguf_name, permute_rows
from adapters.lora import add_lora
from adapters.registry import GGUF, GLOBAL, AdapterRegistry
from assistant.config import LoraSettings
from storage.errors import AdapterUnusable


@pytest.fixture
def llama_lora():
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = add_lora(LlamaForCausalLM(config), LoraSettings(rank=4, alpha=8, top_layers=1.0))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    return model


def _field(reader: GGUFReader, key: str):
    return reader.fields[key].contents()


def test_a_published_llama_version_has_its_gguf_lora(store, data_home, llama_lora):
    registry = AdapterRegistry(data_home / "adapters", store)
    version = registry.publish(GLOBAL, None, llama_lora, {}, "t")
    path = version.folder / GGUF
    assert version.manifest["gguf_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    reader = GGUFReader(path)
    assert (_field(reader, "general.architecture"), _field(reader, "general.type"), _field(reader, "adapter.type"),
            _field(reader, "adapter.lora.alpha")) == ("llama", "adapter", "lora", 8.0)
    written = {t.name: np.array(t.data) for t in reader.tensors}
    _, peft = registry.load_weights(version)
    assert len(written) == len(peft) == 3 * 4 * 2  # 3 layers × q, k, v, o × A and B
    heads = {"attn_q": 4, "attn_k": 2}  # num_attention_heads, num_key_value_heads
    for key, tensor in peft.items():
        name, _ = gguf_name(key)
        expected = tensor.float().numpy()
        module = name.split(".")[2]
        if name.endswith("lora_b") and module in heads:
            expected = permute_rows(expected, heads[module])
        assert written[name].dtype == np.float32 and written[name].shape == expected.shape, name
        np.testing.assert_array_equal(written[name], expected)


def test_the_rope_permutation_of_b_is_the_converters_on_the_whole_update():
    """The converter permutes the base weight W of q and k; llama.cpp adds scale·B'·A to it. B' = permute(B) makes
    W' + B'·A = permute(W + B·A): the update lands on the rows the converter moved W's to."""
    rng = np.random.default_rng(0)
    w, b, a = rng.normal(size=(32, 32)), rng.normal(size=(32, 4)), rng.normal(size=(4, 32))
    for heads in (4, 2):
        np.testing.assert_allclose(permute_rows(w, heads) + permute_rows(b, heads) @ a, permute_rows(w + b @ a, heads))
    rows = permute_rows(np.arange(8)[:, None], 1)[:, 0]
    assert rows.tolist() == [0, 4, 1, 5, 2, 6, 3, 7]  # one head of 8: the two rotary halves interleaved


def test_a_tensor_llama_cpp_cannot_place_is_refused():
    assert gguf_name("base_model.model.model.layers.7.mlp.down_proj.lora_B.weight") == (
        "blk.7.ffn_down.weight.lora_b", "mlp.down_proj")
    with pytest.raises(AdapterUnusable, match="cannot place"):
        gguf_name("base_model.model.lm_head.lora_A.weight")
