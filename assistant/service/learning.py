"""The learning half of the chat service: feedback queues training; the Learning panel's facts; the weight α;
train now, reset; what the person taught, told in the chat and shown before and after."""

from __future__ import annotations


from adapters.blend import auto_alpha, gate_reason
from adapters.evaluation import HeldOutEval
from adapters.jobs import contributors, enqueue_due, enqueue_now
from adapters.registry import GLOBAL, personal_adapter
from assistant.config import DEFAULT_SYSTEM_PROMPT, GenerationSettings
from assistant.generation import ReplyStream
from assistant.prompts import Prompt, build_prompt
from storage.errors import InvalidInput

BEFORE_AFTER_TOKENS = 128
"""The length of each reply in the before/after view (greedy, so the two differ only by what was learned)."""


class Learning:
    """Mixed into `ChatService` (assistant/service/chat.py), whose attributes it uses: store, loaded, config,
    executor, adapters (None: learning is off) and learning."""

    def _learned(self, profile_id: str, personal: str | None) -> str | None:
        """What to tell the person when `personal`, the version about to write, is not the one that wrote their
        previous reply: a new version of their adapter has started serving."""
        if not personal or not self.adapters or self.store.last_personal_version(profile_id) == personal:
            return None
        adapter = personal_adapter(profile_id)
        votes = (self.store.feedback_counts(profile_id)["total"]
                 - self.store.feedback_counts(profile_id, self.store.trained_until(adapter))["total"])
        taught = "your vote" if votes == 1 else f"your {votes} votes so far"
        return f"✨ Attune has learned from {taught} (version {int(personal[1:])}): this reply is written with it."

    def _decoding(self, blend, profile_id: str) -> dict:
        """How a reply with `blend` for `profile_id` is decoded (`ReplyStream`'s arguments): by llama.cpp with the
        blend's GGUF adapters when it serves and every version has its GGUF file; else by torch with the blend
        activated on the generating thread."""
        if self.decoder is not None and getattr(self.decoder, "one_adapter", False):  # (a server: one merged adapter)
            merged = self.adapters.merged_adapter(blend) if (blend and self.adapters) else []
            return {"decoder": self.decoder, "decoder_adapters": merged, "owner": profile_id}
        if self.decoder is not None:
            gguf = self.adapters.gguf_adapters(blend) if (blend and self.adapters) else []
            if gguf is not None:
                return {"decoder": self.decoder, "decoder_adapters": gguf, "owner": profile_id}
        return {"activate": (lambda: self.adapters.activate(blend)) if blend else None}

    def _after_feedback(self, profile_id: str) -> None:
        """The feedback is committed; queue training if enough new events arrived (the worker picks it up) and a
        refit of the profile's reward."""
        if self.adapters:
            enqueue_due(self.store, profile_id, self.learning)
        if self.rewards:
            self.rewards.refit_later(profile_id)  # on its own thread: the vote returns now

    def _reward_status(self, profile_id: str) -> dict | None:
        """The profile's learned reward for the Learning panel: its held-out record and whether best-of-n uses it."""
        row = self.store.current_reward(profile_id) if self.rewards else None
        if row is None:
            return None
        config = self.learning.reward
        return {"version": row["version"], "right": row["metrics"].get("held_out_right"),
                "pairs": row["metrics"].get("held_out_pairs"), "trusted": self.rewards.trusted(profile_id),
                "best_of": config.best_of, "trust_accuracy": config.trust_accuracy,
                "trust_min_pairs": config.trust_min_pairs}

    def train_now(self, profile_id: str) -> list[dict]:
        self._require_learning()
        if not self.store.feedback_counts(profile_id)["total"]:
            raise InvalidInput("There is no feedback to learn from yet: vote on a reply or compare two.")
        return enqueue_now(self.store, profile_id)

    def reset_personal(self, profile_id: str) -> None:
        """Drop this profile's personal adapter (its feedback stays stored)."""
        self._require_learning()
        self.store.get_profile(profile_id)
        self.store.cancel_jobs(personal_adapter(profile_id))
        self._forget_decoded(profile_id)
        self.adapters.registry.drop(personal_adapter(profile_id))
        self.adapters.forget(personal_adapter(profile_id))

    def set_alpha(self, profile_id: str, alpha: float | None) -> None:
        self.store.set_alpha_override(profile_id, alpha)

    def learning_status(self, profile_id: str) -> dict:
        """What the Learning panel shows for a profile."""
        self._require_learning()
        registry = self.adapters.registry
        mine = personal_adapter(profile_id)
        personal, global_ = registry.current(mine), registry.current(GLOBAL)
        blend = self.adapters.blend_for(profile_id)
        user = self.store.get_profile(profile_id)
        n = self.store.feedback_counts(profile_id)
        histories = {mine: registry.history(mine), GLOBAL: registry.history(GLOBAL)}  # read once per refresh
        if user.get("alpha_override") is not None:
            source = "you"
        elif personal is None:
            source = "none"
        else:
            source = "held back" if gate_reason(personal) else "auto"
        note, sent, learned = self.note_state(profile_id, blend)
        return {
            "note": {"text": note, "sent": sent, "learned": learned},
            "reward": self._reward_status(profile_id),
            "feedback": n,
            "since_personal": self.store.feedback_counts(profile_id, self.store.trained_until(mine)),
            "personal": _version_info(personal),
            "global": _version_info(global_),
            "alpha": blend.alpha,
            "alpha_reason": blend.reason,
            "alpha_auto": auto_alpha(n["total"], self.adapters.config.k),
            "alpha_override": user.get("alpha_override"),
            "alpha_source": source,
            "k": self.adapters.config.k,
            "jobs": self.store.active_jobs([mine, GLOBAL]),
            "job": self.store.latest_job(mine),
            "global_job": self.store.latest_job(GLOBAL),
            # (counted while everyone's adapter waits for its first version only: it reads all feedback, and the
            # panel refreshes every 2 s)
            "global_profiles": {"profiles": len(set(contributors(self.store, self.learning).values()))
                                if global_ is None else None, "needed": self.learning.min_profiles},
            "history": [{"version": v.label, **HeldOutEval.from_metrics(v.manifest.get("metrics", {})).to_metrics()}
                        for v in histories[mine]],
            "every": self.learning.personal_every,
            "record": self._record(profile_id),
            "worker": self.store.worker_heartbeat(),
            "unusable": [{"whose": whose, "version": v.version, "reason": v.unusable}
                         for whose, adapter in (("yours", mine), ("everyone's", GLOBAL))
                         for v in histories[adapter] if v.unusable],
        }

    def _record(self, profile_id: str) -> list[dict]:
        """This profile's choices for or against each exploration probe's candidates (the crowd's and its own words'
        too: `own`), with its instruction."""
        own = {p.name: p.instruction for p in self._own_probes(profile_id)}
        mine, everyone = self.store.probe_records(profile_id)
        instructions = {p.name: p.instruction for p in (*self.config.explore.probes, *self.crowd_probes(everyone))}
        instructions |= own
        return [{"probe": name, "instruction": instructions[name], "chosen": won, "shown": won + lost,
                 "own": name in own} for name, (won, lost) in mine.items() if name in instructions]

    def before_after(self, profile_id: str, message_id: str) -> dict:
        """One of the person's own earlier messages answered by the bare base model and by what serves them today
        (their blend), both greedy and as a single turn, so the difference is what Attune learned."""
        self._require_learning()
        message = self.store.get_message(profile_id, message_id)
        if message.role != "user":
            raise InvalidInput("Pick one of your own messages.")
        system = message.settings.get("system_prompt", DEFAULT_SYSTEM_PROMPT)
        settings = GenerationSettings(system_prompt=system, temperature=0.0, max_new_tokens=BEFORE_AFTER_TOKENS)
        prompt = build_prompt(self.loaded, system, [{"role": "user", "content": message.content}],
                              settings.max_new_tokens)
        blend = self.adapters.blend_for(profile_id)
        return {"message": message.content, "before": self._written(prompt, settings, None, profile_id),
                "after": self._written(prompt, settings, blend, profile_id), "blend": blend.record()}

    def _written(self, prompt: Prompt, settings: GenerationSettings, blend, profile_id: str) -> str:
        """A whole reply to `prompt` for `profile_id`, written with `blend` (None: the bare base model)."""
        stream = ReplyStream(self.loaded, prompt, settings, executor=self.executor,
                             **self._decoding(blend, profile_id))
        for _ in stream:
            pass
        return stream.texts[0]

    def _require_learning(self) -> None:
        if not self.adapters:
            raise InvalidInput("Learning is switched off in this app (started without adapters).")


def _version_info(version) -> dict | None:
    if version is None:
        return None
    return {"version": version.label, "created_at": version.manifest.get("created_at"),
            "metrics": version.manifest.get("metrics", {})}
