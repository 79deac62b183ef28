"""`PreferenceChatEnv`: a gymnasium environment in which a simulated user judges the assistant's replies.

Observation: a dict — `prompt`, what the user asks next (text), and `history`, the episode's newest steps (at most
`history_length`, oldest first), each `{"prompt", "reply", "feedback"}`: what was asked, the reply the chat went on
with (the chosen candidate; A on a tie, as the app keeps A) and the feedback, −1, 0 or +1 (for pairs +1 means the
user chose A). Action: the reply shown (mode "single"), or the pair of candidate replies shown side by side (mode
"pair"). Reward: the user's feedback — a thumb, ±1, or a choice, +1 for A, −1 for B, 0 for a tie. `info` carries
the user's underlying rewards of what was shown, so a learning algorithm can be scored on the user's taste, not
only on the feedback it received.

The benchmark (bench/learning_curve.py) drives Attune's real product loop through it; anyone can plug in
another algorithm against the same users.
"""

from __future__ import annotations

import random
import string
from pathlib import Path

import gymnasium as gym
from gymnasium import spaces

from bench.users import choose, thumbs

PROMPTS_FILE = Path(__file__).parent / "data" / "prompts.txt"
_CHARSET = frozenset(string.printable) | frozenset("’‘“”—–…éèàçüöäñ😀🙂👍🎉🌿☀️")
MAX_CHARS = 4_000


def load_prompts(path: Path = PROMPTS_FILE) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and not line.startswith("#")]


def split_prompts(prompts: list[str], held_out: float = 0.2, seed: int = 0) -> tuple[list[str], list[str]]:
    """A fixed train / held-out split."""
    order = list(prompts)
    random.Random(seed).shuffle(order)
    cut = int(len(order) * (1 - held_out))
    return order[:cut], order[cut:]


class PreferenceChatEnv(gym.Env):
    metadata = {"render_modes": []}

    def __init__(self, user, prompts: list[str], mode: str = "pair", episode_length: int = 32,
                 history_length: int = 3):
        if mode not in ("pair", "single"):
            raise ValueError("mode is 'pair' or 'single'")
        if not prompts:
            raise ValueError("no prompts")
        if history_length < 0:
            raise ValueError("history_length cannot be negative")
        self.user, self.prompts, self.mode, self.episode_length = user, list(prompts), mode, episode_length
        self.history_length = history_length
        text = spaces.Text(max_length=MAX_CHARS, min_length=0, charset=_CHARSET)
        step = spaces.Dict({"prompt": text, "reply": text, "feedback": spaces.Discrete(3, start=-1)})
        self.observation_space = spaces.Dict({"prompt": text, "history": spaces.Sequence(step)})
        self.action_space = spaces.Tuple((text, text)) if mode == "pair" else text
        self._rng = random.Random(0)
        self._prompt = ""
        self._steps = 0
        self._history: list[dict] = []

    def _observation(self) -> dict:
        return {"prompt": self._prompt, "history": tuple(dict(step) for step in self._history)}

    def _next_prompt(self) -> str:
        return self._rng.choice(self.prompts)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._rng = random.Random(seed)
        self._steps = 0
        self._history = []
        self._prompt = self._next_prompt()
        return self._observation(), {"user": self.user.name}

    def step(self, action):
        prompt = self._prompt
        if self.mode == "pair":
            a, b = action
            choice = choose(self.user, prompt, a, b, self._rng)
            reward = {"a": 1.0, "b": -1.0, "tie": 0.0}[choice]
            info = {"prompt": prompt, "choice": choice, "user_rewards": (self.user.reward(prompt, a),
                                                                         self.user.reward(prompt, b))}
            kept = b if choice == "b" else a
        else:
            vote = thumbs(self.user, prompt, action)
            reward = float(vote)
            info = {"prompt": prompt, "thumbs": vote, "user_rewards": (self.user.reward(prompt, action),)}
            kept = action
        self._steps += 1
        if self.history_length:
            self._history = [*self._history, {"prompt": prompt, "reply": kept, "feedback": int(reward)}]
            self._history = self._history[-self.history_length:]
        self._prompt = self._next_prompt()
        return self._observation(), reward, False, self._steps >= self.episode_length, info
