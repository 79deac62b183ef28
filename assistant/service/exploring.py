"""The exploring half of the chat service: which hidden instructions each candidate or single reply follows — a
probe, built-in or the person's own words (assistant/explore.py, assistant/words.py), and the profile's note until
the personal adapter has learned it (adapters/note.py)."""

from __future__ import annotations

import logging

from adapters.blend import Blend
from adapters.note import KEY, LEARNED, note_key, still_sent
from adapters.registry import personal_adapter
from assistant.config import GenerationSettings, Probe
from assistant.crowd import crowd_groups, crowd_probes
from assistant.explore import choose_arms, choose_single_arm, instructed, probed
from assistant.prompts import Prompt, build_prompt
from assistant.words import own_probe, usable
from storage.errors import InvalidInput

log = logging.getLogger(__name__)


class Exploring:
    """Mixed into `ChatService` (it has `store`, `loaded`, `config`, `rng` and `adapters`)."""

    def _with_note(self, profile_id: str, settings: GenerationSettings, turns: list[dict], prompt: Prompt,
                   prefix: str, blend: Blend | None = None) -> tuple[list[dict], Prompt, str]:
        """The turns and prompt of a reply with the profile's note added, hidden, to the newest message while the
        served blend has not learned it (`note_state`), and the note ('' when none is sent). A note that would not
        fit beside the conversation is left out of this reply rather than cut the person's own words."""
        note, sent, _ = self.note_state(profile_id, blend)
        if not sent:
            return turns, prompt, ""
        noted = instructed(turns, note)
        try:
            return noted, _no_less_room(prompt, build_prompt(self.loaded, settings.system_prompt, noted,
                                                             settings.max_new_tokens, prefix=prefix)), note
        except InvalidInput:
            return turns, prompt, ""

    def note_state(self, profile_id: str, blend: Blend | None = None) -> tuple[str, bool, float | None]:
        """The profile's note, whether it is still sent, and how far the personal version serving the profile has
        learned it (None: not measured for this note). Sent until that version — the one the blend serves, at the
        weight it serves it — has learned it (`adapters.note.still_sent`). `blend`: the profile's, when the caller has
        it already (a reply computes it once)."""
        note = self.store.note(profile_id)
        if not note or self.adapters is None:
            return note, bool(note), None
        blend = blend or self.adapters.blend_for(profile_id)
        current = self.adapters.registry.current(personal_adapter(profile_id))
        serving = current is not None and blend.personal_version == current.version
        metrics = current.manifest.get("metrics", {}) if serving else {}
        learned = metrics.get(LEARNED) if metrics.get(KEY) == note_key(note) else None
        return note, still_sent(note, metrics, self.learning.note_learned_at, blend.alpha), learned

    def _explore(self, profile_id: str, settings: GenerationSettings, turns: list[dict],
                 prompt: Prompt) -> tuple[tuple, tuple[dict, dict]]:
        """Compare mode: the two candidates' prompts (empty: both sampled from `prompt`) and each one's own facts.
        One candidate, A or B at random, may follow a hidden style probe; in duels both may (assistant/explore.py)."""
        explore = self.config.explore
        if explore.rate <= 0:
            return (), ({}, {})
        mine, everyone = self.store.probe_records(profile_id)
        arms = choose_arms(explore, mine, everyone, self.rng, self._own_probes(profile_id), self.crowd_probes(everyone))
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
                        follow: Probe | None, prefix: str = "") -> tuple[Prompt, dict]:
        """A single reply's prompt and its own facts: `follow` (a retry that follows the person's comment, or a
        continued reply written under an instruction), else maybe an explored arm (`ExploreConfig.single_rate`;
        never for a continued reply); `explored` marks a reply whose 👍/👎 is its arm's record."""
        if follow is None:
            if prefix or self.config.explore.single_rate <= 0:
                return prompt, {}
            mine, everyone = self.store.probe_records(profile_id)
            explored, arm = choose_single_arm(self.config.explore, mine, everyone, self.rng,
                                              self._own_probes(profile_id), self.crowd_probes(everyone))
            if not explored:
                return prompt, {}
        else:
            explored, arm = True, follow
        try:
            hinted, own = self._arm(arm, settings, turns, prompt, prefix)
        except InvalidInput:  # the instruction would not fit: answer the message as sent
            if follow is not None and not prefix:
                raise InvalidInput("Your comment does not fit beside this conversation; retry without it.") from None
            return prompt, {}
        return hinted, {**own, "explored": explored}

    def _own_probes(self, profile_id: str) -> tuple[Probe, ...]:
        """This profile's personal probes: its newest distinct comments (`ExploreConfig.own_words`)."""
        explore = self.config.explore
        if explore.own_words <= 0:
            return ()
        return tuple(own_probe(text, source, explore.wording)
                     for text, source in self.store.own_words(profile_id, explore.own_words) if usable(text))

    def crowd_probes(self, everyone: dict | None = None) -> tuple[Probe, ...]:
        """The crowd probes explored now (`assistant.crowd`): regrouped when anyone's comments changed, retired by
        `everyone`'s record (None: read it). The operator sees each change in the log."""
        explore = self.config.explore
        if explore.crowd_profiles <= 0 or explore.crowd_arms <= 0:
            return ()
        words = tuple(self.store.crowd_words())
        cached = self._crowd
        if cached is None or cached[0] != words:
            groups = crowd_groups(words, explore)
            if groups != (cached[1] if cached else ()):
                log.info("Crowd probes now: %s", "; ".join(f"{p.name} from {n} profiles: {p.instruction!r}"
                                                           for n, p in groups) or "none")
            cached = self._crowd = (words, groups)
        return crowd_probes(cached[1], explore, self.store.probe_records("")[1] if everyone is None else everyone)

    def _arm(self, probe: Probe | None, settings: GenerationSettings, turns: list[dict], prompt: Prompt,
             prefix: str = "") -> tuple[Prompt, dict]:
        """One explored candidate's prompt and facts (none for a plain sample: its record is derived in storage)."""
        if probe is None:
            return prompt, {}
        hinted = _no_less_room(prompt, build_prompt(self.loaded, settings.system_prompt, probed(turns, probe),
                                                    settings.max_new_tokens, prefix=prefix))
        return hinted, {"probe": probe.name, "probe_instruction": probe.instruction, **hinted.facts()}


def _no_less_room(plain: Prompt, hinted: Prompt) -> Prompt:
    """`hinted` if the hidden instruction fits beside the conversation as `plain` has it; InvalidInput if it would
    leave out more of the conversation or cut more of the person's message than `plain` does."""
    if hinted.dropped_messages > plain.dropped_messages or hinted.cut_tokens > plain.cut_tokens:
        raise InvalidInput("The hidden instruction does not fit beside this conversation.")
    return hinted
