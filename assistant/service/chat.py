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
from pathlib import Path

from adapters.blend import AdapterServer
from adapters.registry import GGUF, GLOBAL, personal_adapter
from adapters.rewards import RewardLearner
from assistant.config import AppConfig, GenerationSettings, LearningConfig, Probe
from assistant.executor import GenerationExecutor
from assistant.generation import ReplyStream
from assistant.model import LoadedModel
from assistant.prompts import Prompt, build_prompt
from assistant.words import own_probe
from assistant.limits import RateLimits
from assistant.llamacpp import LlamaCppDecoder
from assistant.remote import OpenAIDecoder
from assistant.service.access import Access
from assistant.service.archive import write_archive
from assistant.service.best_of import BestOf
from assistant.service.exploring import Exploring
from assistant.service.learning import Learning
from storage.accounts import Accounts
from storage.errors import Conflict, InvalidInput, NotFound
from storage.jobs import ERASURE
from storage.store import Comparison, Message, Store
from storage.text import require_encodable

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
    require_encodable(text, "Your message")
    for position, ch in enumerate(text):
        if unicodedata.category(ch) == "Cc" and ch not in _ALLOWED_CONTROL:
            raise InvalidInput(f"Your message contains a control character (U+{ord(ch):04X}) at position "
                               f"{position + 1}. Remove it and send again; nothing was sent.")
    return text


class ChatService(Learning, Access, Exploring, BestOf):
    def __init__(self, store: Store, loaded: LoadedModel, config: AppConfig,
                 executor: GenerationExecutor | None = None, adapters: AdapterServer | None = None,
                 learning: LearningConfig | None = None, rng: random.Random | None = None,
                 decoder: LlamaCppDecoder | OpenAIDecoder | None = None):
        self.store = store
        self.decoder = decoder
        """llama.cpp, when it serves single replies (assistant/backend.py); None: torch decodes everything."""
        self.rng = rng or random.Random()
        """Draws the exploration probes and their side (seed it for reproducible runs)."""
        self.loaded = loaded
        self.config = config
        self.executor = executor
        self.adapters = adapters
        self.learning = learning or LearningConfig()
        self.rewards = RewardLearner(store, loaded, self.learning) if adapters and self.learning.reward.enabled \
            else None
        """Each profile's learned reward, refitted after its votes (adapters/rewards.py); None: learning is off."""
        self.accounts = Accounts(config.auth) if config.auth else None
        self.limits = RateLimits(config.limits)
        self._stops: dict[str, threading.Event] = {}
        """Conversation id → the Stop of the reply being written in it."""
        self._crowd: tuple[tuple, tuple] | None = None
        """The comments the crowd probes were last grouped from, and the groups (assistant/crowd.py)."""

    @property
    def model_id(self) -> str:
        return self.loaded.model_id

    # ---- profiles and conversations: thin, so the UI never talks to storage itself ------------------------

    def list_profiles(self) -> list[dict]:
        return self.store.list_profiles()

    def create_profile(self, name: object) -> dict:
        return self.store.create_profile(name, self.config.limits.max_profiles)

    def rename_profile(self, profile_id: str, name: object) -> dict:
        return self.store.rename_profile(profile_id, name)

    def delete_profile(self, profile_id: str) -> None:
        """Erase a profile: its rows (zeroed on disk, the write-ahead log truncated) and its adapter's files; the
        global versions that learned from it are marked tainted and a from-scratch global retrain is queued."""
        self.store.get_profile(profile_id)
        self._forget_decoded(profile_id)
        if self.rewards:  # no refit that read its votes may publish after the erasure
            self.rewards.settle()
        if self.adapters:
            self.adapters.registry.drop(personal_adapter(profile_id))
            self.adapters.forget(personal_adapter(profile_id))
        if self.store.erase_profile(profile_id) and self.adapters:
            self.store.enqueue_job(GLOBAL, None, ERASURE)
            self.adapters.forget(GLOBAL)  # (a setting may stop tainted versions from serving at once)

    def _forget_decoded(self, profile_id: str) -> None:
        """What a decoder keeps of this profile goes from memory too: what llama.cpp read for it, its adapter
        versions' weights, and the merged adapters that sum them (unloaded from a server)."""
        if self.decoder is None:
            return
        adapters: list[Path] = []
        if self.adapters:
            registry = self.adapters.registry
            adapters = [v.folder / GGUF for v in registry.history(personal_adapter(profile_id))]
            adapters += [p for folder in registry.merged_with(personal_adapter(profile_id)) for p in (folder,
                                                                                                     folder / GGUF)]
        self.decoder.forget(profile_id, adapters)

    def download_data(self, profile_id: str) -> Path:
        """A zip of everything Attune keeps of this profile (assistant/service/archive.py)."""
        self.rewards and self.rewards.settle()  # the reward of every vote so far
        return write_archive(self.store, self.adapters.registry if self.adapters else None, profile_id)

    def get_profile(self, profile_id: str) -> dict:
        return self.store.get_profile(profile_id)

    def preferences(self, profile_id: str) -> tuple[GenerationSettings, bool]:
        """The reply settings and compare choice this profile last used (the defaults until it changes them)."""
        stored = self.store.preferences(profile_id)
        compare = bool(stored.pop("compare", False))
        known = {k: v for k, v in stored.items() if k in GenerationSettings().as_dict()}
        try:
            return GenerationSettings(**known), compare
        except InvalidInput:  # kept by an older version with other limits: start afresh
            return GenerationSettings(), compare

    def save_preferences(self, profile_id: str, settings: GenerationSettings, compare: bool) -> None:
        self.store.set_preferences(profile_id, {**settings.as_dict(), "compare": bool(compare)})

    def note(self, profile_id: str) -> str:
        """The profile's note: how the person wants Attune to answer ('' if none)."""
        return self.store.note(profile_id)

    def set_note(self, profile_id: str, note: object) -> str:
        """Keep the profile's note (clear it with ''): from the next reply it is added, hidden, to each message
        until the personal adapter has learned it (adapters/note.py). The note as kept."""
        return self.store.set_note(profile_id, note)

    def recent_user_messages(self, profile_id: str) -> list[Message]:
        return self.store.recent_user_messages(profile_id)

    def list_conversations(self, profile_id: str) -> list[dict]:
        return self.store.list_conversations(profile_id)

    def new_conversation(self, profile_id: str, title: str = NEW_TITLE) -> dict:
        return self.store.create_conversation(profile_id, title)

    def get_conversation(self, profile_id: str, conversation_id: str) -> dict:
        return self.store.get_conversation(profile_id, conversation_id)

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
        prompt = self._fitted(profile_id, conversation_id, text, settings)
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
        return self._reply(profile_id, conversation_id, user_message, settings, compare, replaces=None, prompt=prompt)

    def _fitted(self, profile_id: str, conversation_id: str | None, text: str, settings: GenerationSettings) -> Prompt:
        """The prompt of a message about to be sent, built before anything is stored: one that cannot be built is
        refused without leaving a message row with no reply."""
        history = self.store.transcript(profile_id, conversation_id) if conversation_id else []
        turns = [{"role": m.role, "content": m.content} for m in history] + [{"role": "user", "content": text}]
        return build_prompt(self.loaded, settings.system_prompt, turns, settings.max_new_tokens)

    def retry(self, profile_id: str, conversation_id: str, settings: GenerationSettings,
              compare: bool = False, follow_comment: bool = False) -> Iterator[ReplyUpdate]:
        """Answer the newest user message again; the old reply stays stored, marked superseded. `follow_comment`:
        the new reply follows, as a hidden instruction, the comment the person wrote on the one it replaces (their
        personal probe: a 👍 on it then teaches the adapters to answer that way unasked)."""
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
        follow = None
        if follow_comment:
            if not (replaces and replaces.comment):
                raise InvalidInput("There is no comment on the last reply to follow: write one after your 👍/👎.")
            follow = own_probe(replaces.comment, "up" if replaces.vote and replaces.vote > 0 else "down",
                               self.config.explore.wording)
        return self._reply(profile_id, conversation_id, user_message, settings, compare, replaces=replaces,
                           follow=follow)

    def retry_with_comment(self, profile_id: str, conversation_id: str, message_id: str | None, comment: object,
                           settings: GenerationSettings) -> Iterator[ReplyUpdate]:
        """Keep `comment` on the last reply (already rated 👍/👎; `message_id` None: whichever is last) and answer
        again following it (`retry`'s `follow_comment`)."""
        if not isinstance(comment, str) or not comment.strip():
            raise InvalidInput("Write what to change first, then retry with it.")
        transcript = self.store.transcript(profile_id, conversation_id)
        if not transcript or transcript[-1].role != "assistant":
            raise InvalidInput("There is no reply to retry yet.")
        if transcript[-1].id != (message_id or transcript[-1].id):
            raise InvalidInput("Retry with your words answers the last reply again; this one is no longer the last. "
                               "Your words were not saved.")
        self.store.set_comment(profile_id, transcript[-1].id, comment)
        return self.retry(profile_id, conversation_id, settings, follow_comment=True)

    def edit(self, profile_id: str, conversation_id: str, text: object, settings: GenerationSettings,
             compare: bool = False) -> Iterator[ReplyUpdate]:
        """Replace the last user message with `text` and answer it: the old message and its reply stay stored,
        superseded (a new branch, like a retry)."""
        text = validate_message(text, self.config.max_message_chars)
        if self.store.pending_comparison(profile_id, conversation_id):
            raise Conflict("Choose between A and B first (or Tie / Both bad); then edit your message.")
        users = [m for m in self.store.transcript(profile_id, conversation_id) if m.role == "user"]
        if not users:
            raise InvalidInput("There is no message to edit yet: send one first.")
        user_message = self.store.add_message(profile_id, conversation_id, "user", text, replaces=users[-1].id,
                                              settings={"system_prompt": settings.system_prompt})
        return self._reply(profile_id, conversation_id, user_message, settings, compare, replaces=None)

    def continue_reply(self, profile_id: str, conversation_id: str,
                       settings: GenerationSettings) -> Iterator[ReplyUpdate]:
        """Write on from where the last reply ended (it was cut at the length limit or stopped): the continued
        reply, old text and new, takes its place; the cut one stays stored, superseded."""
        if self.store.pending_comparison(profile_id, conversation_id):
            raise Conflict("Choose between A and B first; then continue.")
        transcript = self.store.transcript(profile_id, conversation_id)
        if not transcript or transcript[-1].role != "assistant":
            raise InvalidInput("There is no reply to continue yet.")
        last = transcript[-1]
        if last.settings.get("ended") != [False]:
            raise InvalidInput("The last reply is complete: there is nothing to continue.")
        user_message = next(m for m in reversed(transcript) if m.role == "user")
        probe, instruction = last.settings.get("probe"), last.settings.get("probe_instruction")
        follow = Probe(probe, instruction) if probe and instruction else None  # written on under what it was
        return self._reply(profile_id, conversation_id, user_message, settings, False, replaces=last,
                           prefix=last.content, follow=follow)

    def replies_to_last(self, profile_id: str, conversation_id: str,
                        transcript: list[Message] | None = None) -> tuple[list[Message], int]:
        """The replies written to the last user message (Retry's earlier ones too) and which one is shown.
        `transcript`: the conversation's, when the caller has just read it."""
        transcript = self.transcript(profile_id, conversation_id) if transcript is None else transcript
        if len(transcript) < 2 or transcript[-1].role != "assistant" or transcript[-2].role != "user":
            return [], -1
        replies = self.store.replies_to(profile_id, transcript[-2].id)
        return replies, next(i for i, m in enumerate(replies) if m.id == transcript[-1].id)

    def show_reply(self, profile_id: str, conversation_id: str, step: int) -> Message:
        """Browse the replies to the last user message: the one `step` places from the shown one becomes the
        reply the conversation goes on from (and the one a 👍/👎 then rates)."""
        if self.store.pending_comparison(profile_id, conversation_id):
            raise Conflict("Choose between A and B first.")
        replies, shown = self.replies_to_last(profile_id, conversation_id)
        if not 0 <= shown + step < len(replies):
            raise InvalidInput("There is no other reply that way." if replies else "There is only one reply here.")
        return self.store.switch_reply(profile_id, replies[shown + step].id)

    def _reply(self, profile_id: str, conversation_id: str, user_message: Message, settings: GenerationSettings,
               compare: bool, replaces: Message | None, prefix: str = "", prompt: Prompt | None = None,
               follow: Probe | None = None) -> Iterator[ReplyUpdate]:
        history = [m for m in self.store.transcript(profile_id, conversation_id) if m.seq <= user_message.seq]
        turns = [{"role": m.role, "content": m.content} for m in history]
        prompt = prompt or build_prompt(self.loaded, settings.system_prompt, turns, settings.max_new_tokens,
                                        prefix=prefix)
        blend = self.adapters.blend_for(profile_id) if self.adapters else None
        sent = ([{"role": "system", "content": settings.system_prompt}] if settings.system_prompt else []) + turns
        turns, prompt, note = self._with_note(profile_id, settings, turns, prompt, prefix, blend)
        candidates, sides = self._explore(profile_id, settings, turns, prompt) if compare else ((), ({}, {}))
        own: dict = {}
        if not compare:
            prompt, own = self._explore_single(profile_id, settings, turns, prompt, follow, prefix)
        if note:
            own = {**own, "note": note}
        stop = threading.Event()
        n = self._candidates(profile_id, compare, prefix, own)
        stream = ReplyStream(
            self.loaded, prompt, settings, num_candidates=2 if compare else n, candidate_prompts=candidates,
            min_temperature=self.config.compare_min_temperature if compare else 0.0, executor=self.executor,
            stop=stop, **self._decoding(blend, profile_id),
        )
        adapter_versions = blend.record() if blend else {}
        notice = prompt.notice()
        learned = self._learned(profile_id, adapter_versions.get("personal"))

        def updates() -> Iterator[ReplyUpdate]:
            base = dict(conversation_id=conversation_id, user_message=user_message, notice=notice)
            yield ReplyUpdate(texts=[prefix] * (2 if compare else 1), **base)
            steps = iter(stream)
            stored = False
            self._stops[conversation_id] = stop  # Stop reaches this reply while it is written
            try:
                for texts in steps:
                    if n == 1:  # (best-of-n shows the reply it serves once all are written)
                        yield ReplyUpdate(texts=[prefix + t for t in texts], **base)
                stored = True
                served = None if compare else self._pick(profile_id, sent, stream)
                yield replace(self._store_reply(profile_id, conversation_id, user_message, settings, prompt, stream,
                                                replaces, base, adapter_versions, sides, prefix, own, served),
                              learned=learned)
            finally:
                if self._stops.get(conversation_id) is stop:
                    del self._stops[conversation_id]
                steps.close()  # generation stops and the stream settles its texts and stats before we store
                if not stored and any(stream.texts) and not compare:
                    # The person saw part of a reply before the stream stopped: keep it, marked interrupted.
                    self._store_reply(profile_id, conversation_id, user_message, settings, prompt, stream, replaces,
                                      base, adapter_versions, prefix=prefix, own=own)

        return updates()

    def stop(self, profile_id: str, conversation_id: str) -> bool:
        """The person's Stop: the reply being written in this conversation ends after its current token and is
        stored as it stands, marked `stopped`. False if no reply is being written there."""
        self.store.get_conversation(profile_id, conversation_id)  # ownership
        stop = self._stops.get(conversation_id)
        if stop is None or stop.is_set():
            return False
        stop.set()
        return True

    def _store_reply(self, profile_id, conversation_id, user_message, settings, prompt, stream, replaces, base,
                     adapter_versions, sides=None, prefix="", own=None, served=(0, None)):
        """Store what `stream` wrote: a comparison when `served` is None (compare mode), else the reply at
        `served[0]`, with `served[1]` the best-of-n record of every candidate (None: one candidate)."""
        facts = {**settings.as_dict(), **prompt.facts(), **stream.stats(), **(own or {})}
        if prefix:  # a continued reply: the cut one it grew from is neither an alternative nor a rejected reply
            facts["continues"] = replaces.id
        index, best_of = served or (0, None)
        if best_of:  # the served candidate's own facts; every candidate with its score
            facts.update(new_tokens=[stream.new_tokens[index]], ended=[stream.ended[index]], best_of=best_of)
        if served is None:
            sides = sides or ({}, {})
            own = tuple({"new_tokens": stream.new_tokens[i], "ended": stream.ended[i], **sides[i]} for i in range(2))
            comparison = self.store.create_comparison(profile_id, conversation_id, user_message.id, stream.texts[0],
                                          stream.texts[1], model_id=self.model_id, settings=facts,
                                          adapter_versions=adapter_versions, replaces=replaces.id if replaces else None,
                                          candidate_settings=own)
            return ReplyUpdate(texts=list(stream.texts), done=True, comparison=comparison, **base)
        reply = self.store.add_message(profile_id, conversation_id, "assistant", prefix + stream.texts[index],
                                       parent_id=user_message.id, model_id=self.model_id, settings=facts,
                                       adapter_versions=adapter_versions, replaces=replaces.id if replaces else None)
        return ReplyUpdate(texts=[reply.content], done=True, reply=reply, **base)

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

    def comment_choice(self, profile_id: str, comparison_id: str, comment: str) -> dict:
        """Keep words on a choice already made (what decided it): explored like a 👎's (`own_words`)."""
        return self.store.set_choice_comment(profile_id, comparison_id, comment)

    def choose(self, profile_id: str, comparison_id: str, choice: str, comment: str = "") -> Comparison:
        comparison = self.store.record_choice(profile_id, comparison_id, choice, comment)
        self._after_feedback(profile_id)
        return comparison

    def choose_pending(self, profile_id: str, conversation_id: str, choice: str) -> Comparison:
        comparison = self.store.pending_comparison(profile_id, conversation_id)
        if comparison is None:
            raise NotFound("There is no comparison waiting for a choice in this conversation.")
        return self.choose(profile_id, comparison.id, choice)


def _title(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= TITLE_CHARS else line[: TITLE_CHARS - 1].rstrip() + "…"
