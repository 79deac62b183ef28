"""The adapter registry: standard PEFT folders, versions, atomic publishing, checksums."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel

from adapters.registry import CONFIG, GLOBAL, MANIFEST, WEIGHTS, AdapterRegistry, personal_adapter
from adapters.training import LoraSettings, add_lora
from assistant.config import ModelConfig
from assistant.model import load_model
from storage.errors import NotFound


@pytest.fixture
def registry(store, data_home) -> AdapterRegistry:
    return AdapterRegistry(data_home / "adapters", store)


@pytest.fixture
def lora_model(tiny_model_dir):
    loaded = load_model(ModelConfig(model=str(tiny_model_dir)), tiny_model_dir.parent)
    model = add_lora(loaded.model, LoraSettings(rank=4, alpha=8))
    _perturb(model, 1)
    return model


def _perturb(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


def _logits(model, ids=(1, 2, 3, 4, 5)):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits


def test_publish_versions_as_standard_peft_folders(registry, lora_model, tiny_model_dir, store):
    first = registry.publish(GLOBAL, None, lora_model, {"objective": "dpo+kto", "feedback_ids": ["f1"]}, "t1")
    _perturb(lora_model, 2)
    second = registry.publish(GLOBAL, None, lora_model, {"objective": "dpo+kto", "feedback_ids": ["f2"]}, "t2")
    assert (first.label, second.label) == ("v0001", "v0002")
    assert registry.current(GLOBAL).version == 2
    assert sorted(p.name for p in second.folder.iterdir()) == sorted([CONFIG, MANIFEST, WEIGHTS])
    assert second.manifest["parent_version"] == "v0001" and second.manifest["feedback_ids"] == ["f2"]
    assert len(second.manifest["checksum_sha256"]) == 64
    # Anyone can load it with plain PEFT and get the same model.
    base = load_model(ModelConfig(model=str(tiny_model_dir)), tiny_model_dir.parent).model
    outside = PeftModel.from_pretrained(base, second.folder)
    assert torch.allclose(_logits(outside), _logits(lora_model), atol=1e-6)
    config, tensors = registry.load_weights(second)
    assert config["r"] == 4 and all("lora_" in k for k in tensors)
    assert [v.version for v in registry.history(GLOBAL)] == [1, 2]


@pytest.mark.parametrize("crash_at", ["save", "renamed", "pointed"])
def test_a_publish_interrupted_at_any_step_keeps_the_previous_version(registry, lora_model, monkeypatch, crash_at):
    registry.publish(GLOBAL, None, lora_model, {}, "t1")
    expected = _logits(lora_model)
    _perturb(lora_model, 3)

    class Crash(Exception):
        pass

    def crash(*args, **kwargs):
        raise Crash()

    if crash_at == "save":
        monkeypatch.setattr(lora_model, "save_pretrained", crash)
    else:
        monkeypatch.setattr(registry, "_step", lambda name: crash() if name == crash_at else None)
    with pytest.raises(Crash):
        registry.publish(GLOBAL, None, lora_model, {}, "t2")
    current = registry.current(GLOBAL)
    assert current.version == 1
    _, tensors = registry.load_weights(current)  # still loadable, checksum intact
    restored = lora_model
    from peft import set_peft_model_state_dict

    set_peft_model_state_dict(restored, tensors)
    assert torch.allclose(_logits(restored), expected, atol=1e-6)
    removed = registry.remove_strays()
    assert [p.name for p in removed] == (["v0002"] if crash_at == "pointed" else [])
    assert not any(p.name.startswith(".tmp") for p in (registry.root / GLOBAL).iterdir())
    monkeypatch.undo()
    assert registry.publish(GLOBAL, None, lora_model, {}, "t3").version == 2


def test_tampered_weights_are_refused(registry, lora_model):
    version = registry.publish(GLOBAL, None, lora_model, {}, "t")
    with open(version.folder / WEIGHTS, "r+b") as fh:
        fh.seek(-8, 2)
        fh.write(b"\x00" * 8)
    with pytest.raises(NotFound, match="checksum"):
        registry.load_weights(version)


def test_personal_adapters_live_under_the_profile_id_and_can_be_dropped(registry, lora_model, store):
    user = store.create_user("Ann/../x" if False else "Ann")
    name = personal_adapter(user["id"])
    version = registry.publish(name, user["id"], lora_model, {}, "t")
    assert version.folder == registry.root / f"user_{user['id']}" / "v0001"
    assert "Ann" not in str(version.folder)
    registry.drop(name)
    assert registry.current(name) is None and not (registry.root / name).exists()
    assert store.counts()["users"] == 1
