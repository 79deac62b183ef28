"""Training from thumbs: KTO's 👎 weighed as TRL advises, and the chosen-reply term on thumbed replies (a lesson
under a 👍 reply's hidden instruction, a leash on a 👎)."""

from __future__ import annotations

import pytest
import torch

from adapters.data import Examples, UnpairedExample, collate, encode, encode_examples
from adapters.logprobs import sequence_logps
from adapters.lora import add_lora
from adapters.training import balanced, train_adapter
from assistant.config import LoraSettings, ModelConfig, TrainConfig
from assistant.model import load_model
from tests.test_training import INSTRUCTION, _mean_kl, _replies_after, _synthetic_pairs
from tests.test_training import follower  # noqa: F401  (a fixture: a tiny model an instruction steers)


def test_kto_balance_weighs_the_thumbs_down_no_more_than_the_thumbs_up():
    config = TrainConfig()
    assert balanced(config, [True, False, False, False]).undesirable_weight == pytest.approx(1 / 3)
    assert balanced(config, [True, True, False]) == config  # more 👍 than 👎: as set
    assert balanced(config, [False] * 4).undesirable_weight == 0.25  # no 👍: as if one
    assert balanced(TrainConfig(kto_balance=False), [False] * 4) == TrainConfig(kto_balance=False)


def test_thumbs_down_alone_move_the_model_less_when_balanced(tiny_model_dir):
    """Undesirable examples alone push their replies' likelihood down without end; balanced, the same update moves
    the rest of the model's text less."""
    neutral = collate([encode(load_model(ModelConfig(model=str(tiny_model_dir)), tiny_model_dir.parent),
                              [{"role": "user", "content": "Say something."}], "The library opens at nine.", 64)], 0)
    moved = {}
    for balance in (True, False):
        loaded = load_model(ModelConfig(model=str(tiny_model_dir)), tiny_model_dir.parent)
        torch.manual_seed(0)
        model = add_lora(loaded.model, LoraSettings(rank=8, alpha=16))
        before = sequence_logps(model, neutral).item()
        downs = [UnpairedExample([{"role": "user", "content": f"Question {i}?"}], f"A reply about thing {i}.", False,
                                 f"f{i}", "u") for i in range(8)]
        metrics = train_adapter(model, loaded, Examples([], downs),
                                TrainConfig(steps=20, learning_rate=5e-3, kto_balance=balance))
        with torch.no_grad():
            moved[balance] = abs(sequence_logps(model, neutral).item() - before)
        assert metrics["kto/undesirable_weight"] == (0.125 if balance else 1.0)
    assert moved[True] < moved[False] / 2, moved


def test_a_liked_reply_written_under_an_instruction_teaches_it_unasked(follower, tmp_path):  # noqa: F811
    """A 👍 on a reply written under a hidden instruction (a probe, the person's words, the note) is distilled under
    it, as a chosen reply is; a 👎 is distilled under the prompt as sent only (a leash, not a lesson)."""
    loaded = load_model(ModelConfig(model=str(follower)), tmp_path)
    train, held = _synthetic_pairs(16, 0), _synthetic_pairs(8, 500)
    liked = [UnpairedExample(p.prompt, p.chosen, True, p.feedback_id, "u", instruction=INSTRUCTION) for p in train]

    def sequences(pairs, hinted):
        return _replies_after(loaded, pairs, hinted)

    torch.manual_seed(0)
    model = add_lora(loaded.model, LoraSettings(rank=8, alpha=16))
    before = _mean_kl(model, loaded, sequences(held, True), sequences(held, False))
    metrics = train_adapter(model, loaded, Examples([], liked), TrainConfig(steps=30, learning_rate=5e-3))
    after = _mean_kl(model, loaded, sequences(held, True), sequences(held, False))
    assert "kto/distill_loss" in metrics
    assert before > 0.1 and after < 0.3 * before, (before, after)
    disliked = [UnpairedExample(p.prompt, p.chosen, False, p.feedback_id, "u", instruction=INSTRUCTION)
                for p in train]
    enc = encode_examples(loaded, Examples([], disliked), 384, 192)
    assert enc.unpaired_taught == enc.unpaired  # the reply after the prompt as sent: what it is held to
