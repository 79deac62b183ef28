"""The exploring half of the chat service: which hidden instructions each candidate or single reply follows — a
probe, built-in or the person's own words (assistant/explore.py, assistant/words.py), and the profile's note until
the personal adapter has learned it (adapters/note.py)."""

from __future__ import annotations

from adapters.note import still_sent
from adapters.registry import personal_adapter
from assistant.config import GenerationSettings, Probe
from assistant.explore import choose_arms, choose_single_arm, instructed, probed
from assistant.prompts import Prompt, build_prompt
from assistant.words import own_probe
from storage.errors import InvalidInput


class Exploring:
    """Mixed into `ChatService` (it has `store`, `loaded`, `config`, `rng` and `adapters`)."""

    def _with_note(self, profile_id: str, settings: GenerationSettings, turns: list[dict], prompt: Prompt,
                   prefix: str) -> tuple[list[dict], Prompt, str]:
        """The turns and prompt of a reply with the profile's note added, hidden, to the newest message while the
        personal adapter has not learned it (`adapters.note`), and the note ('' when none is sent). A note that
        would not fit beside the conversation is left out of this reply rather than refuse it."""
        note = self.store.note(profile_id)
        if not note or not still_sent(note, self._personal_metrics(profile_id), self.learning.note_learned_at):
            return turns, prompt, ""
        noted = instructed(turns, note)
        try:
            return noted, build_prompt(self.loaded, settings.system_prompt, noted, settings.max_new_tokens,
                                       prefix=prefix), note
        except InvalidInput:
            return turns, prompt, ""

    def _personal_metrics(self, profile_id: str) -> dict:
        """The metrics of this profile's current personal version ({} without one or without learning)."""
        if self.adapters is None:
            return {}
        current = self.adapters.registry.current(personal_adapter(profile_id))
        return current.manifest.get("metrics", {}) if current else {}

    def _explore(self, profile_id: str, settings: GenerationSettings, turns: list[dict],
                 prompt: Prompt) -> tuple[tuple, tuple[dict, dict]]:
        """Compare mode: the two candidates' prompts (empty: both sampled from `prompt`) and each one's own facts.
        One candidate, A or B at random, may follow a hidden style probe; in duels both may (assistant/explore.py)."""
        explore = self.config.explore
        if explore.rate <= 0:
            return (), ({}, {})
        arms = choose_arms(explore, *self.store.probe_records(profile_id), self.rng, self._own_probes(profile_id))
        if arms == (None, None):
            return (), ({}, {})
        try:
            sides = [self._arm(arm, settings, turns, prompt) for arm in arms]
        except InvalidInput:  # an instruction would not fit: the person must not see an error they did not cause
            return (), ({}, {})
        if self.rng.randrange(2) == 1:  # which of A and B explores (in duels: which arm is A)
            sides.reverse()
        return tuple(p for p, _ in sides), tuple(own for _, own in sides)

    def _explore_single(self, profile_id: str, settings: GenerationSettings, turns: list[dict], prompt: Prompt,
                        follow: Probe | None) -> tuple[Prompt, dict]:
        """A single reply's prompt and its own facts: `follow` (a retry that follows the person's comment), else
        maybe an explored arm (`ExploreConfig.single_rate`); `explored` marks a reply whose 👍/👎 is its arm's
        record."""
        if follow is None:
            explored, arm = choose_single_arm(self.config.explore, *self.store.probe_records(profile_id), self.rng,
                                              self._own_probes(profile_id))
            if not explored:
                return prompt, {}
        else:
            explored, arm = True, follow
        try:
            hinted, own = self._arm(arm, settings, turns, prompt)
        except InvalidInput:  # the instruction would not fit: answer the message as sent
            if follow is not None:
                raise InvalidInput("Your comment does not fit beside this conversation; retry without it.") from None
            return prompt, {}
        return hinted, {**own, "explored": explored}

    def _own_probes(self, profile_id: str) -> tuple[Probe, ...]:
        """This profile's personal probes: its newest distinct comments (`ExploreConfig.own_words`)."""
        explore = self.config.explore
        if explore.own_words <= 0:
            return ()
        return tuple(own_probe(text, source, explore.wording)
                     for text, source in self.store.own_words(profile_id, explore.own_words))

    def _arm(self, probe: Probe | None, settings: GenerationSettings, turns: list[dict],
             prompt: Prompt) -> tuple[Prompt, dict]:
        """One explored candidate's prompt and facts (none for a plain sample: its record is derived in storage)."""
        if probe is None:
            return prompt, {}
        hinted = build_prompt(self.loaded, settings.system_prompt, probed(turns, probe), settings.max_new_tokens)
        return hinted, {"probe": probe.name, "probe_instruction": probe.instruction, **hinted.facts()}
