"""Each profile's learned reward in the product: its votes' features kept, θ refitted after every vote (on the
learner's own thread, the vote's request returns first), versioned in the database beside the adapter versions, read
by the RLOO objective and best-of-n serving.

θ_profile = θ_global + δ: everyone's reward is the prior centre of each profile's (`RewardConfig.prior`), so a
newcomer starts from the crowd's taste and a regular's votes move their own; the fit is in everyone's space, the
top principal directions of the replies everyone voted on (`RewardConfig.components`), and before everyone's reward
exists on φ itself (`RewardConfig.alone_prior`). Everyone's reward is refitted after
`LearningConfig.global_every` new events from the contributors' already-computed features, held to the global
adapter's rules (`adapters.jobs.contributors`, `max_per_profile`), and only once `min_profiles` contribute.
Accuracy is measured on the same held-out votes as the adapters' (`adapters.jobs.held_out`), never trained on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait

import torch

from adapters.data import Examples, encode, examples_from_feedback
from adapters.jobs import contributors, split_held_out
from adapters.reward import (Fitted, Scale, Votes, everyday_scale, feature_layer, fit, ordered, principal_basis,
                             project, raw_features)
from assistant.config import LearningConfig
from assistant.model import LoadedModel
from storage.store import Store

log = logging.getLogger(__name__)

Item = tuple[list[dict], str, bool]
"""(conversation up to the prompt, reply, whether the reply ended by itself)."""


class RewardLearner:
    def __init__(self, store: Store, loaded: LoadedModel, config: LearningConfig):
        self.store, self.loaded, self.learning, self.config = store, loaded, config, config.reward
        self.layer = feature_layer(loaded, self.config.layer)
        self.kind = f"{loaded.model_id}|hidden{self.layer}+fluency+length|v2"
        self._scale: Scale | None = None
        self._lock, self._scale_lock = threading.Lock(), threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._pending: list[Future] = []
        self._queued: set[str] = set()

    # ---- features ----------------------------------------------------------------------------------------------

    def scale(self) -> Scale:
        with self._scale_lock:
            if self._scale is None:
                self._scale = everyday_scale(self.loaded, self.layer)
            return self._scale

    def _key(self, item: Item) -> str:
        return hashlib.sha256(json.dumps([self.kind, *item]).encode()).hexdigest()

    def features(self, profile_id: str, items: list[Item], compute: bool = True) -> torch.Tensor:
        """Standardised φ of each item, shape (items, d): stored ones read back, the others computed and stored.
        compute=False: a missing one is a row of NaN."""
        keys = [self._key(i) for i in items]
        stored = self.store.reward_features(profile_id, keys)
        missing = [k for k in dict.fromkeys(keys) if k not in stored]
        if missing and compute:
            fresh = self.compute([items[keys.index(k)] for k in missing])
            vectors = {k: v.numpy().tobytes() for k, v in zip(missing, fresh)}
            self.store.save_reward_features(profile_id, vectors)
            stored = {**stored, **vectors}
        scale = self.scale()
        rows = [torch.frombuffer(bytearray(stored[k]), dtype=torch.float32) if k in stored
                else torch.full_like(scale.mean, float("nan")) for k in keys]
        return scale(torch.stack(rows)) if rows else torch.zeros(0, len(scale.mean))

    def compute(self, items: list[Item]) -> torch.Tensor:
        """Raw (unstandardised) φ of each item, by the base model."""
        train = self.learning.train
        sequences = [encode(self.loaded, prompt, reply, train.max_length, train.max_prompt_tokens, ended)
                     for prompt, reply, ended in items]
        return raw_features(self.loaded.model, sequences, self.loaded.tokenizer.pad_token_id, self.layer)

    def votes(self, profile_id: str, examples: Examples, compute: bool = True) -> Votes:
        return self.replies_and_votes(profile_id, examples, compute)[1]

    def replies_and_votes(self, profile_id: str, examples: Examples, compute: bool = True) -> tuple[torch.Tensor,
                                                                                                     Votes]:
        """φ of every reply the examples are about (rows with a feature missing left out), and the votes on them."""
        items = [i for p in examples.pairs for i in ((p.prompt, p.chosen, p.chosen_ended),
                                                     (p.prompt, p.rejected, p.rejected_ended))]
        items += [(u.prompt, u.completion, u.ended) for u in examples.unpaired]
        phi = self.features(profile_id, items, compute)
        n = 2 * len(examples.pairs)
        pairs, thumbs = phi[0:n:2] - phi[1:n:2], phi[n:]
        labels = torch.tensor([u.label for u in examples.unpaired], dtype=torch.bool)
        keep_pairs, keep_thumbs = ~pairs.isnan().any(1), ~thumbs.isnan().any(1)
        return phi[~phi.isnan().any(1)], Votes(pairs[keep_pairs], thumbs[keep_thumbs], labels[keep_thumbs])

    # ---- fitting -----------------------------------------------------------------------------------------------

    def current(self, profile_id: str | None) -> Fitted | None:
        """The newest reward of this profile (None: everyone's), if it reads today's features."""
        row = self.store.current_reward(profile_id)
        return Fitted.from_bytes(row["theta"]) if row and row["kind"] == self.kind else None

    def everyone(self) -> tuple[Fitted, torch.Tensor] | None:
        """Everyone's reward and the map of φ into its space (`principal_basis`), if it reads today's features."""
        row = self.store.current_reward(None)
        if not row or row["kind"] != self.kind or row["basis"] is None:
            return None
        d = len(self.scale().mean)
        basis = torch.frombuffer(bytearray(row["basis"]), dtype=torch.float32).reshape(d, -1).clone()
        return Fitted.from_bytes(row["theta"]), basis

    def _fit(self, votes: Votes) -> tuple[Fitted, str]:
        """The profile's MAP fit: in everyone's space around everyone's reward when it exists, else on φ itself;
        the weights always on φ. Returns them and which space."""
        found = self.everyone() if self.config.components else None
        if found is None:
            return fit(votes, torch.zeros(len(self.scale().mean)), self.config.alone_prior,
                       self.config.thumbs_weight), "phi"
        everyone, basis = found
        center = torch.linalg.lstsq(basis.double(), everyone.theta.double()[:, None]).solution[:, 0].float()
        fitted = fit(project(votes, basis), center, self.config.prior, self.config.thumbs_weight)
        return Fitted(basis @ fitted.theta, fitted.z), f"everyone's {basis.shape[1]}"

    def update(self, profile_id: str) -> dict:
        """Refit this profile's reward on its votes (held-out ones aside) and publish it as a new version; refit
        everyone's when due. Returns the version row (its metrics: events, held-out accuracy, timings)."""
        began = time.perf_counter()
        events = self.store.feedback(profile_id)
        trainable, held = split_held_out(events, self.learning)
        train_votes = self.votes(profile_id, examples_from_feedback(trainable))
        held_votes = self.votes(profile_id, examples_from_feedback(held))
        featured = time.perf_counter()
        fitted, space = self._fit(train_votes)
        right, total = ordered(fitted, held_votes)
        done = time.perf_counter()
        metrics = {"events": len(events), "train_votes": len(train_votes), "space": space, "held_out_pairs": total,
                   "held_out_right": right, "accuracy": round(right / total, 4) if total else None,
                   "features_ms": round(1000 * (featured - began), 1), "fit_ms": round(1000 * (done - featured), 1)}
        row = self.store.publish_reward(profile_id, self.kind, fitted.to_bytes(), metrics, self.config.keep_versions)
        self._update_global_if_due()
        return row

    def _update_global_if_due(self) -> None:
        last = self.store.current_reward(None)
        total = self.store.feedback_counts()["total"]
        if last and last["kind"] == self.kind and total < last["metrics"]["events"] + self.learning.global_every:
            return
        owners = contributors(self.store, self.learning)
        if len(set(owners.values())) < self.learning.min_profiles:
            return
        replies, parts = [], []
        for profile_id in owners:
            trainable, _ = split_held_out(self.store.feedback(profile_id), self.learning)
            newest = sorted(trainable, key=lambda e: e["updated_at"])[-self.learning.max_per_profile:]
            phi, votes = self.replies_and_votes(profile_id, examples_from_feedback(newest, private=False), False)
            replies.append(phi)
            parts.append(votes)
        d = len(self.scale().mean)
        shown = torch.cat(replies)
        if len(shown) < 2:
            return
        basis = principal_basis(shown, self.config.components) if self.config.components else torch.eye(d)
        fitted = fit(project(Votes.join(parts, d), basis), torch.zeros(basis.shape[1]), self.config.global_prior,
                     self.config.thumbs_weight)
        self.store.publish_reward(None, self.kind, Fitted(basis @ fitted.theta, fitted.z).to_bytes(),
                                  {"events": total, "profiles": len(owners), "replies": len(shown),
                                   "components": basis.shape[1] - 2 if self.config.components else 0},
                                  self.config.keep_versions, basis=basis.float().numpy().tobytes())
        log.info("Everyone's reward refitted on %d profiles' votes (%d replies)", len(owners), len(shown))

    # ---- refits after the vote --------------------------------------------------------------------------------

    def refit_later(self, profile_id: str) -> None:
        """Queue a refit of this profile's reward on the learner's own thread and return at once: the vote's request
        does not wait for the reply features' forward pass (0.7–2 s on the busy 2-core machine). A profile whose
        refit is already queued, not started, is not queued twice: that refit will read this vote too."""
        with self._lock:
            if profile_id in self._queued:
                return
            self._queued.add(profile_id)
            if self._pool is None:
                self._pool = ThreadPoolExecutor(1, thread_name_prefix="reward-refit")
            self._pending.append(self._pool.submit(self._refit, profile_id))

    def _refit(self, profile_id: str) -> None:
        with self._lock:
            self._queued.discard(profile_id)  # (a vote from now on queues another refit)
        try:
            row = self.update(profile_id)
        except Exception:  # noqa: BLE001 — a failed refit must not lose the vote, which is stored already
            log.exception("The reward of profile %s could not be refitted; the previous version stays", profile_id)
            return
        m = row["metrics"]
        log.info("Reward of profile %s: version %d, held-out %s/%s, features %.0f ms, fit %.0f ms", profile_id,
                 row["version"], m["held_out_right"], m["held_out_pairs"], m["features_ms"], m["fit_ms"])

    def settle(self) -> None:
        """Wait until every refit queued so far is done (before erasing or exporting a profile, and in benchmarks)."""
        with self._lock:
            pending, self._pending = self._pending, []
        wait(pending)

    # ---- reading -----------------------------------------------------------------------------------------------

    def trusted(self, profile_id: str) -> bool:
        """Whether this profile's reward orders enough of its held-out votes right (`RewardConfig.trust_*`)."""
        row = self.store.current_reward(profile_id)
        if not row or row["kind"] != self.kind:
            return False
        m = row["metrics"]
        return m["held_out_pairs"] >= self.config.trust_min_pairs and m["accuracy"] >= self.config.trust_accuracy

    def scorer(self, profile_id: str | None) -> Fitted | None:
        """The weights that score replies for this profile: its own reward, else everyone's, else None."""
        return (self.current(profile_id) if profile_id else None) or self.current(None)

    def score(self, fitted: Fitted, items: list[Item]) -> list[float]:
        """θᵀφ of each item (computed now, not stored: the replies may never be voted on)."""
        return (self.scale()(self.compute(items)) @ fitted.theta).tolist()
