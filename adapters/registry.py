"""The registry of adapter versions: the only code that reads or writes adapter files.

Layout under the data home (standard PEFT folders, loadable by `PeftModel.from_pretrained` anywhere):

    adapters/global/v0001/{adapter_config.json, adapter_model.safetensors, manifest.json}
    adapters/profile_<profile id>/v0001/…

and, for a LLaMA-family base, `adapter.gguf`: the same adapter for llama.cpp (adapters/gguf_lora.py).

Publishing: write into a temporary folder beside the target, fsync every file, rename it to `vNNNN`, fsync
the parent, then point the database at it in one transaction. A crash before that last step leaves the
previous version served (the stray folder is removed at the next start); after it, the new one. Only
`.safetensors` weights are ever read, and their SHA-256 is checked against the manifest.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file

from adapters.gguf_lora import SUPPORTED as GGUF_MODELS
from adapters.gguf_lora import write_gguf_lora
from adapters.merge import merge_lora_parts
from storage.errors import AdapterUnusable
from storage.store import Store

log = logging.getLogger(__name__)

GLOBAL = "global"
WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"
MANIFEST = "manifest.json"
MERGED = "_merged"
"""The folder of blends merged into one adapter each (`AdapterRegistry.merged`), for servers that take one."""
SOURCES = "sources.json"
"""In a merged adapter's folder: the versions (`adapter/vNNNN`) and scales it sums."""
GGUF = "adapter.gguf"
"""The version as a GGUF LoRA for llama.cpp (adapters/gguf_lora.py), written beside the PEFT pair for LLaMA-family
bases and covered by the manifest's `gguf_sha256`."""


def personal_adapter(profile_id: str) -> str:
    return f"profile_{profile_id}"


def version_name(version: int) -> str:
    return f"v{version:04d}"


MAX_RANK = 256
MAX_SCALE = 16.0
"""Bounds of a servable LoRA config: rank r ≤ MAX_RANK and lora_alpha / r ≤ MAX_SCALE (Attune trains r 8, α 16)."""


def _check_bounds(name: str, config: dict) -> None:
    rank, alpha = config.get("r"), config.get("lora_alpha")
    if not isinstance(rank, int) or not 1 <= rank <= MAX_RANK:
        raise AdapterUnusable(f"Adapter {name} has a rank out of bounds ({rank!r}).")
    if not isinstance(alpha, (int, float)) or not 0 < alpha / rank <= MAX_SCALE:
        raise AdapterUnusable(f"Adapter {name} has a scale out of bounds (lora_alpha {alpha!r}, r {rank}).")


@dataclass(frozen=True)
class AdapterVersion:
    adapter: str
    version: int
    folder: Path
    manifest: dict
    unusable: str | None = None
    """Why this version cannot be served (`AdapterServer` found out and recorded it); None if usable."""
    tainted: str | None = None
    """Why this version learned from erased feedback (a deleted profile's); None if it did not."""

    @property
    def label(self) -> str:
        return version_name(self.version)


def _version(adapter: str, root: Path, row: dict) -> AdapterVersion:
    return AdapterVersion(adapter, row["version"], root / row["path"], row["manifest"], row.get("unusable"),
                          row.get("tainted"))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class AdapterRegistry:
    def __init__(self, root: Path, store: Store):
        self.root = Path(root)
        self.store = store
        self.root.mkdir(parents=True, exist_ok=True)
        self._checked_gguf: set[tuple[str, str]] = set()
        self.move_renamed_folders()

    # ---- reading -------------------------------------------------------------------------------------------

    def current(self, adapter: str) -> AdapterVersion | None:
        row = self.store.current_adapter(adapter)
        if row is None:
            return None
        return _version(adapter, self.root, row)

    def history(self, adapter: str) -> list[AdapterVersion]:
        return [_version(adapter, self.root, r) for r in self.store.adapter_versions(adapter)]

    def load_weights(self, version: AdapterVersion) -> tuple[dict, dict[str, torch.Tensor]]:
        """(adapter_config, LoRA tensors) of a version, after checking both files' checksums and the config's bounds;
        AdapterUnusable says what is wrong (never where the files are)."""
        name = f"{version.adapter} {version.label}"
        weights, config_file = version.folder / WEIGHTS, version.folder / CONFIG
        if not weights.is_file() or not config_file.is_file():
            raise AdapterUnusable(f"Adapter {name} is missing its files.")
        for path, key in ((weights, "checksum_sha256"), (config_file, "config_sha256")):
            expected = version.manifest.get(key)  # (versions published before the config had one lack it)
            if expected and _sha256(path) != expected:
                raise AdapterUnusable(f"Adapter {name} failed its checksum ({path.name}).")
        try:
            config, tensors = json.loads(config_file.read_text()), load_file(weights)
        except (OSError, ValueError, RuntimeError) as exc:
            raise AdapterUnusable(f"Adapter {name} cannot be read ({type(exc).__name__}).") from exc
        _check_bounds(name, config)
        return config, tensors

    def newest_usable(self, adapter: str) -> tuple[AdapterVersion, tuple[dict, dict[str, torch.Tensor]]] | None:
        """The newest version up to the served one that passes its checks, with its (config, tensors); a version
        that fails is recorded as unusable on the way. None if no version is usable (train from scratch)."""
        served = self.current(adapter)
        for version in reversed(self.history(adapter) if served else []):
            if version.version > served.version or version.unusable:
                continue
            try:
                return version, self.load_weights(version)
            except AdapterUnusable as exc:
                log.warning("%s Using the version before it.", exc)
                self.store.mark_unusable(adapter, version.version, str(exc))
        return None

    def prune(self, adapter: str, keep: int) -> list[int]:
        """Delete all but the `keep` newest versions of `adapter`, never the served one, its parent or the newest
        usable one (the fallback of a bad served version). Rows go first, in one transaction, then the folders
        (renamed aside, then removed: a folder is either whole at its path or gone). Returns the versions deleted."""
        history = self.history(adapter)
        served = self.current(adapter)
        kept = {v.version for v in history[-keep:]}
        if served is not None:
            kept.add(served.version)
            kept.update(v.version for v in history if v.label == served.manifest.get("parent_version"))
            usable = [v.version for v in history if not v.unusable and v.version <= served.version]
            kept.update(usable[-1:])
        doomed = [v.version for v in history if v.version not in kept]
        self._delete_folders(self.store.forget_versions(adapter, doomed) if doomed else [])
        if doomed:
            log.info("Deleted %d old version(s) of %s, kept %d.", len(doomed), adapter, len(history) - len(doomed))
        return doomed

    def drop_tainted(self, adapter: str) -> int:
        """Delete the versions that learned from erased feedback (rows, then folders); the newest untainted version
        is served instead, or none. Returns how many were deleted."""
        paths = self.store.forget_tainted(adapter)
        self._delete_folders(paths)
        if paths:
            log.info("Deleted %d version(s) of %s that learned from a deleted profile.", len(paths), adapter)
        return len(paths)

    def merged(self, parts: list[tuple[AdapterVersion, float]], model_config) -> Path:
        """The blend `parts` ((version, scale), …) as one adapter (adapters/merge.py), in `_merged/<name>/`: the PEFT
        pair, and the GGUF LoRA for a LLaMA-family base (`model_config`, the base's). The name (`attune-` and 16 hex
        digits) stands for exactly these versions at these scales; written once, in a temporary folder then
        renamed. Deleted with any of its versions (`drop`, `prune`, `drop_tainted`)."""
        sources = [f"{version.adapter}/{version.label}" for version, _ in parts]
        key = "|".join(f"{source}#{version.manifest.get('checksum_sha256')}@{scale:.4f}"
                       for source, (version, scale) in zip(sources, parts))
        target = self.root / MERGED / ("attune-" + hashlib.sha256(key.encode()).hexdigest()[:16])
        if target.is_dir():
            return target
        config, tensors = merge_lora_parts([(*self.load_weights(version), scale) for version, scale in parts])
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
        try:
            save_file({k: v.contiguous() for k, v in tensors.items()}, tmp / WEIGHTS)
            (tmp / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
            if model_config.model_type in GGUF_MODELS:
                write_gguf_lora(tmp / GGUF, config, tensors, model_config)
            (tmp / SOURCES).write_text(json.dumps({"sources": sources, "scales": [s for _, s in parts]}) + "\n")
            os.rename(tmp, target)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            if not target.is_dir():
                raise
            # (another request wrote the same merge first: the same content)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return target

    def merged_with(self, adapter: str) -> list[Path]:
        """The merged adapters' folders that sum a version of `adapter`."""
        return [folder for folder in self._merged_folders() if any(
            s.split("/")[0] == adapter for s in self._sources(folder))]

    def _merged_folders(self) -> list[Path]:
        return sorted((self.root / MERGED).glob("attune-*")) if (self.root / MERGED).is_dir() else []

    @staticmethod
    def _sources(folder: Path) -> list[str]:
        try:
            return json.loads((folder / SOURCES).read_text())["sources"]
        except (OSError, ValueError, KeyError):
            return [""]  # (unreadable: treated as summing anything; it is rebuilt on use)

    def _drop_merged(self, sources: set[str]) -> None:
        """Delete the merged adapters that sum any of `sources` (`adapter/vNNNN`, or `adapter/` for all of them)."""
        for folder in self._merged_folders():
            if any(s in sources or s.split("/")[0] + "/" in sources or not s for s in self._sources(folder)):
                self._delete_folders([f"{MERGED}/{folder.name}"])

    def _delete_folders(self, paths: list[str]) -> None:
        """Rename each version folder aside, then remove it: a folder is whole at its path or gone. The merged
        adapters that sum a version go with it."""
        if paths and not paths[0].startswith(MERGED + "/"):
            self._drop_merged(set(paths))
        for rel in paths:
            folder = self.root / rel
            aside = folder.with_name(f".tmp-deleted-{folder.name}")
            try:
                os.rename(folder, aside)
            except FileNotFoundError:
                continue
            shutil.rmtree(aside, ignore_errors=True)

    def gguf_file(self, version: AdapterVersion) -> Path | None:
        """The version's GGUF LoRA (for llama.cpp) once its checksum matches the manifest's; None if it has none or
        it does not match (then the version is served through torch)."""
        path, expected = version.folder / GGUF, version.manifest.get("gguf_sha256")
        key = (str(path), expected)
        if key not in self._checked_gguf:
            if not expected or not path.is_file() or _sha256(path) != expected:
                return None
            self._checked_gguf.add(key)
        return path

    def files(self, adapter: str) -> list[tuple[str, Path]]:
        """(name inside an archive, file) of every version's files of `adapter`: `adapter/vNNNN/<file>`."""
        return [(f"{adapter}/{version.label}/{file.name}", file) for version in self.history(adapter)
                if version.folder.is_dir() for file in sorted(version.folder.iterdir()) if file.is_file()]

    # ---- writing -------------------------------------------------------------------------------------------

    def publish(self, adapter: str, profile_id: str | None, model: PeftModel, manifest: dict,
                trained_until: str) -> AdapterVersion:
        """Save the model's active LoRA adapter as the next version and make it the served one."""
        parent = self.current(adapter)
        version = max(self.store.highest_version(adapter), self._highest_folder(adapter)) + 1
        folder_rel = f"{adapter}/{version_name(version)}"
        target = self.root / folder_rel
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{version_name(version)}-", dir=target.parent))
        try:
            model.save_pretrained(tmp, safe_serialization=True)
            for extra in tmp.iterdir():  # keep exactly the standard PEFT pair
                if extra.name not in (WEIGHTS, CONFIG):
                    shutil.rmtree(extra) if extra.is_dir() else extra.unlink()
            if model.config.model_type in GGUF_MODELS:  # the same adapter for llama.cpp
                write_gguf_lora(tmp / GGUF, json.loads((tmp / CONFIG).read_text()), load_file(tmp / WEIGHTS),
                                model.config)
            full_manifest = {
                "adapter": adapter,
                "version": version_name(version),
                "parent_version": parent.label if parent else None,
                "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "checksum_sha256": _sha256(tmp / WEIGHTS),
                "config_sha256": _sha256(tmp / CONFIG),
                **({"gguf_sha256": _sha256(tmp / GGUF)} if (tmp / GGUF).exists() else {}),
                **manifest,
            }
            (tmp / MANIFEST).write_text(json.dumps(full_manifest, indent=2) + "\n")
            for f in tmp.iterdir():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
            _fsync_dir(tmp)
            self._step("renamed")
            os.rename(tmp, target)
            _fsync_dir(target.parent)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self._step("pointed")
        self.store.publish_version(adapter, profile_id, version, folder_rel, parent.version if parent else None,
                                   full_manifest, trained_until)
        log.info("Published %s %s", adapter, version_name(version))
        return AdapterVersion(adapter, version, target, full_manifest)

    def drop(self, adapter: str) -> None:
        """Stop serving an adapter and delete its files (its feedback stays stored)."""
        for rel in self.store.drop_adapter(adapter):
            shutil.rmtree(self.root / rel, ignore_errors=True)
        shutil.rmtree(self.root / adapter, ignore_errors=True)
        self._drop_merged({adapter + "/"})

    def remove_strays(self) -> list[Path]:
        """Delete folders no version row points at: leftovers of a publish that crashed before its last step, and
        merged adapters (or their unfinished writes) that sum a version no longer there."""
        known = self.store.known_adapter_paths()
        removed = []
        for folder in sorted((self.root / MERGED).iterdir()) if (self.root / MERGED).is_dir() else []:
            if folder.name.startswith(".tmp-") or not all(s in known for s in self._sources(folder)):
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder)
        for adapter_dir in self.root.iterdir() if self.root.exists() else []:
            if not adapter_dir.is_dir() or adapter_dir.name == MERGED:
                continue
            for folder in adapter_dir.iterdir():
                if f"{adapter_dir.name}/{folder.name}" not in known:
                    shutil.rmtree(folder, ignore_errors=True)
                    removed.append(folder)
        return removed

    def move_renamed_folders(self) -> None:
        """Personal adapters were named `user_<id>` before migration m003 renamed their rows `profile_<id>`: move
        their folders to match (once; safe when the app and the worker start together)."""
        for old in self.root.glob("user_*"):
            new = self.root / ("profile_" + old.name.removeprefix("user_"))
            if old.is_dir() and not new.exists():
                try:
                    os.rename(old, new)
                except FileNotFoundError:  # the other process moved it first
                    continue
                log.info("Moved %s to %s (profiles are no longer called users).", old.name, new.name)

    def _highest_folder(self, adapter: str) -> int:
        folder = self.root / adapter
        numbers = [int(p.name[1:]) for p in folder.glob("v[0-9][0-9][0-9][0-9]")] if folder.exists() else []
        return max(numbers, default=0)

    def _step(self, name: str) -> None:
        """A named point in `publish`; tests interrupt it here to check that a crash loses nothing."""
