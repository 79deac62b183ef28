"""The exploration bandit's record: how often each probe's candidate was chosen, per profile and for everyone."""

from __future__ import annotations

from storage.base import StoreBase

PLAIN_ARM = "plain"
"""`probe_records`' name for the plain samples that faced a probed candidate, and for replies served plain when a
single reply explored (the explorer's plain arm)."""
OWN_WORDS = 8
"""How many of a profile's newest distinct comments `own_words` returns by default."""
CROWD_WORDS = 1000
"""How many of everyone's newest comments `crowd_words` returns by default."""

Record = dict[str, tuple[float, float]]
"""Probe name → (times its candidate was chosen, times it was not)."""


class Bandit(StoreBase):
    def probe_records(self, profile_id: str) -> tuple[Record, Record]:
        """Exploration probes' record in compare mode, of this profile and of everyone (this profile included), in
        one aggregated scan. A tie counts half each way; "both bad" counts as not chosen. A candidate without a probe
        facing one with a probe is the plain sample's record, under `PLAIN_ARM` ("plain"): its wins against probes,
        whichever pairing stored it. A single reply that explored (settings `explored`) counts its 👍 as chosen and its
        👎 as not, under its probe or, served plain, under `PLAIN_ARM`."""
        with self._db() as db:
            rows = self._rows(
                db,
                "SELECT probe, SUM(won) AS all_won, COUNT(*) AS all_n, "
                "SUM(CASE WHEN mine THEN won ELSE 0 END) AS my_won, SUM(mine) AS my_n FROM ("
                "  SELECT COALESCE(json_extract(m.settings, '$.probe'), "
                "                  CASE WHEN json_extract(o.settings, '$.probe') IS NOT NULL THEN ? END) AS probe, "
                "  p.profile_id = ? AS mine, "
                "  CASE WHEN f.choice = 'tie' THEN 0.5 "
                "       WHEN f.choice = (CASE WHEN m.id = p.a_message_id THEN 'a' ELSE 'b' END) THEN 1.0 "
                "       ELSE 0.0 END AS won "
                "  FROM comparisons p JOIN feedback f ON f.comparison_id = p.id "
                "  JOIN messages m ON m.id IN (p.a_message_id, p.b_message_id) "
                "  JOIN messages o ON o.id = (CASE WHEN m.id = p.a_message_id THEN p.b_message_id "
                "                                  ELSE p.a_message_id END)"
                "  UNION ALL "
                "  SELECT COALESCE(json_extract(m.settings, '$.probe'), ?) AS probe, f.profile_id = ? AS mine, "
                "  CASE WHEN f.value > 0 THEN 1.0 ELSE 0.0 END AS won "
                "  FROM feedback f JOIN messages m ON m.id = f.message_id "
                "  WHERE f.kind = 'thumbs' AND json_extract(m.settings, '$.explored')"
                ") WHERE probe IS NOT NULL GROUP BY probe",
                (PLAIN_ARM, profile_id, PLAIN_ARM, profile_id),
            )
        mine = {r["probe"]: (float(r["my_won"]), r["my_n"] - float(r["my_won"])) for r in rows if r["my_n"]}
        everyone = {r["probe"]: (float(r["all_won"]), r["all_n"] - float(r["all_won"])) for r in rows}
        return mine, everyone

    def own_words(self, profile_id: str, limit: int = OWN_WORDS) -> list[tuple[str, str]]:
        """The `limit` newest distinct comments of this profile, newest first, each as (text, source): "down" for a
        👎's comment and a choice's (what was wrong with the other reply), "up" for a 👍's. Distinct by their words,
        case and spacing aside; each keeps its newest source."""
        with self._db() as db:
            rows = self._rows(
                db,
                "SELECT comment, CASE WHEN kind = 'thumbs' AND value > 0 THEN 'up' ELSE 'down' END AS source "
                "FROM feedback WHERE profile_id = ? AND comment != '' ORDER BY updated_at DESC, id DESC",
                (profile_id,))
        seen, out = set(), []
        for row in rows:
            key = " ".join(row["comment"].lower().split())
            if key not in seen:
                seen.add(key)
                out.append((row["comment"], row["source"]))
        return out[:limit]

    def crowd_words(self, limit: int = CROWD_WORDS) -> list[tuple[str, str]]:
        """The `limit` newest comments of every profile, newest first, as (profile id, comment): what
        `assistant.crowd` groups into probes for everyone."""
        with self._db() as db:
            rows = self._rows(db, "SELECT profile_id, comment FROM feedback WHERE comment != '' "
                                  "ORDER BY updated_at DESC, id DESC LIMIT ?", (limit,))
        return [(row["profile_id"], row["comment"]) for row in rows]

    def probe_record(self, profile_id: str | None = None) -> Record:
        """`probe_records` of one profile, or everyone's (None)."""
        mine, everyone = self.probe_records(profile_id or "")
        return everyone if profile_id is None else mine
