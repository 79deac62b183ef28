"""Serving base + global + α·personal, per request, without a shared "active adapter".

Each LoRA target module of the served model is wrapped once. The wrapper adds x·Aᵀ·Bᵀ where A and B come from
the blend the *current thread* is generating with, so two profiles generating at the same time each get
their own. Global and personal are concatenated along the rank axis (A = [A_g; A_p], B = [s_g·B_g, α·s_p·B_p])
so a blend costs one pair of small matmuls per module, whatever it contains. Adapter tensors and blends live
in LRU caches of bounded size; anything else is read from disk (safetensors) on demand.

α = n / (n + k) for a profile with n feedback events, unless the profile pinned it with the slider; 0 when
the personal adapter scored below global-only on the profile's held-out votes.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from adapters.evaluation import HeldOutEval
from adapters.lora import lora_updates
from adapters.registry import GLOBAL, AdapterRegistry, AdapterVersion, personal_adapter, version_name
from assistant.config import BlendConfig
from assistant.model import LoadedModel
from storage.errors import AdapterUnusable
from storage.store import Store

log = logging.getLogger(__name__)

Weights = dict[str, tuple[torch.Tensor, torch.Tensor]]  # module path → (A (r, in), B·scale (out, r))


def auto_alpha(n: int, k: float) -> float:
    return n / (n + k) if n > 0 else 0.0


ALPHA_STEP = 0.05
"""α is rounded to this step in a merged adapter (`AdapterServer.merged_adapter`), so a server holds at most 21 of
them per pair of versions."""


@dataclass(frozen=True)
class Blend:
    """What a reply is generated with; `record()` is stored in the message row."""

    global_version: int | None
    personal_version: int | None
    alpha: float
    reason: str
    profile_id: str | None = None

    def record(self) -> dict:
        return {
            "global": version_name(self.global_version) if self.global_version else None,
            "personal": version_name(self.personal_version) if self.personal_version else None,
            "alpha": round(self.alpha, 4),
            "alpha_reason": self.reason,
        }


class _BlendedLoRA(nn.Module):
    """A target module plus the LoRA update of the calling thread's blend (none: exactly the base module)."""

    def __init__(self, base: nn.Module, path: str, local: threading.local):
        super().__init__()
        self.base = base
        self.path = path
        self._local = local

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        weights = getattr(self._local, "weights", None)
        if weights:
            ab = weights.get(self.path)
            if ab is not None:
                a, b = ab  # (r, in), (out, r)
                flat = out.reshape(-1, out.shape[-1])
                out = torch.addmm(flat, x.reshape(-1, x.shape[-1]) @ a.T, b.T).view_as(out)
        return out


def _features(model: nn.Module) -> dict[str, tuple[int, int]]:
    """(input, output) features of each module a LoRA adapter may target: linear layers and GPT-2's Conv1D."""
    found = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            found[name] = (module.in_features, module.out_features)
        elif type(module).__name__ == "Conv1D":  # transformers' GPT-2 layer: weight (in, out)
            found[name] = tuple(module.weight.shape)
    return found


class AdapterServer:
    def __init__(self, loaded: LoadedModel, registry: AdapterRegistry, store: Store, config: BlendConfig):
        self.loaded = loaded
        self.registry = registry
        self.store = store
        self.config = config
        self._features = _features(loaded.model)  # read before any module is wrapped
        self._gguf: dict[tuple[str, int], Path | None] = {}  # (adapter, version) → its checked GGUF file
        self._merged: dict[tuple, Path] = {}  # ((adapter, version, scale), …) → its merged adapter's folder
        self._local = threading.local()
        self._lock = threading.Lock()
        self._adapters: OrderedDict[tuple[str, int], Weights] = OrderedDict()
        self._blends: OrderedDict[tuple, Weights] = OrderedDict()
        self.loads_from_disk = 0
        self.paths: set[str] = set()
        """Modules wrapped so far: those some adapter read has covered (the others run untouched)."""

    def _wrap(self, paths) -> None:
        """Wrap these modules (once). Safe while others generate: a wrapper with no weights for the calling
        thread computes exactly what the module did, and swapping an attribute is atomic."""
        model = self.loaded.model
        with self._lock:
            for path in sorted(set(paths) - self.paths):
                parent_path, _, child = path.rpartition(".")
                parent = model.get_submodule(parent_path) if parent_path else model
                setattr(parent, child, _BlendedLoRA(getattr(parent, child), path, self._local))
                self.paths.add(path)

    # ---- which blend ---------------------------------------------------------------------------------------

    def blend_for(self, profile_id: str | None) -> Blend:
        """The newest published versions and this profile's α (read fresh, so new versions serve at once)."""
        global_v = self.usable(GLOBAL)
        if profile_id is None:
            return Blend(global_v.version if global_v else None, None, 0.0, "no profile")
        personal_v = self.usable(personal_adapter(profile_id))
        user = self.store.get_profile(profile_id)
        if personal_v is None:
            return Blend(global_v.version if global_v else None, None, 0.0, "no personal adapter yet", profile_id)
        gate = gate_reason(personal_v)
        if user.get("alpha_override") is not None:
            alpha, reason = float(user["alpha_override"]), "set by you"
        elif gate:
            alpha, reason = 0.0, gate
        else:
            n = self.store.feedback_counts(profile_id)["total"]
            alpha, reason = auto_alpha(n, self.config.k), f"n/(n+k) with n={n}, k={self.config.k:g}"
        return Blend(global_v.version if global_v else None, personal_v.version if alpha > 0 else None, alpha,
                     reason, profile_id)

    def usable(self, adapter: str) -> AdapterVersion | None:
        """The newest version of `adapter`, up to the served one, whose files load and pass their checks (read and
        cached here). One that does not is recorded as unusable and the one before it is tried: a corrupted file
        falls back to the previous version, else to no adapter, and replies go on."""
        served = self.registry.current(adapter)
        if served is None:
            return None
        with self._lock:
            if (adapter, served.version) in self._adapters:  # read and checked already: every reply after the first
                return served
        for version in reversed(self.registry.history(adapter)):
            if version.version > served.version or version.unusable or (version.tainted and
                                                                         not self.config.serve_tainted):
                continue
            try:
                self._adapter(adapter, version.version)
            except AdapterUnusable as exc:
                log.warning("%s Serving the version before it.", exc)
                self.store.mark_unusable(adapter, version.version, str(exc))
                self.forget(adapter)
                continue
            return version
        return None

    @contextmanager
    def activate(self, blend: Blend) -> Iterator[None]:
        """Generate with `blend` on the calling thread for the duration of the block."""
        previous = getattr(self._local, "weights", None)
        self._local.weights = self.weights(blend)
        try:
            yield
        finally:
            self._local.weights = previous

    # ---- weights -------------------------------------------------------------------------------------------

    def weights(self, blend: Blend) -> Weights:
        key = (blend.global_version, blend.profile_id if blend.personal_version else None, blend.personal_version,
               round(blend.alpha, 4))
        with self._lock:
            if key in self._blends:
                self._blends.move_to_end(key)
                return self._blends[key]
        parts: list[tuple[Weights, float]] = []
        if blend.global_version:
            parts.append((self._adapter(GLOBAL, blend.global_version), 1.0))
        if blend.personal_version and blend.alpha > 0:
            parts.append((self._adapter(personal_adapter(blend.profile_id), blend.personal_version), blend.alpha))
        combined: Weights = {}
        for path in sorted({p for w, _ in parts for p in w}):
            pieces = [(w[path][0], w[path][1] * scale) for w, scale in parts if path in w]
            if pieces:
                combined[path] = (torch.cat([a for a, _ in pieces], 0).contiguous(),
                                  torch.cat([b for _, b in pieces], 1).contiguous())
        with self._lock:
            self._blends[key] = combined
            while len(self._blends) > self.config.cache_size:
                self._blends.popitem(last=False)
        return combined

    def _adapter(self, adapter: str, version: int) -> Weights:
        key = (adapter, version)
        with self._lock:
            if key in self._adapters:
                self._adapters.move_to_end(key)
                return self._adapters[key]
        found = next((v for v in self.registry.history(adapter) if v.version == version), None)
        if found is None:
            return {}
        weights = self._read(found)
        with self._lock:
            self._adapters[key] = weights
            while len(self._adapters) > self.config.cache_size:
                self._adapters.popitem(last=False)
        return weights

    def _read(self, version: AdapterVersion) -> Weights:
        out: Weights = lora_updates(*self.registry.load_weights(version))
        for path, (a, b) in out.items():  # the target modules exist in this base model, with these shapes
            if self._features.get(path) != (a.shape[1], b.shape[0]) or a.shape[0] != b.shape[1]:
                raise AdapterUnusable(f"Adapter {version.adapter} {version.label} does not fit this model "
                                      f"(module {path}).")
        self.loads_from_disk += 1
        self._wrap(out)
        return out

    def gguf_adapters(self, blend: Blend) -> list[tuple[Path, float]] | None:
        """The blend as llama.cpp takes it: (GGUF LoRA file, scale) for the global version at 1 and the personal one
        at α, each file checked once against its manifest's `gguf_sha256`. None when a version has no GGUF file (it
        was published before they were written): that request decodes with torch."""
        found = []
        for adapter, version, scale in _parts(blend):
            key = (adapter, version)
            if key not in self._gguf:  # (once per version: the history walk and checksum stay off the reply path)
                entry = next((v for v in self.registry.history(adapter) if v.version == version), None)
                self._gguf[key] = self.registry.gguf_file(entry) if entry else None
            if self._gguf[key] is None:
                return None
            found.append((self._gguf[key], scale))
        return found

    def merged_adapter(self, blend: Blend) -> list[tuple[Path, float]]:
        """The blend as a server that takes one adapter per request needs it: [(merged adapter folder, 1.0)] summing
        the global version at 1 and the personal one at α rounded to `ALPHA_STEP` (registry.merged); [] for the
        bare base model. Cached per blend while its folder exists."""
        parts = [(a, v, s) for a, v, s in ((a, v, round(s / ALPHA_STEP) * ALPHA_STEP) for a, v, s in _parts(blend))
                 if s != 0.0]
        if not parts:
            return []
        key = tuple(parts)
        with self._lock:
            folder = self._merged.get(key)
        if folder is None or not folder.is_dir():
            versions = [(next(v for v in self.registry.history(a) if v.version == version), scale)
                        for a, version, scale in parts]
            folder = self.registry.merged(versions, self.loaded.model.config)
            with self._lock:
                self._merged[key] = folder
        return [(folder, 1.0)]

    def forget(self, adapter: str) -> None:
        """Drop cached tensors of an adapter (after a reset)."""
        with self._lock:
            for key in [k for k in self._adapters if k[0] == adapter]:
                del self._adapters[key]
            for key in [k for k in self._gguf if k[0] == adapter]:
                del self._gguf[key]
            for key in [k for k in self._merged if any(part[0] == adapter for part in k)]:
                del self._merged[key]
            self._blends.clear()



def _parts(blend: Blend) -> list[tuple[str, int, float]]:
    """(adapter, version, scale) of what a blend adds to the base: the global version at 1, the personal one at α;
    absent versions and zero scales left out."""
    return [(adapter, version, scale) for adapter, version, scale in (
        (GLOBAL, blend.global_version, 1.0), (personal_adapter(blend.profile_id or ""), blend.personal_version,
                                              blend.alpha)) if version is not None and scale != 0.0]

GATE_P_VALUE = 0.1
"""A personal version is held back only when its held-out votes show it worse than global-only at this level."""


def sign_test_p(worse: int, better: int) -> float:
    """One-sided sign test: the chance of at least `worse` losses among the `worse + better` held-out pairs on
    which the two models disagree, if neither were better."""
    n = worse + better
    return sum(math.comb(n, k) for k in range(worse, n + 1)) / 2 ** n if n else 1.0


def gate_reason(personal: AdapterVersion) -> str | None:
    """Why a personal version should not be served: on the held-out votes where it and global-only disagree, it
    is right significantly less often (sign test, p < GATE_P_VALUE). With a handful of held-out votes a plain
    accuracy comparison is mostly noise: it held back adapters that served the person better."""
    ev = HeldOutEval.from_metrics(personal.manifest.get("metrics", {}))
    mine, global_ = ev.accuracy_personal, ev.accuracy_global
    if mine is None or global_ is None or not ev.pairs or mine >= global_:
        return None
    worse, better = ev.only_global_right, ev.only_personal_right
    if worse is not None and better is not None and sign_test_p(int(worse), int(better)) >= GATE_P_VALUE:
        return None  # worse on these votes, but not clearly: serve it
    return (f"your adapter scored {mine:.0%} on {ev.pairs} held-out votes of yours, below the global adapter's "
            f"{global_:.0%}: serving the global taste until it does better")
