""""Download my data": one zip of a profile's settings, conversations (every message, retried and rejected ones too),
feedback in TRL's formats, its adapter's versions as standard PEFT folders and its learned reward."""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import time
import zipfile
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

from adapters.registry import AdapterRegistry, personal_adapter
from storage.export import dpo_records, kto_records
from storage.store import Store

EXPORTS_PREFIX = "attune-export-"
KEEP_SECONDS = 3600
"""An archive's temporary folder is removed at the next export this long after it was made."""

README = """Your data from Attune, as of {when}.

profile.json         your profile's name, reply settings, note and personal weight
conversations.json   every conversation with every message (also replies replaced by a retry or not chosen)
feedback.jsonl       every vote and choice as stored, with the texts it was about
dpo.jsonl, kto.jsonl the same feedback in TRL's preference (prompt/chosen/rejected) and unpaired
                     (prompt/completion/label) formats
adapters/            your personal adapter's versions: PEFT folders, load with PeftModel.from_pretrained
reward.json          your learned reward: its kept versions (votes, held-out accuracy) and the newest weights θ
                     (R = θ·φ, φ: the model's standardised hidden state of a reply, its fluency and its length;
                     docs/learning.md)
"""


def write_archive(store: Store, registry: AdapterRegistry | None, profile_id: str) -> Path:
    """The zip of one profile's data, in a fresh temporary folder (older ones of earlier exports are removed)."""
    _remove_old_exports()
    profile = store.get_profile(profile_id)
    stamp = datetime.now(timezone.utc)
    safe = re.sub(r"[^\w-]+", "-", profile["name"]).strip("-")[:40] or "profile"
    path = Path(tempfile.mkdtemp(prefix=EXPORTS_PREFIX)) / f"attune-{safe}-{stamp:%Y%m%d-%H%M}.zip"
    events = store.feedback(profile_id)
    conversations = [{**c, "messages": [asdict(m) for m in store.conversation_messages(profile_id, c["id"])]}
                     for c in store.list_conversations(profile_id)]
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("README.txt", README.format(when=stamp.isoformat(timespec="seconds")))
        archive.writestr("profile.json", _json({"name": profile["name"], "created_at": profile["created_at"],
                                                "alpha_override": profile["alpha_override"],
                                                "note": store.note(profile_id),
                                                "preferences": store.preferences(profile_id)}))
        archive.writestr("conversations.json", _json(conversations))
        for name, records in (("feedback", events), ("dpo", dpo_records(events)), ("kto", kto_records(events))):
            archive.writestr(f"{name}.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        archive.writestr("reward.json", _json(_reward(store, profile_id)))
        for arcname, file in registry.files(personal_adapter(profile_id)) if registry else []:
            archive.write(file, f"adapters/{arcname}")
    return path


def _reward(store: Store, profile_id: str) -> dict:
    """The profile's reward versions (metrics) and the newest one's weights, the reference point last."""
    newest = store.current_reward(profile_id)
    weights = None
    if newest:
        values = memoryview(newest["theta"]).cast("f").tolist()
        weights = {"kind": newest["kind"], "theta": values[:-1], "z": values[-1]}
    return {"versions": store.reward_history(profile_id), "newest": weights}


def _json(value) -> str:
    return json.dumps(value, ensure_ascii=False, indent=1) + "\n"


def _remove_old_exports() -> None:
    for folder in Path(tempfile.gettempdir()).glob(EXPORTS_PREFIX + "*"):
        try:
            if time.time() - folder.stat().st_mtime > KEEP_SECONDS:
                shutil.rmtree(folder, ignore_errors=True)
        except FileNotFoundError:
            pass
