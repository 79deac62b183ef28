"""The chat service: everything the UI (or any other front end) asks of Attune, by ids.

Every method checks that the ids belong to the profile making the request; what it stores is committed
before it returns or yields its final update.
"""

from __future__ import annotations

import logging
import random
import threading
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, replace

from adapters.blend import AdapterServer, auto_alpha
from adapters.evaluation import HeldOutEval
from adapters.jobs import enqueue_due, enqueue_now
from adapters.registry import GLOBAL, personal_adapter
from assistant.config import AppConfig, GenerationSettings, LearningConfig, Probe
from assistant.executor import GenerationExecutor
from assistant.explore import choose_arms, probed
from assistant.generation import ReplyStream
from assistant.model import LoadedModel
from assistant.prompts import Prompt, build_prompt
from storage.errors import Conflict, InvalidInput, NotFound
from storage.store import Comparison, Message, Store

log = logging.getLogger(__name__)

TITLE_CHARS = 48
NEW_TITLE = "New conversation"
"""The title of a conversation opened before its first message; that message then titles it."""
_ALLOWED_CONTROL = {"\n", "\t", "\r"}


@dataclass(frozen=True)
class ReplyUpdate:
    """One step of a reply being produced."""

    conversation_id: str
    user_message: Message
    texts: list[str]
    """The text so far of each candidate (one in chat mode, A and B in compare mode)."""
    done: bool = False
    notice: str | None = None
    """Something the person should know, e.g. that old turns were left out to fit the context window."""
    reply: Message | None = None
    """Chat mode, when done: the stored reply."""
    comparison: Comparison | None = None
    """Compare mode, when done: the stored comparison."""
    learned: str | None = None
    """Set when this reply is the first written with a new personal version: what the person taught, in words."""


def validate_message(text: object, max_chars: int) -> str:
    """Return the message to send, or raise InvalidInput saying what to change (nothing is stored)."""
    if not isinstance(text, str):
        raise InvalidInput("A message must be text.")
    if not text.strip():
        raise InvalidInput("Type a message first: it is empty.")
    if len(text) > max_chars:
        raise InvalidInput(f"Your message has {len(text):,} characters; the limit is {max_chars:,}. "
                           "Nothing was sent and your text is still in the box.")
    for position, ch in enumerate(text):
        if unicodedata.category(ch) == "Cc" and ch not in _ALLOWED_CONTROL:
            raise InvalidInput(f"Your message contains a control character (U+{ord(ch):04X}) at position "
                               f"{position + 1}. Remove it and send again; nothing was sent.")
    return text


class ChatService:
    def __init__(self, store: Store, loaded: LoadedModel, config: AppConfig,
                 executor: GenerationExecutor | None = None, adapters: AdapterServer | None = None,
                 learning: LearningConfig | None = None, rng: random.Random | None = None):
        self.store = store
        self.rng = rng or random.Random()
        """Draws the exploration probes and their side (seed it for reproducible runs)."""
        self.loaded = loaded
        self.config = config
        self.executor = executor
        self.adapters = adapters
        self.learning = learning or LearningConfig()
        self._stops: dict[str, threading.Event] = {}
        """Conversation id → the Stop of the reply being written in it."""

    @property
    def model_id(self) -> str:
        return self.loaded.model_id

    # ---- profiles and conversations: thin, so the UI never talks to storage itself ------------------------

    def list_profiles(self) -> list[dict]:
        return self.store.list_profiles()

    def create_profile(self, name: object) -> dict:
        return self.store.create_profile(name)

    def rename_profile(self, profile_id: str, name: object) -> dict:
        return self.store.rename_profile(profile_id, name)

    def delete_profile(self, profile_id: str) -> None:
        self.store.get_profile(profile_id)
        if self.adapters:
            self.adapters.registry.drop(personal_adapter(profile_id))
            self.adapters.forget(personal_adapter(profile_id))
        self.store.delete_profile(profile_id)

    def get_profile(self, profile_id: str) -> dict:
        return self.store.get_profile(profile_id)

    def list_conversations(self, profile_id: str) -> list[dict]:
        return self.store.list_conversations(profile_id)

    def new_conversation(self, profile_id: str, title: str = NEW_TITLE) -> dict:
        return self.store.create_conversation(profile_id, title)

    def rename_conversation(self, profile_id: str, conversation_id: str, title: object) -> dict:
        return self.store.rename_conversation(profile_id, conversation_id, title)

    def delete_conversation(self, profile_id: str, conversation_id: str) -> None:
        self.store.delete_conversation(profile_id, conversation_id)

    def transcript(self, profile_id: str, conversation_id: str) -> list[Message]:
        return self.store.transcript(profile_id, conversation_id)

    def pending_comparison(self, profile_id: str, conversation_id: str) -> Comparison | None:
        return self.store.pending_comparison(profile_id, conversation_id)

    # ---- replies -------------------------------------------------------------------------------------------

    def send(self, profile_id: str, conversation_id: str | None, text: object, settings: GenerationSettings,
             compare: bool = False) -> Iterator[ReplyUpdate]:
        """Store the user's message, then stream a reply (or A and B in compare mode) and store it."""
        text = validate_message(text, self.config.max_message_chars)
        self.store.get_profile(profile_id)
        if conversation_id:
            conversation = self.store.get_conversation(profile_id, conversation_id)
            if self.store.pending_comparison(profile_id, conversation_id):
                raise Conflict("Choose between A and B first (or Tie / Both bad); then send your next message.")
            if conversation["title"] == NEW_TITLE and not self.store.transcript(profile_id, conversation_id):
                self.store.rename_conversation(profile_id, conversation_id, _title(text))
        else:
            conversation_id = self.new_conversation(profile_id, _title(text))["id"]
        user_message = self.store.add_message(profile_id, conversation_id, "user", text,
                                              settings={"system_prompt": settings.system_prompt})
        return self._reply(profile_id, conversation_id, user_message, settings, compare, replaces=None)

    def retry(self, profile_id: str, conversation_id: str, settings: GenerationSettings,
              compare: bool = False) -> Iterator[ReplyUpdate]:
        """Answer the newest user message again; the old reply stays stored, marked superseded."""
        if self.store.pending_comparison(profile_id, conversation_id):
            raise Conflict("Choose between A and B first; retry applies to a reply that continues the chat.")
        transcript = self.store.transcript(profile_id, conversation_id)
        if not transcript:
            raise InvalidInput("There is nothing to retry yet: send a message first.")
        last = transcript[-1]
        replaces = last if last.role == "assistant" else None
        user_message = transcript[-2] if replaces else last
        if user_message.role != "user":
            raise InvalidInput("There is no user message to answer.")
        return self._reply(profile_id, conversation_id, user_message, settings, compare, replaces=replaces)

    def _reply(self, profile_id: str, conversation_id: str, user_message: Message, settings: GenerationSettings,
               compare: bool, replaces: Message | None) -> Iterator[ReplyUpdate]:
        history = [m for m in self.store.transcript(profile_id, conversation_id) if m.seq <= user_message.seq]
        turns = [{"role": m.role, "content": m.content} for m in history]
        prompt = build_prompt(self.loaded, settings.system_prompt, turns, settings.max_new_tokens)
        blend = self.adapters.blend_for(profile_id) if self.adapters else None
        candidates, sides = self._explore(profile_id, settings, turns, prompt) if compare else ((), ({}, {}))
        stop = threading.Event()
        stream = ReplyStream(
            self.loaded, prompt, settings, num_candidates=2 if compare else 1, candidate_prompts=candidates,
            min_temperature=self.config.compare_min_temperature if compare else 0.0, executor=self.executor,
            activate=(lambda: self.adapters.activate(blend)) if blend else None, stop=stop,
        )
        adapter_versions = blend.record() if blend else {}
        notice = prompt.notice()
        learned = self._learned(profile_id, adapter_versions.get("personal"))

        def updates() -> Iterator[ReplyUpdate]:
            base = dict(conversation_id=conversation_id, user_message=user_message, notice=notice)
            yield ReplyUpdate(texts=[""] * stream.num_candidates, **base)
            steps = iter(stream)
            stored = False
            self._stops[conversation_id] = stop  # Stop reaches this reply while it is written
            try:
                for texts in steps:
                    yield ReplyUpdate(texts=texts, **base)
                stored = True
                yield replace(self._store_reply(profile_id, conversation_id, user_message, settings, prompt, stream,
                                                replaces, base, adapter_versions, sides), learned=learned)
            finally:
                if self._stops.get(conversation_id) is stop:
                    del self._stops[conversation_id]
                steps.close()  # generation stops and the stream settles its texts and stats before we store
                if not stored and any(stream.texts) and not compare:
                    # The person saw part of a reply before the stream stopped: keep it, marked interrupted.
                    self._store_reply(profile_id, conversation_id, user_message, settings, prompt, stream, replaces,
                                      base, adapter_versions)

        return updates()

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

    def stop(self, profile_id: str, conversation_id: str) -> bool:
        """The person's Stop: the reply being written in this conversation ends after its current token and is
        stored as it stands, marked `stopped`. False if no reply is being written there."""
        self.store.get_conversation(profile_id, conversation_id)  # ownership
        stop = self._stops.get(conversation_id)
        if stop is None or stop.is_set():
            return False
        stop.set()
        return True

    def _explore(self, profile_id: str, settings: GenerationSettings, turns: list[dict],
                 prompt: Prompt) -> tuple[tuple, tuple[dict, dict]]:
        """Compare mode: the two candidates' prompts (empty: both sampled from `prompt`) and each one's own facts.
        One candidate, A or B at random, may follow a hidden style probe; in duels both may (assistant/explore.py)."""
        explore = self.config.explore
        if explore.rate <= 0:
            return (), ({}, {})
        arms = choose_arms(explore, *self.store.probe_records(profile_id), self.rng)
        if arms == (None, None):
            return (), ({}, {})
        try:
            sides = [self._arm(arm, settings, turns, prompt) for arm in arms]
        except InvalidInput:  # an instruction would not fit: the person must not see an error they did not cause
            return (), ({}, {})
        if self.rng.randrange(2) == 1:  # which of A and B explores (in duels: which arm is A)
            sides.reverse()
        return tuple(p for p, _ in sides), tuple(own for _, own in sides)

    def _arm(self, probe: Probe | None, settings: GenerationSettings, turns: list[dict],
             prompt: Prompt) -> tuple[Prompt, dict]:
        """One explored candidate's prompt and facts (none for a plain sample: its record is derived in storage)."""
        if probe is None:
            return prompt, {}
        hinted = build_prompt(self.loaded, settings.system_prompt, probed(turns, probe), settings.max_new_tokens)
        return hinted, {"probe": probe.name, "probe_instruction": probe.instruction, **hinted.facts()}

    def _store_reply(self, profile_id, conversation_id, user_message, settings, prompt, stream, replaces, base,
                     adapter_versions, sides=None):
        facts = {**settings.as_dict(), **prompt.facts(), **stream.stats()}
        if stream.num_candidates == 2:
            sides = sides or ({}, {})
            own = tuple({"new_tokens": stream.new_tokens[i], "ended": stream.ended[i], **sides[i]} for i in range(2))
            comparison = self.store.create_comparison(profile_id, conversation_id, user_message.id, stream.texts[0],
                                          stream.texts[1], model_id=self.model_id, settings=facts,
                                          adapter_versions=adapter_versions, replaces=replaces.id if replaces else None,
                                          candidate_settings=own)
            return ReplyUpdate(texts=list(stream.texts), done=True, comparison=comparison, **base)
        reply = self.store.add_message(profile_id, conversation_id, "assistant", stream.texts[0],
                                       parent_id=user_message.id, model_id=self.model_id, settings=facts,
                                       adapter_versions=adapter_versions, replaces=replaces.id if replaces else None)
        return ReplyUpdate(texts=list(stream.texts), done=True, reply=reply, **base)

    # ---- feedback ------------------------------------------------------------------------------------------

    def vote(self, profile_id: str, message_id: str, value: int, comment: str | None = None) -> dict:
        feedback = self.store.record_thumbs(profile_id, message_id, value, comment)
        self._after_feedback(profile_id)
        return feedback

    def vote_at(self, profile_id: str, conversation_id: str, index: int, value: int, shown: str | None = None) -> dict:
        """Vote on the `index`-th message of the transcript as the UI shows it."""
        transcript = self.store.transcript(profile_id, conversation_id)
        if not isinstance(index, int) or not 0 <= index < len(transcript):
            raise NotFound("That reply is still being written or is no longer in this conversation; "
                           "wait for it to finish, or reopen the conversation.")
        message = transcript[index]
        if shown is not None and message.content.strip() != shown.strip():
            raise Conflict("The conversation changed since it was shown; reopen it and vote again.")
        feedback = self.store.record_thumbs(profile_id, message.id, value)
        self._after_feedback(profile_id)
        return feedback

    def comment(self, profile_id: str, message_id: str, comment: str) -> dict:
        return self.store.set_comment(profile_id, message_id, comment)

    def choose(self, profile_id: str, comparison_id: str, choice: str, comment: str = "") -> Comparison:
        comparison = self.store.record_choice(profile_id, comparison_id, choice, comment)
        self._after_feedback(profile_id)
        return comparison

    def choose_pending(self, profile_id: str, conversation_id: str, choice: str) -> Comparison:
        comparison = self.store.pending_comparison(profile_id, conversation_id)
        if comparison is None:
            raise NotFound("There is no comparison waiting for a choice in this conversation.")
        return self.choose(profile_id, comparison.id, choice)

    # ---- learning ------------------------------------------------------------------------------------------

    def _after_feedback(self, profile_id: str) -> None:
        """The feedback is committed; queue training if enough new events arrived (the worker picks it up)."""
        if self.adapters:
            enqueue_due(self.store, profile_id, self.learning)

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
        return {
            "feedback": n,
            "since_personal": self.store.feedback_counts(profile_id, self.store.trained_until(mine)),
            "personal": _version_info(personal),
            "global": _version_info(global_),
            "alpha": blend.alpha,
            "alpha_reason": blend.reason,
            "alpha_auto": auto_alpha(n["total"], self.adapters.config.k),
            "alpha_override": user.get("alpha_override"),
            "job": self.store.latest_job(mine),
            "global_job": self.store.latest_job(GLOBAL),
            "global_profiles": {"profiles": self.store.count_profiles_with_feedback(at_most=self.learning.min_profiles),
                      "needed": self.learning.min_profiles},
            "history": [{"version": v.label, **HeldOutEval.from_metrics(v.manifest.get("metrics", {})).to_metrics()}
                        for v in registry.history(mine)],
            "every": self.learning.personal_every,
        }

    def _require_learning(self) -> None:
        if not self.adapters:
            raise InvalidInput("Learning is switched off in this app (started without adapters).")


def _version_info(version) -> dict | None:
    if version is None:
        return None
    return {"version": version.label, "created_at": version.manifest.get("created_at"),
            "metrics": version.manifest.get("metrics", {})}


def _title(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= TITLE_CHARS else line[: TITLE_CHARS - 1].rstrip() + "…"
