"""Simulated users with known tastes, for measuring whether Attune learns them.

The public interface (documented in the README) is small: a simulated user has a `name` and
`reward(prompt, reply) -> float` (higher = preferred). `choose` draws an A/B choice from a Bradley–Terry model
on the reward difference, P(A) = σ((r_A − r_B) / temperature), so users are noisy like people; `thumbs` is up
when the reward clears the user's threshold. Any object with `name` and `reward` works: load your own
population with `--users module:callable` (a callable returning a list of users).

Every shipped user shares one taste (`shared_reward`: on topic, polite, not degenerate) and adds its own. All
rewards are deterministic text features, fast enough to score thousands of replies a second.

Two populations ship: `population` (ten tastes, the ones the built-in probes were written for) and
`open_population` (nine tastes no probe names). Their users may also say what was wrong: `comment(prompt, reply) ->
str | None`, the words of a 👎 (`CommentingUser`); a user without `comment` never writes any.
"""

from __future__ import annotations

import hashlib
import importlib
import math
import random
import re
from collections.abc import Callable
from dataclasses import dataclass

_WORD = re.compile(r"[A-Za-z']+")
_EMOJI = re.compile("[\U0001F300-\U0001FAFF\u2600-\u27BF]")
STOPWORDS = frozenset(
    "a an and are as at be but by can could do for from has have how i in is it me my of on or please tell "
    "that the this to was what when where which who why will with would you your about some give".split())
POLITE = ("please", "thank", "happy to", "glad", "hope this helps", "you're welcome", "of course", "sure")
RUDE = ("stupid", "idiot", "shut up", "dumb", "whatever", "hate you")


def words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


def content_words(text: str) -> set[str]:
    return {w for w in words(text) if w not in STOPWORDS and len(w) > 2}


def shared_reward(prompt: str, reply: str) -> float:
    """What every user wants, in [-2, 2]: a reply on the prompt's topic, polite, and not degenerate."""
    asked, said = content_words(prompt), words(reply)
    if not said:
        return -2.0
    on_topic = len(asked & set(said)) / max(1, len(asked))  # share of the prompt's content words addressed
    lowered = reply.lower()
    polite = 0.5 * any(p in lowered for p in POLITE) - 1.0 * any(r in lowered for r in RUDE)
    distinct = len(set(said)) / len(said)  # 1 for varied text, → 0 for "the the the …"
    degenerate = -1.0 if distinct < 0.4 and len(said) > 10 else 0.0
    return max(-2.0, min(2.0, 1.5 * on_topic + polite + degenerate))


def _count(patterns, text: str) -> int:
    lowered = text.lower()
    return sum(lowered.count(p) for p in patterns)


# Each personal taste returns a score in roughly [-2, 2]: the same scale as the shared taste.
def concise(prompt: str, reply: str) -> float:
    """Short replies: full marks up to 25 words, then less and less."""
    n = len(words(reply))
    return 2.0 if n <= 25 else max(-2.0, 2.0 - (n - 25) / 15)


def detailed(prompt: str, reply: str) -> float:
    """Long, developed replies: grows with length up to about 120 words."""
    n = len(words(reply))
    return max(-2.0, min(2.0, -2.0 + 4.0 * n / 120))


def bullets(prompt: str, reply: str) -> float:
    """Lists: lines starting with -, *, • or a number."""
    lines = [line.strip() for line in reply.splitlines() if line.strip()]
    items = sum(bool(re.match(r"^([-*•]|\d+[.)])\s", line)) for line in lines)
    return min(2.0, -1.0 + items)


def formal(prompt: str, reply: str) -> float:
    """Formal register: no contractions, exclamation marks or slang; connectives like 'therefore'."""
    casual_marks = len(re.findall(r"\b\w+'(s|re|m|ll|ve|t|d)\b", reply.lower())) + reply.count("!") + _count(
        ("hey", "cool", "awesome", "gonna", "yeah", "lol"), reply)
    connectives = _count(("therefore", "however", "furthermore", "moreover", "consequently", "regards"), reply)
    return max(-2.0, min(2.0, 1.0 + 0.7 * connectives - 0.6 * casual_marks))


def casual(prompt: str, reply: str) -> float:
    """Casual register: contractions, exclamation marks, friendly slang."""
    marks = len(re.findall(r"\b\w+'(s|re|m|ll|ve|t|d)\b", reply.lower())) + reply.count("!") + _count(
        ("hey", "cool", "awesome", "yeah", "great"), reply)
    return max(-2.0, min(2.0, -1.0 + 0.6 * marks))


def emoji_lover(prompt: str, reply: str) -> float:
    """Emoji: one is good, three is best."""
    return min(2.0, -1.0 + len(_EMOJI.findall(reply)))


def emoji_hater(prompt: str, reply: str) -> float:
    """No emoji at all."""
    return max(-2.0, 1.0 - 1.5 * len(_EMOJI.findall(reply)))


def examples(prompt: str, reply: str) -> float:
    """Concrete examples: 'for example', 'e.g.', 'for instance', 'such as', 'like when'."""
    return min(2.0, -1.0 + 1.5 * _count(("for example", "e.g.", "for instance", "such as", "like when"), reply))


def questions_back(prompt: str, reply: str) -> float:
    """A question back to the person, best at the end."""
    text = reply.strip()
    return (1.0 if "?" in text else -1.0) + (1.0 if text.endswith("?") else 0.0)


NATURE = ("tree", "forest", "river", "mountain", "garden", "flower", "bird", "ocean", "nature", "outdoor", "walk",
          "sun", "rain", "plant", "animal", "sea", "lake", "park")


def nature_lover(prompt: str, reply: str) -> float:
    """A topic preference: words about nature and the outdoors."""
    return min(2.0, -1.0 + 0.8 * _count(NATURE, reply))


@dataclass(frozen=True)
class SimulatedUser:
    name: str
    personal: Callable[[str, str], float]
    """This user's own taste (the shared one is added to it)."""
    temperature: float = 0.5
    """Bradley–Terry temperature of choices: larger is noisier (0 would always pick the better reply)."""
    threshold: float = 1.5
    """Thumbs up when the reward is at least this."""
    shared_weight: float = 1.0

    def reward(self, prompt: str, reply: str) -> float:
        return self.shared_weight * shared_reward(prompt, reply) + self.personal(prompt, reply)

    @property
    def description(self) -> str:
        return (self.personal.__doc__ or "").strip().split("\n")[0]


def prefers_a_probability(user, prompt: str, a: str, b: str, temperature: float | None = None) -> float:
    t = temperature if temperature is not None else getattr(user, "temperature", 0.5)
    diff = user.reward(prompt, a) - user.reward(prompt, b)
    return 1 / (1 + math.exp(-diff / t)) if t > 0 else float(diff > 0) + 0.5 * (diff == 0)


def choose(user, prompt: str, a: str, b: str, rng: random.Random) -> str:
    """'a', 'b' or 'tie' (equal rewards), drawn from the user's Bradley–Terry model."""
    ra, rb = user.reward(prompt, a), user.reward(prompt, b)
    if ra == rb:
        return "tie"
    return "a" if rng.random() < prefers_a_probability(user, prompt, a, b) else "b"


def thumbs(user, prompt: str, reply: str) -> int:
    """+1 if the reward clears the user's threshold, else -1."""
    return 1 if user.reward(prompt, reply) >= getattr(user, "threshold", 1.5) else -1


# ---- the open population: tastes no built-in probe names (issue 25) -----------------------------------------
# A probe must never be written for these by name: they measure whether Attune learns a taste nobody listed.

HEDGES = ("might", "may ", "perhaps", "possibly", "it depends", "generally", "usually", "i think", "probably",
          "could be", "somewhat")
ANALOGY = ("like a ", "like an ", "imagine", "think of it as", "similar to", "just as", "as if")
SAFETY = ("careful", "safe", "safety", "warning", "risk", "avoid", "caution", "make sure")
TOGETHER = ("we ", "we'", "let's", "let us", "our ", "together")
SUMMING_UP = ("in short", "in summary", "overall", "to sum up", "in a nutshell", "bottom line")
_YEAR = re.compile(r"\b(1[0-9]{3}|20[0-9]{2})\b")
_NUMBER = re.compile(r"\b\d+(?:[.,]\d+)?\b")


def numbers(prompt: str, reply: str) -> float:
    """Concrete figures: numbers, amounts and units rather than 'a lot' or 'some'."""
    return min(2.0, -1.0 + 0.8 * len(_NUMBER.findall(reply)))


def no_hedging(prompt: str, reply: str) -> float:
    """Straight answers: every hedge ('might', 'perhaps', 'it depends', …) costs."""
    return max(-2.0, 1.0 - 0.8 * _count(HEDGES, reply))


def analogies(prompt: str, reply: str) -> float:
    """Explained by comparison: 'imagine', 'think of it as', 'like a …'."""
    return min(2.0, -1.0 + 1.5 * _count(ANALOGY, reply))


def history_buff(prompt: str, reply: str) -> float:
    """The past of things: years, centuries, 'invented', 'ancient'."""
    hits = len(_YEAR.findall(reply)) + _count(("century", "ancient", "invented", "history", "originally"), reply)
    return min(2.0, -1.0 + 0.9 * hits)


def plain_words(prompt: str, reply: str) -> float:
    """Plain vocabulary: short words; long ones (10+ letters) cost."""
    said = words(reply)
    if not said:
        return 0.0
    long = sum(len(w) >= 10 for w in said) / len(said)
    return max(-2.0, 1.0 - 20.0 * long)


def calm(prompt: str, reply: str) -> float:
    """A calm tone: no exclamation marks, no capitals for emphasis."""
    shouted = reply.count("!") + len(re.findall(r"\b[A-Z]{3,}\b", reply))
    return max(-2.0, 1.0 - 0.7 * shouted)


def safety_minded(prompt: str, reply: str) -> float:
    """Cautions where they belong: 'be careful', 'make sure', 'avoid', 'risk'."""
    return min(2.0, -1.0 + 1.2 * _count(SAFETY, reply))


def collaborative(prompt: str, reply: str) -> float:
    """Doing it together: 'we', 'let's', 'our'."""
    return min(2.0, -1.0 + 0.8 * _count(TOGETHER, " " + reply.lower() + " "))


def sums_up(prompt: str, reply: str) -> float:
    """A last line that sums up: 'In short', 'Overall', … (it shows only in replies long enough to end)."""
    tail = reply.strip().lower()[-160:]
    return 1.5 if any(p in tail for p in SUMMING_UP) else -1.0


REMARKS = {
    "concise": ("Too long.", "Way too wordy, get to the point."),
    "detailed": ("Too short, I wanted more.", "Go deeper, explain it properly."),
    "bullets": ("Hard to scan. Break it into points.", "A wall of text again."),
    "formal": ("Too casual for me.", "Keep it professional."),
    "casual": ("So stiff. Loosen up!", "Talk to me like a friend."),
    "emoji_lover": ("A bit dry. Where are the smileys?", "Needs some emoji!"),
    "emoji_hater": ("No emoji, please.", "Drop the smileys."),
    "examples": ("Too abstract. Show me a case.", "I need something concrete to picture it."),
    "questions_back": ("You didn't check what I actually need.", "Ask me something back."),
    "nature_lover": ("Bring the outdoors into it.", "I'd love it tied to nature."),
    "numbers": ("Give me actual numbers.", "How much exactly?", "Too vague, I want figures."),
    "no_hedging": ("Stop hedging and just say it.", "Too many maybes.", "Be definite."),
    "analogies": ("Explain it with a comparison.", "Hard to picture. An analogy would help."),
    "history_buff": ("Where does it come from? Tell me its history.", "I like knowing when things started."),
    "plain_words": ("Use simpler words.", "Too much jargon.", "Say it plainly."),
    "calm": ("Less shouting, please.", "Calm down with the exclamation marks."),
    "safety_minded": ("Tell me what to watch out for.", "Is it safe? Mention the risks."),
    "collaborative": ("Talk to me like we're doing this together.", "Less lecturing, more 'let's'."),
    "sums_up": ("End with a one-line summary.", "Sum it up at the end."),
}
"""What a person with each taste writes in the 👎 box, in their own words (never a probe's instruction)."""
VAGUE = ("Not what I wanted.", "Meh.", "Not quite.", "Try again.")
NOTES = {
    "concise": "I'm busy: keep answers brief.",
    "detailed": "I like thorough answers that go into depth.",
    "bullets": "I read on my phone, so I like things broken into points.",
    "formal": "I use this for work; keep a professional tone.",
    "casual": "Be relaxed with me, like a friend would.",
    "emoji_lover": "I love emoji, use plenty!",
    "emoji_hater": "Please never use emoji.",
    "examples": "I understand things best from concrete cases.",
    "questions_back": "Check with me what I need before you go on.",
    "nature_lover": "I spend my life outdoors; I like answers that connect to nature.",
    "numbers": "I like concrete figures: amounts, sizes, dates.",
    "no_hedging": "Be decisive. I don't want maybes.",
    "analogies": "Comparisons help me understand things.",
    "history_buff": "I love knowing where things come from and when they started.",
    "plain_words": "Use everyday words, I'm not an expert.",
    "calm": "Keep a calm tone with me.",
    "safety_minded": "I'm careful by nature; tell me what to watch out for.",
    "collaborative": "Talk to me as if we were working on it together.",
    "sums_up": "Finish with a short summary line.",
}
"""What a person with each taste writes in the profile's note, "How should Attune answer you?" (own words again)."""


@dataclass(frozen=True)
class CommentingUser(SimulatedUser):
    """A simulated user who sometimes says what was wrong: `comment(prompt, reply)` is the text a person with this
    taste writes on a reply their taste scores below zero — about half the time in their own words, some of the
    time vaguely, otherwise nothing (as people do), chosen by a stable hash of the reply so runs repeat."""

    remarks: tuple[str, ...] = ()
    note: str = ""
    """What they write in the profile's note ("How should Attune answer you?"), if the benchmark asks them to."""

    def comment(self, prompt: str, reply: str) -> str | None:
        if self.personal(prompt, reply) >= 0:
            return None
        draw = int(hashlib.sha256(f"{self.name}\x1f{prompt}\x1f{reply}".encode()).hexdigest()[:8], 16)
        kind = draw % 10
        if kind < 5 and self.remarks:
            return self.remarks[(draw // 10) % len(self.remarks)]
        if kind < 7:
            return VAGUE[(draw // 10) % len(VAGUE)]
        return None


def open_population() -> list[CommentingUser]:
    """The open population: nine tastes that no built-in probe names, each on top of the shared one, with words for
    their 👎 (`CommentingUser.comment`)."""
    return [CommentingUser(fn.__name__, fn, remarks=REMARKS[fn.__name__], note=NOTES[fn.__name__]) for fn in (
        numbers, no_hedging, analogies, history_buff, plain_words, calm, safety_minded, collaborative, sums_up)]


def population() -> list[CommentingUser]:
    """The shipped population: ten tastes, each on top of the shared one, with words for their 👎
    (`CommentingUser.comment`)."""
    return [CommentingUser(fn.__name__, fn, remarks=REMARKS[fn.__name__], note=NOTES[fn.__name__]) for fn in (
        concise, detailed, bullets, formal, casual, emoji_lover, emoji_hater, examples, questions_back, nature_lover)]


def load_users(spec: str) -> list:
    """`module:callable` → the list of users it returns (e.g. `bench.users:population`)."""
    module, _, attr = spec.partition(":")
    if not module or not attr:
        raise ValueError(f"--users takes module:callable, got {spec!r}")
    users = getattr(importlib.import_module(module), attr)()
    for user in users:
        if not hasattr(user, "name") or not callable(getattr(user, "reward", None)):
            raise ValueError(f"{user!r} has no name or reward(prompt, reply)")
    return list(users)
