"""LoRA training from preference examples: DPO on pairs (with a distillation term on the chosen reply, see
`TrainConfig.chosen_term`) plus KTO on unpaired feedback, a few steps at a time.

The caller passes the model: the base for the global adapter, or base + global merged for a personal one
(a residual on top of the global adapter). In both cases the reference policy is that model with the LoRA disabled, so
the KL leash pulls towards the model the adapter is trained on top of. Reference log-probs are computed
once per example before the steps. Logits are only computed at reply positions.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import re
import zlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import PreTrainedModel

from adapters.data import Batch, Examples, PairExample, UnpairedExample, collate, encode, fit_prompt
from adapters.losses import (Teacher, distill_kl, dpo_loss, kto_loss, kto_reference_point, pair_metrics,
                             rest_log_mass)
from adapters.everyday import everyday_sequences
from assistant.explore import instructed
from assistant.generation import left_padded, sampling_kwargs
from assistant.model import LoadedModel
from storage.errors import InvalidInput

log = logging.getLogger(__name__)

TARGET_MODULES = {
    "gpt2": ["c_attn", "c_proj"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj"],
}
DEFAULT_TARGETS = ["q_proj", "v_proj"]
MLP_MODULES = {
    "gpt2": ["mlp.c_fc", "mlp.c_proj"],
    "llama": ["mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"],
    "mistral": ["mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"],
    "qwen2": ["mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"],
}
"""The feed-forward projections `LoraSettings.mlp_top_layers` adapts, as paths inside one layer."""


@dataclass(frozen=True)
class LoraSettings:
    rank: int = 8
    """LoRA rank r. Rank 16 with alpha 32 (the same alpha / r; 8 users to 32 choices, seed 2, paired with the
    default's run; bench/results/learning_curve_comparison_rank16_seed2{,_served}.json): blend win rate vs base
    0.680 vs 0.727 greedy (3 users up, 5 down), 0.695 vs 0.701 as served at T 0.2, worst neutral perplexity ×1.110
    vs ×1.161. Thirty-two noisy choices do not need more capacity; 8 stays."""
    alpha: int = 16
    """LoRA scaling numerator: the update is (alpha / rank)·B·A."""
    dropout: float = 0.0
    target_modules: tuple[str, ...] | None = None
    """Module names to adapt; None: chosen per architecture (TARGET_MODULES)."""
    top_layers: float = 2 / 3
    """Adapt only this top fraction of the layers (20 of SmolLM2's 30): backpropagation then stops there. Measured on
    SmolLM2-135M, 8 sequences, one thread, bf16: forward + backward 2.7 s with all 30 layers adapted, 1.2 s with the
    top 10. Learning curves against the previous default, the top third (`bench/results/
    learning_curve_comparison_two_thirds{,_served}.json`; full run, seed 2, paired draw for draw): blend win rate vs
    base after 32 choices 0.727 vs 0.620 greedy (6 vs 4 users ≥ 0.70), 0.610 vs 0.588 as served, 0.734 vs 0.646 after
    64; shared home 0.685 vs 0.641; worst neutral perplexity ×1.16 vs ×1.24. Seed 3 to 32 (`…_two_thirds_seed3`):
    0.667 vs 0.620 greedy, 0.664 vs 0.565 as served, worst perplexity ×1.16 vs ×1.08. Every layer (1.0; seeds 1 and 2 to 32,
    `learning_curve_comparison_layers_all{,_served}.json`): 0.682 vs 0.621. Vote-to-new-version latency
    (`learning_speed_layers.json`, AMD EPYC, 8 pairs of an 8-turn conversation, median of 5): 11.4 s top third,
    13.4 s two thirds, 17.1 s every layer, against a 15 s target — every layer does not fit it."""

    mlp_top_layers: float = 0.0
    """Also adapt the feed-forward projections (`MLP_MODULES`) of this top fraction of the layers; 0: none. It
    must not exceed `top_layers`, so that backpropagation still stops at the lowest adapted layer. Measured with
    attention on two thirds and the MLP on the top third (1/3; 8 users to 32 choices, seed 2, paired with the
    default's run; bench/results/learning_curve_comparison_mlp_top_third_attn_two_thirds_seed2{,_served}.json):
    blend win rate vs base 0.623 vs 0.727 greedy (1 user up, 6 down), 0.617 vs 0.701 as served at T 0.2, worst
    neutral perplexity ×1.205 vs ×1.161; vote-to-new-version latency 15.5 s vs 13.4 s measured beside it
    (`learning_speed_mlp_top_third_attn_two_thirds.json`, `learning_speed_default_beside_mlp.json`). Off."""

    def __post_init__(self):
        if self.rank < 1 or self.alpha <= 0 or not 0 <= self.dropout < 1 or not 0 < self.top_layers <= 1:
            raise ValueError("LoRA needs rank ≥ 1, alpha > 0, 0 ≤ dropout < 1 and 0 < top_layers ≤ 1")
        if not 0 <= self.mlp_top_layers <= self.top_layers:
            raise ValueError("LoRA needs 0 ≤ mlp_top_layers ≤ top_layers")

    def layers(self, model: PreTrainedModel) -> list[int]:
        """Indexes of the adapted layers (the top `top_layers` of them)."""
        return self._top(model, self.top_layers)

    @staticmethod
    def _top(model: PreTrainedModel, fraction: float) -> list[int]:
        n = model.config.num_hidden_layers
        return list(range(n - max(1, math.ceil(n * fraction)), n)) if fraction else []

    def peft_config(self, model: PreTrainedModel) -> LoraConfig:
        kind = model.config.model_type
        targets = list(self.target_modules or TARGET_MODULES.get(kind, DEFAULT_TARGETS))
        layers = self.layers(model)
        common = dict(r=self.rank, lora_alpha=self.alpha, lora_dropout=self.dropout, task_type="CAUSAL_LM",
                      fan_in_fan_out=kind == "gpt2")
        if not self.mlp_top_layers:
            return LoraConfig(target_modules=targets, layers_to_transform=layers, **common)
        if kind not in MLP_MODULES:
            raise ValueError(f"lora.mlp_top_layers: no feed-forward module names known for {kind!r}; "
                             "name them in lora.target_modules instead")
        # Two sets of layers: one regex (peft full-matches it against each module's path; layers_to_transform
        # cannot be combined with it).
        mlp_layers = self._top(model, self.mlp_top_layers)

        def part(names: list[str], indexes: list[int]) -> str:
            return (rf".*\.({'|'.join(map(str, indexes))})\.(.*\.)?"
                    rf"({'|'.join(re.escape(name) for name in names)})")

        pattern = f"{part(targets, layers)}|{part(MLP_MODULES[kind], mlp_layers)}"
        return LoraConfig(target_modules=pattern, **common)


@dataclass(frozen=True)
class TrainConfig:
    beta: float = 0.1
    """DPO/KTO temperature: larger keeps the policy closer to the reference."""
    label_smoothing: float = 0.0
    """DPO conservative smoothing ε in [0, 0.5) for noisy choosers (cDPO): each choice is taken as flipped with
    probability ε, so the loss stops pulling once a pair's implicit reward margin reaches log((1 − ε) / ε) / β.
    The simulated choosers agree with their own reward on 0.80 of informative pairs. Measured at ε = 0.2 (8 users
    to 32 choices, seeds 2 and 3, each paired with the default's run; bench/results/
    learning_curve_comparison_ls02{,_served}.json): blend win rate vs base −0.020 greedy (−0.034, −0.005 by seed;
    6 users up, 8 down), −0.019 as served at T 0.2 (5 up, 10 down); users past ×1.10 neutral perplexity 1 of 16
    instead of 4 (worst ×1.049 and ×1.127 against ×1.161 and ×1.163). In the shared home (seed 2, 16 choices each,
    `learning_curve_pilot_ls02_population_seed2.json`) the blend won 0.667 vs 0.685 and its worst perplexity was
    ×1.068 vs ×0.997. Less drift for users alone, a little less taste everywhere: an option, off."""
    learning_rate: float = 4e-3
    """AdamW step size of an adapter's first update (see `decay`). Learning-curve pilots (bullets, casual,
    emoji_lover, examples; 32 choices; mean blend win rate vs base, worst neutral-perplexity ratio): with the NLL
    term 0.67 / ×1.12 at 1e-3 and 0.69 / ×1.56 at 2e-3; with distillation (`chosen_term`) 0.61 / ×1.08 at 1e-3,
    0.66 / ×1.09 at 2e-3, 0.73 / ×1.11 at 4e-3 — the KL leash is what lets the step size grow. With LoRA on two
    thirds of the layers, 3e-3 against 4e-3 (8 users to 32 choices, seeds 2 and 3, paired; bench/results/
    learning_curve_comparison_lr3e-3{,_served}.json): +0.016 greedy, +0.002 as served, and 2 and 3 users past ×1.10
    neutral perplexity instead of 2 and 2 — no better on drift, so 4e-3 stays."""
    rpo_alpha: float = 1.0
    """Weight of the chosen-reply term added to the DPO loss (TRL's `rpo_alpha`; the term is `chosen_term`): DPO
    alone can push down both replies of a pair, moving probability to text nobody chose. With compare mode's
    exploration the chosen reply is often a probed one (a list, emoji, …) the model would not write unasked; this
    term is what teaches it to. Learning-curve pilot (bullets, casual, emoji_lover, examples; 32 choices): blend
    win rate vs base 0.55 (mean, no exploration, no NLL) → 0.59 (half the pairs probed, NLL) → 0.67 (every pair
    probed, NLL)."""
    chosen_term: str = "distill"
    """What the `rpo_alpha` term asks of the chosen reply, per token, averaged over its tokens:
    "nll": its negative log-likelihood (RPO, as TRL) — the adapter copies that one sampled reply;
    "distill": the KL divergence from the reference model's next-token distribution given the prompt the reply
    was generated from (the exploration instruction included) to the policy's given the prompt as sent. For a
    probed reply that is context distillation (Snell et al. 2022, "Learning by distilling context"): the adapter
    learns to answer as if asked to, from the whole distribution instead of one sample; for a plain reply it is a
    token-level KL leash to the reference."""
    distill_top_k: int = 64
    """Reference tokens kept per position for "distill"; the rest of the vocabulary is one more outcome, "any other
    token", so the policy is asked to match the tail's total mass, not to squeeze it into the k (keeping a 49k
    vocabulary per token would cost ~0.2 MB)."""
    on_policy_weight: float = 0.0
    """Weight of on-policy context distillation (0: off). The "distill" term teaches on the chosen reply's own
    tokens: prefixes sampled under the instruction, which the policy asked plainly may never write itself. With this
    term, at the start of an update the policy (the warm-started adapter) samples its own replies to the plain
    prompts of up to `on_policy_pairs` pairs whose chosen reply followed an exploration instruction, and every step
    also asks, per token of those replies, for the reference's next-token distribution given the instructed prompt
    (KL(teacher ‖ policy), top-k as "distill"): the policy is taught where its own replies go (generalised knowledge
    distillation, Agarwal et al. 2024, "On-policy distillation of language models"). Measured at weight 1 (8 users
    to 32 choices, seed 1, paired with the default's run of the same seed; bench/results/
    learning_curve_comparison_on_policy_seed1{,_served}.json): blend win rate 0.570 vs 0.622 with greedy replies
    (1 user up, 6 down), 0.585 vs 0.571 with replies sampled as served (5 up, 3 down), worst neutral perplexity
    ×1.065 vs ×1.071, and an update's training 13–19 s instead of 3–6 s (the sampling). Not a gain; off."""
    everyday_weight: float = 0.0
    """Weight of the everyday-text leash (0: off): every step also asks, per token of `batch_size` of the plain
    replies in `adapters.everyday`, for KL(reference ‖ policy) over the reference's top-k next tokens (as "distill"),
    so a taste is learned where it does not move ordinary replies, as InstructGPT's PPO-ptx mixes pretraining data
    into its updates. The drift guard's anchor and the benchmark's neutral text are other texts. Measured at weight
    1 (8 users to 32 choices, seed 2, paired with the default's run; bench/results/
    learning_curve_comparison_plain1_seed2{,_served}.json): every user within ×1.10 neutral perplexity (worst ×1.071,
    mean ×1.018, against ×1.161 and ×1.061), but blend win rate vs base −0.086 greedy (0.641 vs 0.727) and −0.080 as
    served at T 0.2; `examples` fell to 0.396 and `emoji_lover` to 0.500. The plain replies carry no example, no
    emoji and no list, so holding them in place holds exactly what those users want changed. Label smoothing
    (`label_smoothing` 0.2) held the drift as well on this seed for −0.034. Off."""
    on_policy_pairs: int = 8
    """At most this many pairs (new ones come first in an update's examples) get an on-policy reply per update."""
    on_policy_tokens: int = 32
    """Length of the policy's on-policy replies, in tokens."""
    on_policy_temperature: float = 0.7
    """Sampling temperature of the on-policy replies (0: greedy); the app serves at 0.7 by default."""
    decay: bool = True
    """Step size of the adapter's k-th warm-started update = learning_rate / k ** `decay_power`. Every update starts
    a fresh AdamW, whose first steps move each weight by about the learning rate whatever the gradient's size, so
    with a constant rate an adapter that keeps updating random-walks away on noisy choices. Measured with the
    learning-curve benchmark (bench/results/learning_curve_ablation_decay.json), user `emoji_lover` after 16/32/64
    choices: blend win rate vs base 0.38/0.17/0.10 and neutral perplexity ×1.20 at 32, ×2.30 at 64 with a
    constant rate; 0.58/0.60/0.58 and ×1.07, ×1.14 with the decay."""
    decay_power: float = 1.0
    """With `decay`, the k-th update's step size is learning_rate / k ** decay_power (0.5: 1/√k, 1: 1/k). The
    learning-curve pilot of all 8 users to 32 choices (lr 4e-3; bench/results/learning_curve_pilot_decay1_8users.json)
    measured the blend's neutral perplexity at most ×1.109 with 1/k against ×1.145 with 1/√k in the full run, mean
    blend win rate 0.667 against 0.69 (one run each; the SE of an 8-user mean is ≈ 0.035). The two full runs with
    1/k (README, Learning curves): worst perplexity at 32 ×1.10 and ×1.12 (`casual`; the others ≤ ×1.07), and the
    mean curve rose from 32 to 64 choices (+0.02, +0.05) where with 1/√k it fell (−0.03); their win rates at 32 (0.66,
    0.62) are within the spread between runs."""
    epochs: float = 4.0
    """Passes over the update's new examples; replayed older ones are mixed into the same steps. The learning-curve
    benchmark (lr 1e-3, 32 choices) measured blend win rates 0.69 (bullets) and 0.69 (formal) at 4 epochs,
    0.69 and 0.63 at 2."""
    max_steps: int = 16
    """Upper bound on optimizer steps per update, whatever the data."""
    steps: int | None = None
    """Exact optimizer steps, overriding epochs (tests and benchmarks)."""
    batch_size: int = 4
    """Pairs (and, separately, unpaired examples) per step."""
    bf16: bool | None = None
    """bf16 autocast for forward and backward; None: on when the CPU has native bf16 (AVX512-BF16 / AMX).
    Measured on SmolLM2-135M, 8 sequences, one thread: forward 2.9 s fp32, 0.9 s bf16 (AMX)."""
    max_length: int = 384
    """Longest prompt+reply sequence trained on, in tokens."""
    max_prompt_tokens: int = 192
    """Newest tokens of the conversation kept as the prompt when training (a taste rarely needs more; the
    compute of an update grows with it)."""
    desirable_weight: float = 1.0
    undesirable_weight: float = 1.0
    unpaired_weight: float = 1.0
    """Weight of the KTO term next to the DPO term."""
    seed: int = 0
    share_prompts: bool = True
    """Run a pair's prompt once for both replies in a training step (`shared_prompt_log_probs`): the same
    log-probabilities and gradients as two full sequences, with fewer tokens through the model. Measured on the
    embedded model (AMD EPYC, 2 threads, bf16, 8 steps on the 5 training pairs of an 8-turn conversation, prompts
    up to 192 tokens; medians of 3): top third of the layers 11.3 → 9.3 s, every layer 20.3 → 15.5 s. Single-turn
    prompts (≈ 30 tokens) gain nothing: 5.0 vs 5.2 s and 7.9 vs 8.0 s."""

    def __post_init__(self):
        if self.beta <= 0 or self.learning_rate <= 0 or self.batch_size < 1 or self.epochs <= 0:
            raise ValueError("beta, learning_rate and epochs must be positive, batch_size ≥ 1")
        if (self.steps is not None and self.steps < 0) or self.max_steps < 1:
            raise ValueError("steps must be ≥ 0 and max_steps ≥ 1")
        if self.rpo_alpha < 0 or self.decay_power < 0:
            raise ValueError("rpo_alpha and decay_power must be ≥ 0")
        if self.chosen_term not in ("nll", "distill") or self.distill_top_k < 1:
            raise ValueError("chosen_term must be 'nll' or 'distill', and distill_top_k ≥ 1")
        if not 0 <= self.label_smoothing < 0.5:
            raise ValueError("label_smoothing must be in [0, 0.5)")
        if self.everyday_weight < 0:
            raise ValueError("everyday_weight must be ≥ 0")
        if self.on_policy_weight < 0 or self.on_policy_pairs < 1 or self.on_policy_tokens < 1 \
                or self.on_policy_temperature < 0:
            raise ValueError("on_policy_weight and on_policy_temperature must be ≥ 0, on_policy_pairs and "
                             "on_policy_tokens ≥ 1")

    def steps_for(self, examples: Examples, new: int | None = None) -> int:
        """Optimizer steps for an update: `epochs` passes over its `new` examples (default: all of them), so
        an update costs in proportion to the new feedback however much replay it mixes in."""
        if self.steps is not None:
            return self.steps
        count = new if new is not None else max(len(examples.pairs), len(examples.unpaired))
        return max(1, min(self.max_steps, math.ceil(self.epochs * count / self.batch_size)))

    def learning_rate_at(self, update: int) -> float:
        """The step size of an adapter's `update`-th version in its warm-start chain (1 = trained from scratch)."""
        return self.learning_rate / max(1, update) ** self.decay_power if self.decay else self.learning_rate

    def autocast(self) -> torch.autocast:
        enabled = self.bf16 if self.bf16 is not None else native_bf16()
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled)


def objective(config: TrainConfig) -> str:
    """The loss an update trained with, as its manifest names it: "dpo+kto", then "+distill" or "+nll" when the
    chosen-reply term is on, "+on_policy_distill" and "+everyday_distill" when those terms are."""
    return ("dpo+kto" + (f"+{config.chosen_term}" if config.rpo_alpha > 0 else "")
            + ("+on_policy_distill" if config.on_policy_weight > 0 else "")
            + ("+everyday_distill" if config.everyday_weight > 0 else ""))


def native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (otherwise autocast is slower than fp32)."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def add_lora(model: PreTrainedModel, settings: LoraSettings) -> PeftModel:
    """Wrap `model` with a fresh, trainable LoRA adapter; every base weight is frozen."""
    return get_peft_model(model, settings.peft_config(model))


def completion_log_probs(model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token log-probabilities at every position that predicts a completion token, shape (tokens, vocab), in
    row-major order, and the batch row of each, shape (tokens,)."""
    predicts = torch.zeros_like(batch.completion_mask)
    predicts[:, :-1] = batch.completion_mask[:, 1:]  # position t predicts token t+1
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, logits_to_keep=predicts)
    logits = out.logits.reshape(-1, out.logits.shape[-1]).float()  # (tokens kept, vocab), row-major order
    return torch.log_softmax(logits, dim=-1), predicts.nonzero()[:, 0]


def shared_prompt_log_probs(model: torch.nn.Module, first: list[tuple[list[int], int]],
                            second: list[tuple[list[int], int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`completion_log_probs(model, collate(first + second, pad_id))` for pairs whose two sequences share their
    prompt (`first[i]` and `second[i]`: the same ids up to the same prompt length), with each prompt run once.

    The prompts go through the model once, right-padded, keeping their key/value cache; the cache is repeated for
    the two completions of each pair, which then run with positions that continue their own prompt (a padded
    prompt's gap is masked). Gradients flow through the cache into the prompt, as in the plain forward. A DPO
    step's prompt is then computed once instead of twice: in a long conversation it is most of the tokens."""
    n = len(first)
    prompts = [ids[:plen] for ids, plen in first]
    lengths = torch.tensor([len(p) for p in prompts])
    prompt_ids = torch.full((n, int(lengths.max())), pad_id, dtype=torch.long)
    for row, ids in enumerate(prompts):
        prompt_ids[row, : len(ids)] = torch.tensor(ids)
    prompt_mask = (torch.arange(prompt_ids.shape[1])[None, :] < lengths[:, None]).long()
    last = torch.zeros_like(prompt_mask, dtype=torch.bool)
    last[torch.arange(n), lengths - 1] = True  # the prompt's last token predicts the completion's first
    out = model(input_ids=prompt_ids, attention_mask=prompt_mask, use_cache=True, logits_to_keep=last)
    first_logits, cache = out.logits, out.cache  # (n, vocab): row i is prompt i's prediction
    completions = [ids[plen:] for ids, plen in (*first, *second)]  # rows: every first, then every second
    sizes = torch.tensor([len(c) for c in completions])
    cont_ids = torch.full((2 * n, int(sizes.max())), pad_id, dtype=torch.long)
    for row, ids in enumerate(completions):
        cont_ids[row, : len(ids)] = torch.tensor(ids)
    order = torch.arange(2 * n) % n  # each row's prompt
    cache.batch_select_indices(order)
    steps = torch.arange(cont_ids.shape[1])[None, :]
    cont_mask = (steps < sizes[:, None]).long()
    keep = steps < (sizes - 1)[:, None]  # completion token t predicts token t+1 (the last predicts nothing kept)
    out = model(input_ids=cont_ids, attention_mask=torch.cat([prompt_mask[order], cont_mask], dim=1),
                position_ids=lengths[order][:, None] + steps, cache=cache, logits_to_keep=keep)
    cont_logits = out.logits.reshape(-1, out.logits.shape[-1])  # (kept, vocab), row-major
    # Row-major order as the plain forward gives it: each row's first prediction (from its prompt), then the rest.
    starts = torch.cumsum(sizes - 1, 0) - (sizes - 1)
    index = torch.cat([torch.cat([order[r:r + 1], n + starts[r] + torch.arange(int(sizes[r]) - 1)])
                       for r in range(2 * n)])
    logits = torch.cat([first_logits.reshape(n, -1), cont_logits])[index].float()
    return torch.log_softmax(logits, dim=-1), torch.repeat_interleave(torch.arange(2 * n), sizes)


def shares_prompts(first: list[tuple[list[int], int]], second: list[tuple[list[int], int]]) -> bool:
    """Whether each pair's two sequences start with the same prompt (what `shared_prompt_log_probs` needs)."""
    return all(a_len == b_len and a[:a_len] == b[:b_len] for (a, a_len), (b, b_len) in zip(first, second))


def _summed(batch: Batch, log_probs: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    targets = batch.input_ids[:, 1:][batch.completion_mask[:, 1:]]
    token_logps = log_probs.gather(1, targets[:, None]).squeeze(1)
    return torch.zeros(batch.input_ids.shape[0], dtype=token_logps.dtype).index_add(0, rows, token_logps)


def sequence_logps(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """Summed log-probability of each row's completion tokens, shape (batch,)."""
    return _summed(batch, *completion_log_probs(model, batch))


def teachers(model: torch.nn.Module, sequences: list[tuple[list[int], int]], pad_id: int, top_k: int,
             chunk: int = 8) -> tuple[list[Teacher], torch.Tensor]:
    """`model`'s top-k next-token distributions at each sequence's completion positions, and the summed
    log-probability of each completion, shape (sequences,), from the same forward (call without grad)."""
    out, sums = [], []
    for start in range(0, len(sequences), chunk):
        batch = collate(sequences[start:start + chunk], pad_id)
        log_probs, rows = completion_log_probs(model, batch)
        sums.append(_summed(batch, log_probs, rows))
        top, ids = log_probs.topk(min(top_k, log_probs.shape[-1]), dim=-1)
        top = torch.cat([top, rest_log_mass(top)], dim=-1)
        for row in range(min(chunk, len(sequences) - start)):
            mine = rows == row
            out.append(Teacher(top[mine], ids[mine].to(torch.int32)))
    return out, torch.cat(sums) if sums else torch.zeros(0)


@dataclass
class _Encoded:
    chosen: list[tuple[list[int], int]] = field(default_factory=list)
    rejected: list[tuple[list[int], int]] = field(default_factory=list)
    unpaired: list[tuple[list[int], int]] = field(default_factory=list)
    labels: list[bool] = field(default_factory=list)
    mismatched: list[tuple[list[int], int]] = field(default_factory=list)
    taught: list[tuple[list[int], int]] = field(default_factory=list)
    """Each chosen reply after the prompt it was generated from (the exploration instruction included)."""


def _encode_all(loaded: LoadedModel, examples: Examples, max_length: int, max_prompt: int) -> _Encoded:
    enc = _Encoded()
    for p in examples.pairs:
        enc.chosen.append(encode(loaded, p.prompt, p.chosen, max_length, max_prompt, p.chosen_ended))
        enc.rejected.append(encode(loaded, p.prompt, p.rejected, max_length, max_prompt, p.rejected_ended))
        enc.taught.append(_generated_from(loaded, p, max_length, max_prompt) if p.chosen_instruction else enc.chosen[-1])
    items = examples.unpaired
    for i, u in enumerate(items):
        enc.unpaired.append(encode(loaded, u.prompt, u.completion, max_length, max_prompt, u.ended))
        enc.labels.append(u.label)
        # Reply i against the prompt of i+1: what the policy does to replies that do not answer (KTO's z0).
        other = items[(i + 1) % len(items)]
        enc.mismatched.append(encode(loaded, other.prompt, u.completion, max_length, max_prompt, u.ended))
    return enc


def _generated_from(loaded: LoadedModel, p: PairExample, max_length: int, max_prompt: int) -> tuple[list[int], int]:
    try:
        return encode(loaded, instructed(p.prompt, p.chosen_instruction), p.chosen, max_length, max_prompt,
                      p.chosen_ended)
    except InvalidInput:  # the instruction does not fit: the reply's own prompt teaches instead
        return encode(loaded, p.prompt, p.chosen, max_length, max_prompt, p.chosen_ended)


class ReferenceCache:
    """The reference model's values of training pairs — summed log-probs of both replies and the chosen one's
    distillation teacher — and its teachers on the everyday-text leash's replies, kept across updates: an update
    replays older pairs, and while the reference stays the same (for a personal adapter: until the global version
    changes) their values do too. Least recently used first out. Keys come from `pair_key` (and, for the leash,
    `_everyday_references`); the worker keeps the held-out margins of the model below an adapter in another one."""

    def __init__(self, size: int = 2048):
        self.size = size
        self._items: OrderedDict[str, Any] = OrderedDict()

    def get(self, key: str) -> Any:
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        return None

    def put(self, key: str, value: Any) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.size:
            self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


def pair_key(reference_key: str, pair: PairExample, config: TrainConfig, distilling: bool = False) -> str:
    """Everything a pair's reference values depend on besides the reference's weights."""
    facts = [reference_key, pair.prompt, pair.chosen, pair.rejected, pair.chosen_ended, pair.rejected_ended,
             pair.chosen_instruction, config.max_length, config.max_prompt_tokens, distilling and config.distill_top_k]
    return hashlib.sha256(json.dumps(facts, ensure_ascii=False).encode()).hexdigest()


def _pair_references(model, enc: _Encoded, pairs: list[PairExample], config: TrainConfig, distilling: bool, pad: int,
                     cache: ReferenceCache | None, reference_key: str):
    """(reference log-probs of the chosen replies, of the rejected ones, distillation teachers) — from `cache` where
    it has them, else from the model (call without grad, adapter disabled)."""
    keys = [pair_key(reference_key, p, config, distilling) for p in pairs] if cache is not None else []
    known = {i: v for i, k in enumerate(keys) if (v := cache.get(k)) is not None} if cache is not None else {}
    missing = [i for i in range(len(pairs)) if i not in known]
    chosen, rejected = torch.zeros(len(pairs)), torch.zeros(len(pairs))
    taught: list[Teacher | None] = [None] * len(pairs)
    for i, (c, r, t) in known.items():
        chosen[i], rejected[i], taught[i] = c, r, t
    if missing:
        if distilling:  # a plain chosen reply is its own teacher sequence: one forward gives both
            new_taught, sums = teachers(model, [enc.taught[i] for i in missing], pad, config.distill_top_k)
            chosen[missing] = sums
            for i, t in zip(missing, new_taught):
                taught[i] = t
            probed = [i for i in missing if enc.taught[i] is not enc.chosen[i]]
            if probed:
                chosen[probed] = _logps_in_chunks(model, [enc.chosen[i] for i in probed], pad, 8)
        else:
            chosen[missing] = _logps_in_chunks(model, [enc.chosen[i] for i in missing], pad, 8)
        rejected[missing] = _logps_in_chunks(model, [enc.rejected[i] for i in missing], pad, 8)
        if cache is not None:
            for i in missing:
                cache.put(keys[i], (chosen[i].item(), rejected[i].item(), taught[i]))
    return chosen, rejected, taught


@torch.no_grad()
def on_policy_targets(model: PeftModel, loaded: LoadedModel, pairs: list[PairExample],
                      config: TrainConfig) -> tuple[list[tuple[list[int], int]], list[Teacher]]:
    """The policy's own replies to the plain prompts of the first `config.on_policy_pairs` pairs whose chosen reply
    followed an instruction, as (ids, prompt length) sequences, and the reference's (adapter disabled) distribution
    at each of their tokens given the instructed prompt. Sampled from a seed fixed by the prompts; the caller's
    random state is left as it was."""
    tokenizer = loaded.tokenizer
    plain, taught_prompts = [], []
    for p in pairs:
        if not p.chosen_instruction:
            continue
        try:
            fitted = [fit_prompt(loaded, prompt, config.max_length, config.max_prompt_tokens, config.on_policy_tokens)
                      for prompt in (p.prompt, instructed(p.prompt, p.chosen_instruction))]
        except InvalidInput:  # no room for the instruction: this pair teaches through "distill" alone
            continue
        plain.append(fitted[0])
        taught_prompts.append(fitted[1])
        if len(plain) == config.on_policy_pairs:
            break
    if not plain:
        return [], []
    input_ids, attention_mask = left_padded(plain, tokenizer.pad_token_id)  # (rows, widest prompt)
    model.eval()
    with torch.random.fork_rng(devices=[]), config.autocast():
        torch.manual_seed(zlib.crc32(json.dumps([config.seed, plain]).encode()))
        out = model.generate(input_ids=input_ids, attention_mask=attention_mask,
                             max_new_tokens=config.on_policy_tokens, pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=tokenizer.eos_token_id,
                             **sampling_kwargs(config.on_policy_temperature, 1.0))
    replies = []
    for row in out[:, input_ids.shape[1]:].tolist():  # up to and with the first end-of-sequence, no padding
        replies.append(row[: row.index(tokenizer.eos_token_id) + 1] if tokenizer.eos_token_id in row else row)
    with model.disable_adapter(), config.autocast():
        taught, _ = teachers(model, [(t + r, len(t)) for t, r in zip(taught_prompts, replies)],
                             tokenizer.pad_token_id, config.distill_top_k)
    return [(p + r, len(p)) for p, r in zip(plain, replies)], taught


def _logps_in_chunks(model, sequences, pad_id: int, chunk: int) -> torch.Tensor:
    if not sequences:
        return torch.zeros(0)
    return torch.cat([sequence_logps(model, collate(sequences[i:i + chunk], pad_id))
                      for i in range(0, len(sequences), chunk)])


def train_adapter(
    model: PeftModel,
    loaded: LoadedModel,
    examples: Examples,
    config: TrainConfig,
    progress: Callable[[int, int, dict], None] | None = None,
    new_examples: int | None = None,
    references: ReferenceCache | None = None,
    reference_key: str = "",
) -> dict:
    """Run `config.steps_for(examples)` optimizer steps; return TRL-named metrics of the last step.

    `references`: where the reference model's values of each pair are kept across calls; `reference_key` names that
    reference model (the same key must mean the same weights, e.g. the global version a personal adapter sits on)."""
    if not len(examples):
        raise ValueError("no training examples")
    pad = loaded.tokenizer.pad_token_id
    enc = _encode_all(loaded, examples, config.max_length, config.max_prompt_tokens)
    steps = config.steps_for(examples, new_examples)
    model.eval()
    distilling = config.rpo_alpha > 0 and config.chosen_term == "distill"
    with torch.no_grad(), model.disable_adapter(), config.autocast():
        ref_chosen, ref_rejected, taught = _pair_references(model, enc, examples.pairs, config, distilling, pad,
                                                            references, reference_key)
        ref_unpaired = _logps_in_chunks(model, enc.unpaired, pad, 8)
        ref_mismatched = _logps_in_chunks(model, enc.mismatched, pad, 8)
        plain, plain_taught = (_everyday_references(model, loaded, config, references, reference_key)
                               if config.everyday_weight > 0 else ([], []))
    labels = torch.tensor(enc.labels, dtype=torch.bool)
    on_policy, on_policy_taught = (on_policy_targets(model, loaded, examples.pairs, config)
                                   if config.on_policy_weight > 0 else ([], []))

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=0.0)
    rng = random.Random(config.seed)
    pair_order = _cycle(len(enc.chosen), rng)
    unpaired_order = _cycle(len(enc.unpaired), rng)
    on_policy_order = _cycle(len(on_policy), random.Random(config.seed + 1))  # leaves the pairs' order as it was
    plain_order = _cycle(len(plain), random.Random(config.seed + 2))
    metrics: dict = {}
    _train_mode(model)
    for step in range(steps):
        loss = torch.zeros(())
        metrics = {}
        if enc.chosen:
            idx, chosen, rejected, (log_probs, rows) = _step_logps(model, enc.chosen, enc.rejected, pair_order, pad,
                                                                   config)
            pair = dpo_loss(chosen, rejected, ref_chosen[idx], ref_rejected[idx], config.beta, config.label_smoothing)
            loss = loss + pair.losses.mean()
            if distilling:
                kl = distill_kl(log_probs, rows, [taught[i] for i in idx]).mean()
                loss = loss + config.rpo_alpha * kl
                metrics["distill_loss"] = kl.item()
            elif config.rpo_alpha:
                tokens = torch.tensor([max(1, len(enc.chosen[i][0]) - enc.chosen[i][1]) for i in idx],
                                      dtype=chosen.dtype)
                nll = -(chosen / tokens).mean()
                loss = loss + config.rpo_alpha * nll
                metrics["nll_loss"] = nll.item()
            metrics.update(pair_metrics(pair))
            metrics["logps/chosen"] = chosen.mean().item()
            metrics["logps/rejected"] = rejected.mean().item()
        for name, weight, sequences, taught_here, order in (
                ("on_policy_distill_loss", config.on_policy_weight, on_policy, on_policy_taught, on_policy_order),
                ("everyday_distill_loss", config.everyday_weight, plain, plain_taught, plain_order)):
            if sequences:
                kl = _distill_step(model, sequences, taught_here, order, pad, config)
                loss = loss + weight * kl
                metrics[name] = kl.item()
        if enc.unpaired:
            idx, policy, mismatched, _ = _step_logps(model, enc.unpaired, enc.mismatched, unpaired_order, pad, config)
            z0 = kto_reference_point(mismatched, ref_mismatched[idx])
            unpaired = kto_loss(policy, ref_unpaired[idx], labels[idx], z0, config.beta, config.desirable_weight,
                                config.undesirable_weight)
            loss = loss + config.unpaired_weight * unpaired.losses.mean()
            metrics["kto/loss"] = unpaired.losses.mean().item()
            metrics["kl"] = z0.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        metrics["loss"] = loss.item()
        if progress:
            progress(step + 1, steps, metrics)
    model.eval()
    return metrics


def _distill_step(model, sequences: list, taught: list[Teacher], order, pad: int, config: TrainConfig) -> torch.Tensor:
    """Mean KL(teacher ‖ policy) over a batch of `sequences` drawn from `order` (`distill_kl`)."""
    idx = [next(order) for _ in range(min(config.batch_size, len(sequences)))]
    with config.autocast():
        log_probs, rows = completion_log_probs(model, collate([sequences[i] for i in idx], pad))
    return distill_kl(log_probs, rows, [taught[i] for i in idx]).mean()


def _everyday_references(model, loaded: LoadedModel, config: TrainConfig, cache: ReferenceCache | None,
                      reference_key: str) -> tuple[list[tuple[list[int], int]], list[Teacher]]:
    """The plain replies (`adapters.everyday`) and the reference's teachers on them, from `cache` while the reference
    stays the same (call without grad, adapter disabled)."""
    sequences = everyday_sequences(loaded)
    key = hashlib.sha256(json.dumps([reference_key, "everyday", sequences, config.distill_top_k]).encode()).hexdigest()
    taught = cache.get(key) if cache is not None else None
    if taught is None:
        taught, _ = teachers(model, sequences, loaded.tokenizer.pad_token_id, config.distill_top_k)
        if cache is not None:
            cache.put(key, taught)
    return sequences, taught


def _train_mode(model: torch.nn.Module) -> None:
    """Training mode for LoRA's own dropout only. The base model's dropout (GPT-2's 0.1) stays off, as TRL's
    `disable_dropout`: the reference log-probs are computed without it, and a policy term drawn with it would
    compare a noisy policy with a clean reference."""
    model.eval()
    for name, module in model.named_modules():
        if name.endswith("lora_dropout") or ".lora_dropout." in name:
            module.train()


def _step_logps(model, first: list, second: list, order, pad: int, config: TrainConfig):
    """Draw a batch of indices; return them, the summed log-probs of `first[i]` and `second[i]`, and the per-token
    log-probabilities they were summed from (`completion_log_probs`' layout; `first`'s rows come first). Pairs that
    share their prompts (DPO's chosen and rejected) run it once (`shared_prompt_log_probs`)."""
    idx = [next(order) for _ in range(min(config.batch_size, len(first)))]
    a, b = [first[i] for i in idx], [second[i] for i in idx]
    batch = collate(a + b, pad)
    with config.autocast():
        if config.share_prompts and shares_prompts(a, b):
            log_probs, rows = shared_prompt_log_probs(model, a, b, pad)
        else:
            log_probs, rows = completion_log_probs(model, batch)
        logps = _summed(batch, log_probs, rows)
    return idx, logps[: len(idx)], logps[len(idx):], (log_probs, rows)


def _cycle(n: int, rng: random.Random):
    """Indices 0..n-1 in a fresh shuffled order each pass."""
    while n:
        order = list(range(n))
        rng.shuffle(order)
        yield from order


@torch.no_grad()
def preference_margins(model: torch.nn.Module, loaded: LoadedModel, pairs: list[PairExample],
                       config: TrainConfig = TrainConfig()) -> torch.Tensor:
    """log π(chosen) − log π(rejected) for each pair, shape (pairs,)."""
    pad = loaded.tokenizer.pad_token_id
    chosen = [encode(loaded, p.prompt, p.chosen, config.max_length, config.max_prompt_tokens, p.chosen_ended)
              for p in pairs]
    rejected = [encode(loaded, p.prompt, p.rejected, config.max_length, config.max_prompt_tokens,
                       p.rejected_ended) for p in pairs]
    model.eval()
    with config.autocast():
        return _logps_in_chunks(model, chosen, pad, 8) - _logps_in_chunks(model, rejected, pad, 8)


def preference_accuracy(model: PeftModel, loaded: LoadedModel, pairs: list[PairExample],
                        config: TrainConfig = TrainConfig(), reference: bool = True) -> float:
    """Share of pairs the model prefers the chosen reply of.

    reference=True: TRL's `rewards/accuracies` — the implicit reward margin against the adapter-disabled model is
    positive. reference=False: the model's own log-likelihood of the chosen reply is higher.
    """
    if not pairs:
        return float("nan")
    margin = preference_margins(model, loaded, pairs, config)
    if reference:
        with model.disable_adapter():
            margin = margin - preference_margins(model, loaded, pairs, config)
    return (margin > 0).float().mean().item()
