"""What produced a result file: the commit, whether the tree had uncommitted changes, the resolved configuration and
the machine, so that a figure can be traced and repeated.

    result = {"benchmark": "learning_curve", **provenance(asdict(config)), ...}
"""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
from pathlib import Path

import torch

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parent.parent


def machine() -> dict:
    """The CPU, cores, memory and software a result was measured with."""
    cpu = ""
    if Path("/proc/cpuinfo").exists():
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), "")
    mem_kb = 0
    if Path("/proc/meminfo").exists():
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem_kb / 2**20, 1),
            "python": platform.python_version(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "platform": platform.platform()}


def _git(*args: str) -> str | None:
    """The output of a git command run in the repository, or None when git or the repository is missing."""
    try:
        out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("git %s failed: %s", " ".join(args), exc)
        return None
    return out.stdout


def provenance(config: dict | None = None) -> dict:
    """{"commit": the full hash of HEAD (None outside a git checkout), "dirty": True when tracked files differ from
    HEAD (untracked files are ignored; None when unknown), "config": `config` as given (the resolved settings of the
    run, JSON-serialisable), "machine": `machine()`}."""
    head = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no")
    commit = head.strip() if head else None
    dirty = bool(status.strip()) if status is not None else None
    if dirty:
        log.warning("uncommitted changes in the tree: the result will not repeat from commit %s alone", commit)
    return {"commit": commit, "dirty": dirty, "config": config, "machine": machine()}


def write_result(path: Path, result: dict, config: dict | None = None) -> None:
    """Write a benchmark's `result` as JSON with its provenance: the commit and dirty flag always, the machine and
    `config` (the resolved settings) unless the result already records them."""
    stamp = provenance(config)
    full = {**result, "commit": stamp["commit"], "dirty": stamp["dirty"]}
    for key in ("config", "machine"):
        full.setdefault(key, stamp[key])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(full, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    log.info("Wrote %s (commit %s%s).", path, (stamp["commit"] or "unknown")[:12], ", dirty" if stamp["dirty"] else "")
