"""Erasure and "Download my data": a deleted profile leaves no byte of its text in the database, its write-ahead log
or the adapter folders; the global versions that learned from it are tainted, then replaced by a from-scratch
retrain whose manifest lists none of its feedback; and a profile's archive holds everything Attune keeps of it."""

from __future__ import annotations

import io
import json
import urllib.request
import zipfile


from adapters.blend import AdapterServer
from adapters.registry import GLOBAL, AdapterRegistry, personal_adapter
from adapters.worker import ADAPTERS_DIR, Worker
from assistant.config import BlendConfig
from assistant.service import ChatService
from storage.jobs import ERASURE
from tests.conftest import api_client
from tests.test_app import create_profile, send
from tests.test_worker import LEARNING, _choices, _fresh
from tests.test_worker import parts  # noqa: F401  (a fixture: the service, the worker and the registry)

SECRET = "Zebulon-7731 quince marmalade"
"""Text only the erased profile ever wrote: searched for, byte by byte, in every file of the data home."""


def _secret_choices(service, profile_id, n):
    conv = service.new_conversation(profile_id, f"About {SECRET}")["id"]
    for i in range(n):
        q = service.store.add_message(profile_id, conv, "user", f"{SECRET} question {i}?")
        pair = service.store.create_comparison(profile_id, conv, q.id, f"{SECRET} yes {i}.", f"{SECRET} no {i}.",
                                               model_id="m", settings={})
        service.choose(profile_id, pair.id, "a", f"{SECRET} comment")


def _files_with(root, text: str) -> list[str]:
    needles = [text.encode("utf-8"), text.encode("utf-16-le")]
    return [str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()
            and any(n in p.read_bytes() for n in needles)]


def test_a_deleted_profile_leaves_no_byte_behind_and_the_next_global_excludes_it(parts, store,  # noqa: F811
                                                                                    data_home):
    service, worker, registry = parts
    gone = service.create_profile("Zebulon-7731")["id"]
    kept = service.create_profile("Kept")["id"]
    _secret_choices(service, gone, 6)
    _choices(service, kept, 6)
    while worker.run_once():  # personal adapters, and a global one trained on both profiles
        pass
    gone_ids = {e["id"] for e in store.feedback(gone)}
    assert gone_ids & set(registry.current(GLOBAL).manifest["feedback_ids"])
    assert _files_with(data_home, SECRET)  # (the search finds it while it is there)

    service.delete_profile(gone)
    assert _files_with(data_home, SECRET) == [] and _files_with(data_home, "Zebulon-7731") == []
    wal = data_home / "attune.db-wal"
    assert not wal.exists() or wal.stat().st_size == 0  # (the last connection to close removes it)
    assert not (registry.root / personal_adapter(gone)).exists()
    assert all(v.tainted for v in registry.history(GLOBAL))  # until the retrain replaces them
    assert store.latest_job(GLOBAL)["reason"] == ERASURE

    while worker.run_once():
        pass
    history = registry.history(GLOBAL)
    assert [v.tainted for v in history] == [None] and history[0].manifest["refit"] is False
    assert not gone_ids & set(history[0].manifest["feedback_ids"] + history[0].manifest["held_out_feedback_ids"])
    assert history[0].manifest["update"] == 1  # from scratch, not warm-started from a tainted version
    assert sorted(p.name for p in (registry.root / GLOBAL).iterdir()) == [history[0].label]


def test_tainted_versions_stop_serving_at_once_when_set(store, data_home, tiny_model_dir, app_config):
    registry = AdapterRegistry(data_home / ADAPTERS_DIR, store)
    served = _fresh(tiny_model_dir)
    adapters = AdapterServer(served, registry, store, BlendConfig(serve_tainted=False))
    service = ChatService(store, served, app_config, adapters=adapters, learning=LEARNING)
    worker = Worker(_fresh(tiny_model_dir), store, registry, LEARNING)
    gone, kept = service.create_profile("Gone")["id"], service.create_profile("Kept")["id"]
    _choices(service, gone, 6)
    while worker.run_once():
        pass
    assert adapters.usable(GLOBAL).version == 1
    service.delete_profile(gone)
    assert adapters.usable(GLOBAL) is None  # no untainted version: the base model alone serves everyone
    assert adapters.blend_for(kept).global_version is None


def test_download_my_data_holds_conversations_feedback_and_adapter(running_app):
    url, service = running_app
    client = api_client(url, download_files=False)
    ann = create_profile(client, "Ann")
    final, _ = send(client, ann, None, "A message to keep")
    reply = client.predict(ann, final["conversation"]["value"], api_name="/messages")[1]
    client.predict(ann, reply["id"], -1, "too short", api_name="/vote")
    client.predict(ann, "Keep it short.", api_name="/save_note")
    offered, status = client.predict(ann, api_name="/download_data")
    assert "ready" in status and offered["visible"]
    with urllib.request.urlopen(offered["value"]["url"], timeout=60) as response:
        data = response.read()  # as the browser fetches it
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        names = set(archive.namelist())
        assert {"README.txt", "profile.json", "conversations.json", "feedback.jsonl", "dpo.jsonl",
                "kto.jsonl"} <= names
        conversations = json.loads(archive.read("conversations.json"))
        assert [m["content"] for m in conversations[0]["messages"]][0] == "A message to keep"
        kto = [json.loads(line) for line in archive.read("kto.jsonl").decode().splitlines()]
        assert kto == [{"prompt": [{"role": "system", "content": "Be brief."},
                                   {"role": "user", "content": "A message to keep"}],
                        "completion": [{"role": "assistant", "content": reply["content"]}], "label": False}]
        profile = json.loads(archive.read("profile.json"))
        assert (profile["name"], profile["note"]) == ("Ann", "Keep it short.")
        reward = json.loads(archive.read("reward.json"))  # the 👎 refitted the learned reward once
        assert [v["metrics"]["events"] for v in reward["versions"]] == [1]
        assert len(reward["newest"]["theta"]) == service.loaded.model.config.n_embd + 2
