"""How the adapters learn: LoRA's shape, an update's training, the blend of global and personal adapters, and
when the worker trains. The method is described in docs/learning.md; each default links to the experiment that
chose it (experiments/LOG.md)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(frozen=True)
class LoraSettings:
    rank: int = 8
    """LoRA rank r, ≥ 1. Default 8: rank 16 learned no faster from 32 noisy choices and drifted more
    (experiments/2026-12-01-rank16)."""
    alpha: int = 16
    """LoRA scaling numerator, > 0: the update is (alpha / rank)·B·A."""
    dropout: float = 0.0
    """LoRA dropout, in [0, 1)."""
    target_modules: tuple[str, ...] | None = None
    """Module names to adapt; None: chosen per architecture (`adapters.lora.TARGET_MODULES`)."""
    top_layers: float = 2 / 3
    """Adapt only this top fraction of the layers, in (0, 1]: backpropagation then stops there. Default two thirds:
    it learned more than the top third and fits the vote-to-version latency target, where every layer does not
    (experiments/2026-11-30-two-thirds)."""
    mlp_top_layers: float = 0.0
    """Also adapt the feed-forward projections (`adapters.lora.MLP_MODULES`) of this top fraction of the layers,
    in [0, `top_layers`]; 0: none. Off: it learned less and cost latency
    (experiments/2026-12-01-mlp-top-third-attn-two-thirds)."""

    def __post_init__(self):
        if self.rank < 1 or self.alpha <= 0 or not 0 <= self.dropout < 1 or not 0 < self.top_layers <= 1:
            raise ValueError("LoRA needs rank ≥ 1, alpha > 0, 0 ≤ dropout < 1 and 0 < top_layers ≤ 1")
        if not 0 <= self.mlp_top_layers <= self.top_layers:
            raise ValueError("LoRA needs 0 ≤ mlp_top_layers ≤ top_layers")


@dataclass(frozen=True)
class TrainConfig:
    beta: float = 0.1
    """DPO/KTO temperature, > 0: larger keeps the policy closer to the reference. 0.1 as in the DPO paper."""
    label_smoothing: float = 0.0
    """DPO conservative smoothing ε in [0, 0.5) for noisy choosers (cDPO): each choice is taken as flipped with
    probability ε. Off: at 0.2 it drifted less but learned a little less taste
    (experiments/2026-12-01-label-smoothing)."""
    learning_rate: float = 4e-3
    """AdamW step size of an adapter's first update (see `decay`), > 0. Default 4e-3: with the distillation leash
    the largest step that kept drift in check (experiments/2026-11-29-distillation-lr)."""
    rpo_alpha: float = 1.0
    """Weight of the chosen-reply term added to the DPO loss (TRL's `rpo_alpha`; the term is `chosen_term`), ≥ 0.
    DPO alone can push down both replies of a pair; this term teaches the chosen (often probed) style
    (experiments/2026-11-29-exploration)."""
    chosen_term: str = "distill"
    """What the `rpo_alpha` term asks of the chosen reply, per token: "nll" — its negative log-likelihood (RPO, as
    TRL); "distill" — the KL from the reference's next-token distribution given the prompt the reply was generated
    from (the exploration instruction included) to the policy's given the prompt as sent: context distillation
    (Snell et al. 2022). Default "distill": it let the step size grow without drift
    (experiments/2026-11-29-distillation-lr)."""
    distill_top_k: int = 64
    """Reference tokens kept per position for "distill", ≥ 1; the rest of the vocabulary is one more outcome, "any
    other token", so the policy matches the tail's total mass."""
    on_policy_weight: float = 0.0
    """Weight of on-policy context distillation, ≥ 0 (0: off): the policy samples its own replies to plain prompts
    of probed pairs and is taught the instructed reference's distribution on them (Agarwal et al. 2024). Off: no
    gain, 3× the update time (experiments/2026-11-30-on-policy-distillation)."""
    everyday_weight: float = 0.0
    """Weight of the everyday-text leash, ≥ 0 (0: off): every step also holds the reference's next-token
    distributions on the everyday replies of `adapters.everyday` (as InstructGPT's PPO-ptx mixes in pretraining
    data). Off: it held drift but also held exactly what style-loving users want changed
    (experiments/2026-12-01-everyday-leash)."""
    on_policy_pairs: int = 8
    """At most this many pairs (new ones first) get an on-policy reply per update, ≥ 1."""
    on_policy_tokens: int = 32
    """Length of the policy's on-policy replies, in tokens, ≥ 1."""
    on_policy_temperature: float = 0.7
    """Sampling temperature of the on-policy replies, ≥ 0 (0: greedy)."""
    decay: bool = True
    """Step size of the adapter's k-th warm-started update = learning_rate / k ** `decay_power`: each update starts
    a fresh AdamW, and with a constant rate a chain of updates random-walks away on noisy choices
    (experiments/2026-11-29-lr-decay)."""
    decay_power: float = 1.0
    """With `decay`, the k-th update's step size is learning_rate / k ** decay_power, ≥ 0 (0.5: 1/√k, 1: 1/k).
    Default 1/k: less drift than 1/√k and a curve that kept rising (experiments/2026-11-30-decay-1-over-k)."""
    epochs: float = 4.0
    """Passes over the update's new examples, > 0; replayed older ones are mixed into the same steps."""
    max_steps: int = 16
    """Upper bound on optimizer steps per update, whatever the data, ≥ 1."""
    steps: int | None = None
    """Exact optimizer steps, ≥ 0, overriding epochs (tests and benchmarks); None: from `epochs`."""
    batch_size: int = 4
    """Pairs (and, separately, unpaired examples) per step, ≥ 1."""
    bf16: bool | None = None
    """bf16 autocast for forward and backward; None: on when the CPU has native bf16 (AVX512-BF16 / AMX), where it
    is about 3× faster; elsewhere it is slower than fp32."""
    max_length: int = 384
    """Longest prompt+reply sequence trained on, in tokens."""
    max_prompt_tokens: int = 192
    """Newest tokens of the conversation kept as the prompt when training (a taste rarely needs more; the
    compute of an update grows with it)."""
    desirable_weight: float = 1.0
    """KTO's weight of a 👍 example (λ_D)."""
    undesirable_weight: float = 1.0
    """KTO's weight of a 👎 example (λ_U)."""
    kto_balance: bool = True
    """Lower λ_U in an update whose 👎 outnumber its 👍 so that λ_U·n_U = λ_D·max(n_D, 1), the top of the range TRL's
    KTOTrainer advises (`adapters.training.balanced`); False: λ_U as set."""
    unpaired_weight: float = 1.0
    """Weight of the KTO term next to the DPO term."""
    seed: int = 0
    """Seed of the update's example order and sampling."""
    objective: str = "dpo"
    """What an update optimises: "dpo" — DPO on pairs and KTO on thumbs (with the `chosen_term`), off-policy on the
    replies people judged; "rloo" — on-policy: `rloo_k` samples of the current policy per prompt, scored by the
    profile's learned reward (`RewardConfig`), REINFORCE with a leave-one-out baseline and a KL penalty to the
    reference, PPO's clipped ratio on the reused samples (`adapters.rl`); "hybrid" — the DPO steps, then the RLOO
    steps, in one update. RLOO falls back to DPO for an update with no fitted reward."""
    rloo_k: int = 4
    """Samples per prompt for RLOO, ≥ 2 (the baseline of each is the mean of the others)."""
    rloo_prompts: int = 4
    """Prompts sampled per RLOO round, ≥ 1: the update's newest prompts first."""
    rloo_tokens: int = 32
    """Length of each RLOO sample, in tokens, ≥ 1."""
    rloo_temperature: float = 0.9
    """Sampling temperature of the RLOO samples, > 0."""
    rloo_beta: float = 0.05
    """KL penalty β: the reward of a sample is R − β·Σ(log π_old − log π_ref) over its tokens (TRL RLOOTrainer's
    `beta`, its default), ≥ 0."""
    rloo_epsilon: float = 0.2
    """PPO's clip range ε: the ratio π/π_old of a sample is clipped to [1 − ε, 1 + ε] (TRL's `epsilon`), > 0."""
    rloo_rounds: int = 2
    """Fresh sampling rounds per update, ≥ 1; each round's samples are reused for `rloo_reuse` steps. 2 × 2: a
    pilot at 4 rounds of 48-token samples took 159 s per update on the 2-core machine (DPO: 10–30 s)."""
    rloo_lr_scale: float = 0.25
    """The RLOO steps' step size, as a fraction of the update's DPO step size (`learning_rate_at`), in (0, 1]: the
    same pilot at the full 4e-3 took one user's anchor perplexity to ×1.52 in one update."""
    rloo_reuse: int = 2
    """Optimizer steps on one round's samples, ≥ 1; after the first, PPO's clip bounds how far the policy moves."""
    share_prompts: bool = True
    """Run a pair's prompt once for both replies in a training step (`adapters.logprobs.shared_prompt_log_probs`):
    the same log-probabilities and gradients with fewer tokens through the model; faster on multi-turn prompts
    (experiments/2026-11-30-prompt-sharing-and-depth)."""

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
        if self.objective not in ("dpo", "rloo", "hybrid"):
            raise ValueError("objective must be 'dpo', 'rloo' or 'hybrid'")
        if self.rloo_k < 2 or min(self.rloo_prompts, self.rloo_tokens, self.rloo_rounds, self.rloo_reuse) < 1 \
                or self.rloo_temperature <= 0 or self.rloo_beta < 0 or self.rloo_epsilon <= 0 \
                or not 0 < self.rloo_lr_scale <= 1:
            raise ValueError("RLOO needs rloo_k ≥ 2; rloo_prompts, rloo_tokens, rloo_rounds, rloo_reuse ≥ 1; "
                             "rloo_temperature > 0, rloo_beta ≥ 0, rloo_epsilon > 0 and 0 < rloo_lr_scale ≤ 1")
        if self.everyday_weight < 0:
            raise ValueError("everyday_weight must be ≥ 0")
        if self.on_policy_weight < 0 or self.on_policy_pairs < 1 or self.on_policy_tokens < 1 \
                or self.on_policy_temperature < 0:
            raise ValueError("on_policy_weight and on_policy_temperature must be ≥ 0, on_policy_pairs and "
                             "on_policy_tokens ≥ 1")

    def steps_for(self, examples, new: int | None = None) -> int:
        """Optimizer steps for an update of `examples` (`adapters.data.Examples`): `epochs` passes over its `new`
        examples (default: all of them), so an update costs in proportion to the new feedback however much replay
        it mixes in."""
        if self.steps is not None:
            return self.steps
        count = new if new is not None else max(len(examples.pairs), len(examples.unpaired))
        return max(1, min(self.max_steps, math.ceil(self.epochs * count / self.batch_size)))

    def learning_rate_at(self, update: int) -> float:
        """The step size of an adapter's `update`-th version in its warm-start chain (1 = trained from scratch)."""
        return self.learning_rate / max(1, update) ** self.decay_power if self.decay else self.learning_rate


@dataclass(frozen=True)
class RewardConfig:
    """The learned reward R(s, a) = θᵀφ(s, a) of each profile (adapters/reward.py): fitted in the request path on
    every vote, read by the RLOO objective and by best-of-n serving."""

    enabled: bool = True
    """Fit a profile's reward after each of its votes. False: no reward is fitted; the RLOO objective and best-of-n
    then fall back to DPO and to one sample."""
    layer: float = 2 / 3
    """Which layer's hidden state (mean over the reply's tokens) is φ, as a fraction of the model's depth in (0, 1]."""
    components: int = 8
    """Principal directions of everyone's voted replies' hidden states a profile is fitted in once everyone's reward
    exists (`adapters.reward.principal_basis`), ≥ 0; 0: always on φ itself. Default 8: chosen on the shipped
    population, seed 1, of `bench.reward_accuracy` (experiments/2026-12-06-rl-path)."""
    prior: float = 10.0
    """Weight λ of ‖δ‖² in a profile's fit in everyone's components, > 0: θ_profile = θ_everyone + δ, and larger λ
    holds δ nearer 0 (everyone's taste) until the profile's own votes outweigh it. Losses are summed over votes.
    Chosen with `components` (experiments/2026-12-06-rl-path)."""
    alone_prior: float = 100.0
    """Weight of ‖θ‖² in a profile's fit on φ itself, before everyone's reward exists, > 0 (chosen with `prior`)."""
    global_prior: float = 1.0
    """Weight of ‖θ_global‖² in everyone's fit, > 0."""
    thumbs_weight: float = 1.0
    """Weight of a 👍/👎 next to a choice in the fit, ≥ 0: a thumb says θᵀφ is above (👍) or below (👎) the profile's
    reference point z, a choice that one reply's θᵀφ is above the other's."""
    trust_accuracy: float = 0.7
    """Best-of-n serves by the reward only when its held-out accuracy on the profile's own votes is at least this,
    in [0.5, 1]."""
    trust_min_pairs: int = 5
    """... measured on at least this many held-out comparisons (pairs of replies it must order), ≥ 1."""
    best_of: int = 1
    """Replies sampled per message when the reward is trusted, ≥ 1; the one it scores highest is served and all are
    recorded with their scores. 1: off (one sample, as without a reward)."""
    keep_versions: int = 20
    """Reward versions kept per profile, ≥ 1."""

    def __post_init__(self):
        if not 0 < self.layer <= 1 or min(self.prior, self.alone_prior, self.global_prior) <= 0 \
                or self.thumbs_weight < 0 or self.components < 0:
            raise ValueError("reward needs 0 < layer ≤ 1, prior, alone_prior and global_prior > 0, thumbs_weight ≥ 0 "
                             "and components ≥ 0")
        if not 0.5 <= self.trust_accuracy <= 1 or self.trust_min_pairs < 1:
            raise ValueError("reward.trust_accuracy must be in [0.5, 1] and trust_min_pairs ≥ 1")
        if self.best_of < 1 or self.keep_versions < 1:
            raise ValueError("reward.best_of and reward.keep_versions must be ≥ 1")


@dataclass(frozen=True)
class BlendConfig:
    k: float = 4.0
    """α = n / (n + k), k > 0: a profile with k feedback events is weighted half personal, half global. Default 4:
    the personal adapter is trained as a residual at full weight, and at k = 8 the blend trailed personal-only
    (experiments/2026-11-29-early-tuning)."""
    cache_size: int = 64
    """Adapter versions (and blends) kept in memory, ≥ 1; the rest load from disk when needed."""
    serve_tainted: bool = True
    """Keep serving a global version that learned from a since-deleted profile until the from-scratch retrain
    replaces it (then it is deleted). False: fall back at once to the newest version that did not learn from it, or
    to none: the deletion shows in everyone's replies before the retrain is done."""

    def __post_init__(self):
        if self.k <= 0 or self.cache_size < 1:
            raise ValueError("k must be positive and cache_size at least 1")


@dataclass(frozen=True)
class LearningConfig:
    personal_every: int = 4
    """Train a profile's personal adapter after this many new feedback events of that profile (M), ≥ 1."""
    global_every: int = 16
    """Train the global adapter after this many new feedback events across all profiles (G), ≥ 1."""
    max_share: float = 0.25
    """Most of one global update a single contributor may supply, a fraction of its feedback events in (0, 1]. A
    contributor is an account (all its profiles together) with `--auth`, a profile in household mode."""
    max_per_profile: int = 32
    """Most feedback events one contributor may supply to one global update, ≥ 1."""
    global_min_events: int = 4
    """A profile's feedback teaches the global adapter only once it has given this many events, ≥ 1: a profile
    made only to poison it must first vote like a person."""
    global_min_age_hours: float = 1.0
    """... and only once it is this old, ≥ 0 (hours): a burst of new profiles moves the global adapter not at
    once. Benchmarks and tests that simulate people in minutes set 0."""
    min_per_profile: int = 2
    """A lone profile still teaches the global adapter this much per update (the share alone would give it nothing)."""
    min_profiles: int = 3
    """The global adapter trains only once this many contributors (see `max_share`) have given feedback that counts
    (`global_min_events`, `global_min_age_hours`), ≥ 1: with one or two profiles
    their personal adapters already learn their taste, and a global one would serve their data to every newcomer
    (experiments/2026-11-30-min-profiles)."""
    replay: int = 16
    """Older examples mixed into each update with the new ones, against forgetting, ≥ 0. 32 did no better
    (experiments/2026-12-01-replay32)."""
    personal_refit: int = 0
    """0: a personal version is warm-started from the previous one and trained on the new events plus `replay` (the
    step size decaying along the chain). N > 0: every personal version is trained from scratch on the profile's
    newest N trainable events. Off: no evidence of a gain, more drift and 3× the time
    (experiments/2026-11-30-refit)."""
    holdout_every: int = 5
    """One pair in this many (fixed by its feedback id) is held out of training to evaluate the adapters, ≥ 2."""
    stale_seconds: float = 120.0
    """A running job whose worker has not reported for this long is taken over (the worker died)."""
    note_learned_at: float = 0.9
    """How far the personal adapter must have learned the profile's note (`adapters.note`: 1 − the note's pull left,
    on the profile's recent messages), in [0, 1], before the note stops being added to each message; 1: sent
    until learned completely, in practice always."""
    keep_versions: int = 20
    """Versions kept per adapter, ≥ 2: after each publish older ones are deleted (never the served one, its
    parent, or the newest usable one). The Learning panel's accuracy chart shows the kept ones."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """How each update trains."""
    global_rpo_alpha: float | None = None
    """The weight of the chosen-reply term (`TrainConfig.chosen_term`) in global updates, ≥ 0; None:
    `train.rpo_alpha`, as for personal ones."""
    lora: LoraSettings = field(default_factory=LoraSettings)
    """The adapters' shape."""
    reward: RewardConfig = field(default_factory=RewardConfig)
    """The learned reward per profile, and best-of-n serving by it."""
    blend: BlendConfig = field(default_factory=BlendConfig)
    """How the served model blends the global and the personal adapter."""
    max_drift: float | None = 0.5
    """Largest rise of the anchor replies' perplexity (`adapters.drift`) over the base model's a published version
    may bring, as a fraction (0.5: ×1.5), > 0; an update that goes further is backtracked until it does not. None:
    no guard. A collapse guard, not a taste limit: held tight (0.08) it made learning and drift worse
    (experiments/2026-12-01-drift-guard). It is measured in fp32, as the served model runs."""

    def __post_init__(self):
        if self.personal_every < 1 or self.global_every < 1:
            raise ValueError("personal_every and global_every must be at least 1")
        if not 0 < self.max_share <= 1 or self.max_per_profile < 1 or self.holdout_every < 2:
            raise ValueError("max_share in (0, 1], max_per_profile ≥ 1, holdout_every ≥ 2")
        if self.personal_refit < 0:
            raise ValueError("personal_refit must be ≥ 0 (0: warm-started updates)")
        if self.min_profiles < 1:
            raise ValueError("min_profiles must be at least 1")
        if self.global_min_events < 1 or self.global_min_age_hours < 0:
            raise ValueError("global_min_events must be ≥ 1 and global_min_age_hours ≥ 0")
        if self.keep_versions < 2:
            raise ValueError("keep_versions must be at least 2")
        if not 0.0 <= self.note_learned_at <= 1.0:
            raise ValueError("note_learned_at must be between 0 and 1")
        if self.global_rpo_alpha is not None and self.global_rpo_alpha < 0:
            raise ValueError("global_rpo_alpha must be ≥ 0 (or None)")
        if self.max_drift is not None and self.max_drift <= 0:
            raise ValueError("max_drift must be > 0 (or None: no drift guard)")
