"""The open population (bench.users:open_population): tastes no built-in probe names, and the words of a 👎."""

from __future__ import annotations

from assistant.config import DEFAULT_PROBES, ExploreConfig
from bench.users import CommentingUser, load_users, open_population, population

PROMPT = "How do I bake bread at home?"
REPLIES = [
    "You might want to perhaps bake it for a while!",
    "Imagine the dough is like a balloon: we knead it together. Be careful with the hot oven. In short, bake it.",
    "Bread making originally started in ancient Egypt; by 1850 yeast was sold in shops. Bake at 220 C for 30 min.",
    "Knead the dough, let it rise, bake it.",
]


def test_the_open_tastes_are_apart_from_the_probes_and_from_each_other():
    users = open_population()
    assert len(users) >= 8 and len({u.name for u in users}) == len(users)
    assert not {u.name for u in users} & {u.name for u in population()}
    instructions = " ".join(p.instruction.lower() for p in ExploreConfig().probes)
    for user in users:  # no probe asks for these features in the words the tastes score
        assert user.name.replace("_", " ") not in instructions
    favourites = {max(REPLIES, key=lambda r: u.reward(PROMPT, r)) for u in users}
    assert len(favourites) >= 3  # no single reply pleases them all
    assert [u.name for u in load_users("bench.users:open_population")] == [u.name for u in users]


def test_comments_come_only_on_a_reply_the_taste_dislikes_and_vary_like_people():
    user = next(u for u in open_population() if u.name == "no_hedging")
    assert user.comment(PROMPT, "Knead, rise, bake.") is None  # nothing to complain about
    hedged = [f"It might perhaps work, it depends ({i})." for i in range(200)]
    said = [user.comment(PROMPT, reply) for reply in hedged]
    assert said == [user.comment(PROMPT, reply) for reply in hedged]  # the same reply, the same words
    specific = sum(s in user.remarks for s in said)
    silent = said.count(None)
    assert 60 <= specific <= 140 and 30 <= silent <= 90 and 200 - specific - silent >= 20  # own words, none, vague
    assert isinstance(user, CommentingUser) and all(isinstance(u, CommentingUser) for u in population())


def test_no_remark_repeats_a_probe_instruction():
    instructions = {p.instruction.lower() for p in DEFAULT_PROBES}
    for user in (*population(), *open_population()):
        assert user.remarks and not {r.lower() for r in user.remarks} & instructions
