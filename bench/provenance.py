"""What produced a result file: the commit, whether the tree had uncommitted changes, the resolved configuration and
the machine, so that a figure can be traced and repeated.

    result = {"benchmark": "learning_curve", **provenance(asdict(config)), ...}
"""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

from bench.model_speed import machine

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parent.parent


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
    run, JSON-serialisable), "machine": `bench.model_speed.machine()`}."""
    head = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no")
    commit = head.strip() if head else None
    dirty = bool(status.strip()) if status is not None else None
    if dirty:
        log.warning("uncommitted changes in the tree: the result will not repeat from commit %s alone", commit)
    return {"commit": commit, "dirty": dirty, "config": config, "machine": machine()}
