"""Best-of-n serving: when a profile's learned reward orders its own held-out votes well enough
(`RewardConfig.trust_accuracy`, `trust_min_pairs`), a plain reply is sampled `RewardConfig.best_of` times in one
call and the candidate the reward scores highest is served; every candidate is recorded with its score in the
reply's settings (`best_of`), so what was not shown stays inspectable and exportable.

Only a reply written from the message as sent: an explored or comment-following reply, a continued one and compare
mode keep one sample per candidate (their point is what they were asked to try)."""

from __future__ import annotations

import logging

from assistant.generation import ReplyStream

log = logging.getLogger(__name__)


class BestOf:
    """Mixed into `ChatService`, whose attributes it uses: rewards, learning."""

    def _candidates(self, profile_id: str, compare: bool, prefix: str, own: dict) -> int:
        """How many replies to sample for one served reply: `best_of` when the profile's reward is trusted, else 1."""
        n = self.learning.reward.best_of
        if n <= 1 or compare or prefix or own.get("explored") or not self.rewards:
            return 1
        return n if self.rewards.trusted(profile_id) else 1

    def _pick(self, profile_id: str, turns: list[dict], stream: ReplyStream) -> tuple[int, dict | None]:
        """The candidate to serve and the record of all of them: (index, {"scores", "candidates", "served",
        "reward_version"}); (0, None) for a single candidate. A reward that fails to score serves the first, its
        record's scores None."""
        if stream.num_candidates == 1:
            return 0, None
        row = self.store.current_reward(profile_id)
        try:
            scores = self.rewards.score(self.rewards.current(profile_id),
                                        [(turns, text, ended) for text, ended in zip(stream.texts, stream.ended)])
        except Exception:  # noqa: BLE001 — a reply is written; serve it unranked rather than lose it
            log.exception("Best-of-%d could not be scored; the first candidate is served", stream.num_candidates)
            scores = None
        best = max(range(len(scores)), key=scores.__getitem__) if scores else 0
        return best, {"scores": [round(s, 4) for s in scores] if scores else None, "candidates": list(stream.texts),
                      "served": best, "new_tokens": list(stream.new_tokens), "ended": list(stream.ended),
                      "reward_version": row["version"] if row else None}
