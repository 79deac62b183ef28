"""The adapter registry: standard PEFT folders, versions, atomic publishing, checksums."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel
from peft.tuners.lora import LoraLayer

from adapters.lora import add_lora, lora_updates, merge_lora
from adapters.registry import CONFIG, GLOBAL, MANIFEST, WEIGHTS, AdapterRegistry, personal_adapter
from assistant.config import LoraSettings, ModelConfig
from assistant.model import load_model
from storage.errors import AdapterUnusable


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
    with pytest.raises(AdapterUnusable, match=r"global v0001 failed its checksum \(adapter_model.safetensors\)"):
        registry.load_weights(version)


def test_personal_adapters_live_under_the_profile_id_and_can_be_dropped(registry, lora_model, store):
    user = store.create_profile("Ann/../x" if False else "Ann")
    name = personal_adapter(user["id"])
    version = registry.publish(name, user["id"], lora_model, {}, "t")
    assert version.folder == registry.root / f"profile_{user['id']}" / "v0001"
    assert "Ann" not in str(version.folder)
    registry.drop(name)
    assert registry.current(name) is None and not (registry.root / name).exists()
    assert store.counts()["profiles"] == 1


def test_a_database_from_before_the_rename_keeps_every_row_and_adapter(tmp_path):
    """Migration m003 (users → profiles, pairs → comparisons, `user_<id>` adapters → `profile_<id>`) on a database
    written by the previous schema: every row survives under its new name and the registry moves the folder."""
    from storage.db import DB_FILENAME, connect
    from storage.migrations import MIGRATIONS
    from storage.store import Store

    path, root, t = tmp_path / DB_FILENAME, tmp_path / "adapters", "2026-12-01T00:00:00+00:00"
    db = connect(path)
    MIGRATIONS.apply(db, stop_before="m003_profiles_and_comparisons")
    db["users"].insert({"id": "u1", "name": "Ann", "name_key": "ann", "created_at": t, "updated_at": t})
    db["conversations"].insert({"id": "c1", "user_id": "u1", "title": "t", "created_at": t, "updated_at": t})
    for seq, (mid, role, status, parent) in enumerate([("q", "user", "active", None), ("a", "assistant", "active", "q"),
                                                       ("b", "assistant", "rejected", "q")]):
        db["messages"].insert({"id": mid, "conversation_id": "c1", "seq": seq, "parent_id": parent, "role": role,
                               "content": mid * 3, "status": status, "created_at": t})
    db["pairs"].insert({"id": "p1", "user_id": "u1", "conversation_id": "c1", "prompt_message_id": "q",
                        "a_message_id": "a", "b_message_id": "b", "created_at": t})
    db["feedback"].insert({"id": "f1", "user_id": "u1", "kind": "thumbs", "message_id": "a", "value": 1,
                           "comment": "short", "created_at": t, "updated_at": t})
    db["feedback"].insert({"id": "f2", "user_id": "u1", "kind": "pairwise", "pair_id": "p1", "choice": "a",
                           "created_at": t, "updated_at": t})
    db["adapter_versions"].insert({"id": "v1", "adapter": "user_u1", "user_id": "u1", "version": 1,
                                   "path": "user_u1/v0001", "manifest": "{}", "trained_until": t, "created_at": t})
    db["adapters"].insert({"adapter": "user_u1", "user_id": "u1", "current_version": 1, "updated_at": t})
    db["training_jobs"].insert({"id": "j1", "adapter": "user_u1", "user_id": "u1", "status": "done",
                                "reason": "auto", "created_at": t})
    db.conn.commit()
    db.close()
    (root / "user_u1" / "v0001").mkdir(parents=True)
    (root / "user_u1" / "v0001" / "weights").write_text("w")

    store = Store(path)  # applies m003
    assert store.get_profile("u1")["name"] == "Ann"
    events = {e["id"]: e for e in store.feedback("u1")}
    assert (events["f1"]["kind"], events["f1"]["value"], events["f1"]["comment"]) == ("thumbs", 1, "short")
    assert (events["f2"]["kind"], events["f2"]["comparison_id"], events["f2"]["choice"]) == ("comparison", "p1", "a")
    comparison = store.get_comparison("u1", "p1")
    assert (comparison.a.id, comparison.b.id, comparison.choice) == ("a", "b", "a")
    assert store.feedback_counts("u1") == {"thumbs": 1, "comparison": 1, "total": 2}
    assert store.current_adapter("profile_u1")["path"] == "profile_u1/v0001"
    assert store.current_adapter("user_u1") is None

    AdapterRegistry(root, store)
    assert (root / "profile_u1" / "v0001" / "weights").read_text() == "w" and not (root / "user_u1").exists()
    AdapterRegistry(root, store)  # a second start (or the worker's) finds nothing left to move
    assert (root / "profile_u1" / "v0001" / "weights").exists()


def test_one_reading_of_peft_tensor_names_serves_merging_and_blending(registry, lora_model):
    """`lora_updates` on a published version: one (A, scale·B) per adapted module, named by its path in the base
    model, whose product is the update peft itself applies (blending serves exactly these; merging adds them)."""
    config, tensors = registry.load_weights(registry.publish(GLOBAL, None, lora_model, {}, "t"))
    updates = lora_updates(config, tensors)
    layers = {name.removeprefix("base_model.model."): module for name, module in lora_model.named_modules()
              if isinstance(module, LoraLayer)}
    assert updates.keys() == layers.keys() and 2 * len(updates) == len(tensors) and len(updates) >= 2
    for path, (a, scaled_b) in updates.items():
        delta = layers[path].get_delta_weight("default")  # peft's ΔW, laid out as the module's weight
        assert torch.allclose(scaled_b @ a, delta.T if config["fan_in_fan_out"] else delta, atol=1e-6), path


def test_merging_a_version_into_the_base_gives_the_adapters_outputs(registry, lora_model, tiny_model_dir):
    config, tensors = registry.load_weights(registry.publish(GLOBAL, None, lora_model, {}, "t"))
    merged = load_model(ModelConfig(model=str(tiny_model_dir)), tiny_model_dir.parent).model
    merge_lora(merged, config, tensors)
    assert torch.allclose(_logits(merged), _logits(lora_model), atol=1e-5)


def test_pruning_keeps_the_newest_the_served_its_parent_and_a_usable_fallback(registry, lora_model, store):
    for seed in range(6):
        _perturb(lora_model, seed)
        registry.publish(GLOBAL, None, lora_model, {"feedback_ids": [f"f{seed}"]}, f"t{seed}")
    store.mark_unusable(GLOBAL, 6, "failed its checksum")  # the served one is bad: v5 is its fallback
    assert registry.prune(GLOBAL, keep=2) == [1, 2, 3, 4]  # 5 stays: the parent of 6 and the newest usable
    assert [v.version for v in registry.history(GLOBAL)] == [5, 6]
    assert sorted(p.name for p in (registry.root / GLOBAL).iterdir()) == ["v0005", "v0006"]
    assert registry.newest_usable(GLOBAL)[0].version == 5  # the warm start and the layer below skip the bad one
    assert registry.prune(GLOBAL, keep=2) == []


def test_the_newest_usable_version_records_a_corrupted_one_on_the_way(registry, lora_model, store):
    registry.publish(GLOBAL, None, lora_model, {}, "t1")
    _perturb(lora_model, 2)
    second = registry.publish(GLOBAL, None, lora_model, {}, "t2")
    (second.folder / WEIGHTS).write_bytes(b"flipped")
    version, (config, tensors) = registry.newest_usable(GLOBAL)
    assert version.version == 1 and config["r"] == 4 and tensors
    assert "checksum" in registry.history(GLOBAL)[1].unusable
