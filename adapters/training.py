"""LoRA training from preference examples: DPO on pairs plus KTO on unpaired feedback, a few steps at a time.

The caller passes the model: the base for the global adapter, or base + global merged for a personal one
(a residual on top of the crowd). In both cases the reference policy is that model with the LoRA disabled, so
the KL leash pulls towards the model the adapter is trained on top of. Reference log-probs are computed
once per example before the steps. Logits are only computed at reply positions.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import PreTrainedModel

from adapters.data import Batch, Examples, PairExample, UnpairedExample, collate, encode
from adapters.losses import dpo_loss, kto_loss, kto_reference_point, pair_metrics
from assistant.model import LoadedModel

log = logging.getLogger(__name__)

TARGET_MODULES = {
    "gpt2": ["c_attn", "c_proj"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj"],
}
DEFAULT_TARGETS = ["q_proj", "v_proj"]


@dataclass(frozen=True)
class LoraSettings:
    rank: int = 8
    """LoRA rank r."""
    alpha: int = 16
    """LoRA scaling numerator: the update is (alpha / rank)·B·A."""
    dropout: float = 0.0
    target_modules: tuple[str, ...] | None = None
    """Module names to adapt; None: chosen per architecture (TARGET_MODULES)."""
    top_layers: float = 1 / 3
    """Adapt only this top fraction of the layers: backpropagation then stops there. Measured on SmolLM2-135M,
    8 sequences, one thread, bf16: forward + backward 2.7 s with all 30 layers adapted, 1.2 s with the top 10."""

    def __post_init__(self):
        if self.rank < 1 or self.alpha <= 0 or not 0 <= self.dropout < 1 or not 0 < self.top_layers <= 1:
            raise ValueError("LoRA needs rank ≥ 1, alpha > 0, 0 ≤ dropout < 1 and 0 < top_layers ≤ 1")

    def peft_config(self, model: PreTrainedModel) -> LoraConfig:
        targets = list(self.target_modules or TARGET_MODULES.get(model.config.model_type, DEFAULT_TARGETS))
        n = model.config.num_hidden_layers
        layers = list(range(n - max(1, math.ceil(n * self.top_layers)), n))
        return LoraConfig(r=self.rank, lora_alpha=self.alpha, lora_dropout=self.dropout, target_modules=targets,
                          layers_to_transform=layers, task_type="CAUSAL_LM",
                          fan_in_fan_out=model.config.model_type == "gpt2")


@dataclass(frozen=True)
class TrainConfig:
    beta: float = 0.1
    """DPO/KTO temperature: larger keeps the policy closer to the reference."""
    label_smoothing: float = 0.0
    """DPO conservative smoothing ε in [0, 0.5) for noisy choosers."""
    learning_rate: float = 1e-3
    """AdamW step size. The learning-curve benchmark (bench/learning_curve.py, 3 users × 32 choices on SmolLM2-135M)
    measured blend win rates vs base of 0.50–0.58 at 5e-4 (2 epochs, user `concise`), 0.69 at 1e-3 and 0.29 — worse than
    base — at 2e-3 with rank 16 (user `bullets`)."""
    rpo_alpha: float = 1.0
    """Weight of the chosen reply's per-token negative log-likelihood added to the DPO loss (TRL's `rpo_alpha`,
    RPO): DPO alone can push down both replies of a pair, moving probability to text nobody chose. With compare
    mode's exploration the chosen reply is often a probed one (a list, emoji, …) the model would not write unasked;
    the NLL term is what teaches it to. Learning-curve pilot (bullets, casual, emoji_lover, examples; 32 choices):
    blend win rate vs base 0.55 (mean, no exploration, no NLL) → 0.59 (half the pairs probed, NLL) → 0.67 (every
    pair probed, NLL)."""
    decay: bool = True
    """Step size of the adapter's k-th warm-started update = learning_rate / √k. Every update starts a fresh AdamW,
    whose first steps move each weight by about the learning rate whatever the gradient's size, so with a
    constant rate an adapter that keeps updating random-walks away on noisy choices. Measured with the
    learning-curve benchmark (bench/results/learning_curve_ablation_decay.json), user `emoji_lover` after 16/32/64
    choices: blend win rate vs base 0.38/0.17/0.10 and neutral perplexity ×1.20 at 32, ×2.30 at 64 with a
    constant rate; 0.58/0.60/0.58 and ×1.07, ×1.14 with the decay."""
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

    def __post_init__(self):
        if self.beta <= 0 or self.learning_rate <= 0 or self.batch_size < 1 or self.epochs <= 0:
            raise ValueError("beta, learning_rate and epochs must be positive, batch_size ≥ 1")
        if (self.steps is not None and self.steps < 0) or self.max_steps < 1:
            raise ValueError("steps must be ≥ 0 and max_steps ≥ 1")
        if self.rpo_alpha < 0:
            raise ValueError("rpo_alpha must be ≥ 0")
        if not 0 <= self.label_smoothing < 0.5:
            raise ValueError("label_smoothing must be in [0, 0.5)")

    def steps_for(self, examples: Examples, new: int | None = None) -> int:
        """Optimizer steps for an update: `epochs` passes over its `new` examples (default: all of them), so
        an update costs in proportion to the new feedback however much replay it mixes in."""
        if self.steps is not None:
            return self.steps
        count = new if new is not None else max(len(examples.pairs), len(examples.unpaired))
        return max(1, min(self.max_steps, math.ceil(self.epochs * count / self.batch_size)))

    def learning_rate_at(self, update: int) -> float:
        """The step size of an adapter's `update`-th version in its warm-start chain (1 = trained from scratch)."""
        return self.learning_rate / math.sqrt(max(1, update)) if self.decay else self.learning_rate

    def autocast(self) -> torch.autocast:
        enabled = self.bf16 if self.bf16 is not None else native_bf16()
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled)


def native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (otherwise autocast is slower than fp32)."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def add_lora(model: PreTrainedModel, settings: LoraSettings) -> PeftModel:
    """Wrap `model` with a fresh, trainable LoRA adapter; every base weight is frozen."""
    return get_peft_model(model, settings.peft_config(model))


def sequence_logps(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """Summed log-probability of each row's completion tokens, shape (batch,)."""
    predicts = torch.zeros_like(batch.completion_mask)
    predicts[:, :-1] = batch.completion_mask[:, 1:]  # position t predicts token t+1
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, logits_to_keep=predicts)
    logits = out.logits.reshape(-1, out.logits.shape[-1]).float()  # (tokens kept, vocab), row-major order
    targets = batch.input_ids[:, 1:][batch.completion_mask[:, 1:]]
    token_logps = torch.log_softmax(logits, dim=-1).gather(1, targets[:, None]).squeeze(1)
    rows = predicts.nonzero()[:, 0]
    return torch.zeros(batch.input_ids.shape[0], dtype=token_logps.dtype).index_add(0, rows, token_logps)


@dataclass
class _Encoded:
    chosen: list[tuple[list[int], int]] = field(default_factory=list)
    rejected: list[tuple[list[int], int]] = field(default_factory=list)
    unpaired: list[tuple[list[int], int]] = field(default_factory=list)
    labels: list[bool] = field(default_factory=list)
    mismatched: list[tuple[list[int], int]] = field(default_factory=list)


def _encode_all(loaded: LoadedModel, examples: Examples, max_length: int, max_prompt: int) -> _Encoded:
    enc = _Encoded()
    for p in examples.pairs:
        enc.chosen.append(encode(loaded, p.prompt, p.chosen, max_length, max_prompt, p.chosen_ended))
        enc.rejected.append(encode(loaded, p.prompt, p.rejected, max_length, max_prompt, p.rejected_ended))
    items = examples.unpaired
    for i, u in enumerate(items):
        enc.unpaired.append(encode(loaded, u.prompt, u.completion, max_length, max_prompt, u.ended))
        enc.labels.append(u.label)
        # Reply i against the prompt of i+1: what the policy does to replies that do not answer (KTO's z0).
        other = items[(i + 1) % len(items)]
        enc.mismatched.append(encode(loaded, other.prompt, u.completion, max_length, max_prompt, u.ended))
    return enc


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
) -> dict:
    """Run `config.steps_for(examples)` optimizer steps; return TRL-named metrics of the last step."""
    if not len(examples):
        raise ValueError("no training examples")
    pad = loaded.tokenizer.pad_token_id
    enc = _encode_all(loaded, examples, config.max_length, config.max_prompt_tokens)
    steps = config.steps_for(examples, new_examples)
    model.eval()
    with torch.no_grad(), model.disable_adapter(), config.autocast():
        ref_chosen = _logps_in_chunks(model, enc.chosen, pad, 8)
        ref_rejected = _logps_in_chunks(model, enc.rejected, pad, 8)
        ref_unpaired = _logps_in_chunks(model, enc.unpaired, pad, 8)
        ref_mismatched = _logps_in_chunks(model, enc.mismatched, pad, 8)
    labels = torch.tensor(enc.labels, dtype=torch.bool)

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=0.0)
    rng = random.Random(config.seed)
    pair_order = _cycle(len(enc.chosen), rng)
    unpaired_order = _cycle(len(enc.unpaired), rng)
    metrics: dict = {}
    model.train()
    for step in range(steps):
        loss = torch.zeros(())
        metrics = {}
        if enc.chosen:
            idx, chosen, rejected = _step_logps(model, enc.chosen, enc.rejected, pair_order, pad, config)
            pair = dpo_loss(chosen, rejected, ref_chosen[idx], ref_rejected[idx], config.beta, config.label_smoothing)
            loss = loss + pair.losses.mean()
            if config.rpo_alpha:
                tokens = torch.tensor([max(1, len(enc.chosen[i][0]) - enc.chosen[i][1]) for i in idx],
                                      dtype=chosen.dtype)
                nll = -(chosen / tokens).mean()
                loss = loss + config.rpo_alpha * nll
                metrics["nll_loss"] = nll.item()
            metrics.update(pair_metrics(pair))
            metrics["logps/chosen"] = chosen.mean().item()
            metrics["logps/rejected"] = rejected.mean().item()
        if enc.unpaired:
            idx, policy, mismatched = _step_logps(model, enc.unpaired, enc.mismatched, unpaired_order, pad, config)
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


def _step_logps(model, first: list, second: list, order, pad: int, config: TrainConfig):
    """Draw a batch of indices; return them and the log-probs of `first[i]` and `second[i]` from one forward."""
    idx = [next(order) for _ in range(min(config.batch_size, len(first)))]
    with config.autocast():
        logps = sequence_logps(model, collate([first[i] for i in idx] + [second[i] for i in idx], pad))
    return idx, logps[: len(idx)], logps[len(idx):]


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
