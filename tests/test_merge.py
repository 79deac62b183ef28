"""A blend merged into one adapter (adapters/merge.py, `AdapterRegistry.merged`): the same model as global at 1 plus
personal at α, loadable by PEFT as it is, and gone with its versions."""

from __future__ import annotations

import copy
import json

import torch
from peft import PeftModel

from adapters.lora import add_lora, merge_lora
from adapters.merge import merge_lora_parts
from adapters.registry import CONFIG, GLOBAL, MERGED, SOURCES, AdapterRegistry, personal_adapter
from assistant.config import LoraSettings, ModelConfig
from assistant.model import load_model


def _random_lora(base, seed: int, settings: LoraSettings):
    torch.manual_seed(seed)
    model = add_lora(copy.deepcopy(base), settings)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.05)
    return model


def _logits(model, ids=(1, 2, 3, 4, 5)):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits


def test_a_merged_adapter_is_the_blend_and_peft_loads_it(tiny_model_dir, store, data_home):
    loaded = load_model(ModelConfig(model=str(tiny_model_dir)), tiny_model_dir.parent)
    registry = AdapterRegistry(data_home / "adapters", store)
    ann = store.create_profile("Ann")["id"]
    # (ranks and layers differ: the personal adapter adapts fewer layers at another rank)
    everyone = registry.publish(GLOBAL, None, _random_lora(loaded.model, 1, LoraSettings(rank=4, alpha=8)), {}, "t")
    mine = registry.publish(personal_adapter(ann), ann,
                            _random_lora(loaded.model, 2, LoraSettings(rank=2, alpha=8, top_layers=0.5)), {}, "t")
    expected = copy.deepcopy(loaded.model)
    merge_lora(expected, *registry.load_weights(everyone))
    config, tensors = registry.load_weights(mine)
    merge_lora(expected, {**config, "lora_alpha": config["lora_alpha"] * 0.35}, tensors)  # personal at α 0.35

    folder = registry.merged([(everyone, 1.0), (mine, 0.35)], loaded.model.config)
    assert folder.parent.name == MERGED and folder.name.startswith("attune-")
    assert json.loads((folder / CONFIG).read_text())["r"] == 6
    served = PeftModel.from_pretrained(copy.deepcopy(loaded.model), str(folder))
    assert (_logits(served) - _logits(expected)).abs().max() < 1e-4
    assert (_logits(expected) - _logits(loaded.model)).abs().max() > 1e-2  # (the blend does change the model)
    assert registry.merged([(everyone, 1.0), (mine, 0.35)], loaded.model.config) == folder  # written once
    other = registry.merged([(everyone, 1.0), (mine, 0.4)], loaded.model.config)
    assert other != folder and json.loads((other / SOURCES).read_text())["sources"] == [
        f"{GLOBAL}/{everyone.label}", f"{personal_adapter(ann)}/{mine.label}"]

    registry.publish(GLOBAL, None, _random_lora(loaded.model, 3, LoraSettings(rank=4, alpha=8)), {}, "t")
    registry.merged([(registry.current(GLOBAL), 1.0)], loaded.model.config)
    assert registry.remove_strays() == []  # (the merged folder is not taken for a stray version)
    registry.drop(personal_adapter(ann))  # Ann's adapter is erased: every merged adapter with it goes too
    left = sorted(p.name for p in (data_home / "adapters" / MERGED).iterdir())
    assert len(left) == 1 and folder.name not in left and other.name not in left
    registry.prune(GLOBAL, keep=1)  # everyone's first version goes, and nothing merged from it stays
    assert [p.name for p in (data_home / "adapters" / MERGED).iterdir()] == left


def test_merging_one_part_at_scale_one_keeps_its_update():
    a, b = torch.randn(4, 8), torch.randn(6, 4)
    config, tensors = merge_lora_parts([({"r": 4, "lora_alpha": 8, "target_modules": ["q"]},
                                         {"m.q.lora_A.weight": a, "m.q.lora_B.weight": b}, 1.0)])
    assert config["lora_alpha"] == config["r"] == 4 and config["target_modules"] == ["q"]
    merged = tensors["m.q.lora_B.weight"] @ tensors["m.q.lora_A.weight"]
    assert torch.allclose(merged, 2.0 * b @ a)  # PEFT's scale alpha/r = 2, folded into B


def test_a_merge_of_a_reused_version_number_is_another_adapter(tiny_model_dir, store, data_home):
    loaded = load_model(ModelConfig(model=str(tiny_model_dir)), tiny_model_dir.parent)
    registry = AdapterRegistry(data_home / "adapters", store)
    ann = store.create_profile("Ann")["id"]
    first = registry.publish(personal_adapter(ann), ann, _random_lora(loaded.model, 1, LoraSettings(rank=2)), {}, "t")
    before = registry.merged([(first, 0.5)], loaded.model.config)
    registry.drop(personal_adapter(ann))  # a reset: the next version is v0001 again
    assert not before.exists()
    second = registry.publish(personal_adapter(ann), ann, _random_lora(loaded.model, 2, LoraSettings(rank=2)), {}, "t")
    assert second.label == first.label and registry.merged([(second, 0.5)], loaded.model.config) != before
