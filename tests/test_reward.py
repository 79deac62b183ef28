"""The learned reward: the hierarchical Bradley–Terry fit recovers a planted taste, and in the product each vote
refits the profile's reward (versioned, its features cached) without ever failing the vote; erasing a profile takes
its reward and everyone's with it."""

from __future__ import annotations

import random

import pytest
import torch

from adapters.blend import AdapterServer
from adapters.registry import AdapterRegistry
from adapters.reward import Fitted, Votes, fit, ordered
from assistant.config import BlendConfig, GenerationSettings, LearningConfig, ModelConfig, RewardConfig
from assistant.model import load_model
from assistant.service import ChatService

SETTINGS = GenerationSettings(temperature=1.0, max_new_tokens=8)


def _choices(theta: torch.Tensor, n: int, seed: int) -> Votes:
    """n Bradley–Terry choices of a chooser whose reward is θᵀφ, as φ(chosen) − φ(rejected) rows."""
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(n, len(theta), generator=g), torch.randn(n, len(theta), generator=g)
    first = torch.rand(n, generator=g) < torch.sigmoid((a - b) @ theta)
    diffs = torch.where(first[:, None], a - b, b - a)
    return Votes(diffs, torch.zeros(0, len(theta)), torch.zeros(0, dtype=torch.bool))


def test_fit_recovers_a_planted_taste_and_the_prior_holds_a_newcomer_near_everyone():
    d = 16
    taste = torch.zeros(d)
    taste[3], taste[7] = 2.0, -1.5
    held = _choices(taste, 400, seed=1)
    right, total = ordered(fit(_choices(taste, 200, seed=0), torch.zeros(d), prior=1.0), held)
    best, _ = ordered(Fitted(taste, 0.0), held)
    assert total == 400 and right >= best - 20  # within 5 points of the true taste's own accuracy
    few = _choices(taste, 2, seed=2)
    everyone = torch.full((d,), 0.1)
    strong = fit(few, everyone, prior=100.0).theta
    weak = fit(few, everyone, prior=0.01).theta
    assert (strong - everyone).norm() < 0.1 * (weak - everyone).norm()
    assert torch.equal(fit(Votes.empty(d), everyone, 1.0).theta, everyone)


def test_thumbs_place_liked_replies_above_the_reference_point():
    d = 4
    g = torch.Generator().manual_seed(0)
    phi = torch.randn(60, d, generator=g)
    labels = phi[:, 0] > 0.5  # liked when the first feature is high
    fitted = fit(Votes(torch.zeros(0, d), phi, labels), torch.zeros(d), prior=0.1)
    assert fitted.theta[0] > 0 and fitted.theta[0] > fitted.theta[1:].abs().max()
    right, total = ordered(fitted, Votes(torch.zeros(0, d), phi, labels))
    assert total == int(labels.sum()) * int((~labels).sum()) and right / total > 0.95
    assert ((phi @ fitted.theta - fitted.z > 0) == labels).float().mean() > 0.9
    back = Fitted.from_bytes(fitted.to_bytes())
    assert torch.equal(back.theta, fitted.theta) and back.z == pytest.approx(fitted.z)


@pytest.fixture
def service(store, tiny_model_dir, app_config, data_home):
    loaded = load_model(ModelConfig(model=str(tiny_model_dir)), tiny_model_dir.parent)  # wrapped by the server
    learning = LearningConfig(min_profiles=2, global_min_age_hours=0, global_min_events=1, global_every=4,
                              holdout_every=10**9,  # (held-out votes follow random ids: keep every vote in the fits)
                              reward=RewardConfig(keep_versions=3))
    server = AdapterServer(loaded, AdapterRegistry(data_home / "adapters", store), store, BlendConfig())
    return ChatService(store, loaded, app_config, adapters=server, learning=learning, rng=random.Random(0))


def _choose(service, profile: str, n: int, pick: str = "a") -> None:
    """n choices, each refit done before the next (as when a person takes seconds between votes)."""
    for i in range(n):
        pair = list(service.send(profile, None, f"Plan day {i} of my trip.", SETTINGS, compare=True))[-1].comparison
        service.choose(profile, pair.id, pick)
        service.rewards.settle()


def test_each_vote_refits_the_profile_reward_and_features_are_computed_once(service, store, monkeypatch):
    ann = service.create_profile("Ann")["id"]
    _choose(service, ann, 5)
    history = store.reward_history(ann)
    assert [r["version"] for r in history] == [3, 4, 5]  # one version per vote, the newest 3 kept
    metrics = history[-1]["metrics"]
    assert metrics["events"] == 5 and metrics["train_votes"] + metrics["held_out_pairs"] == 5
    assert metrics["fit_ms"] >= 0 and history[-1]["kind"] == service.rewards.kind
    computed = []
    real = service.rewards.compute
    monkeypatch.setattr(service.rewards, "compute", lambda items: computed.append(len(items)) or real(items))
    _choose(service, ann, 1)
    assert computed == [2]  # only the new comparison's two replies: the other ten are read back
    theta = service.rewards.current(ann).theta
    assert theta.shape == (service.loaded.model.config.n_embd + 2,) and torch.isfinite(theta).all()


def test_a_failing_fit_keeps_the_vote_and_the_previous_reward(service, store, monkeypatch, caplog):
    ann = service.create_profile("Ann")["id"]
    _choose(service, ann, 1)
    monkeypatch.setattr(service.rewards, "compute", lambda items: 1 / 0)
    _choose(service, ann, 1, pick="b")
    assert store.feedback_counts(ann)["total"] == 2  # the vote is stored
    assert store.current_reward(ann)["version"] == 1 and "could not be refitted" in caplog.text


def test_everyone_reward_gives_the_space_and_centre_of_profiles_and_leaves_with_an_erased_one(service, store):
    ann, bob = service.create_profile("Ann")["id"], service.create_profile("Bob")["id"]
    _choose(service, ann, 2)
    assert store.current_reward(None) is None  # one contributor: no one's taste becomes everyone's
    _choose(service, bob, 2, pick="b")
    assert store.current_reward(ann)["metrics"]["space"] == "phi"  # alone: fitted on φ itself
    everyone = store.current_reward(None)
    metrics = everyone["metrics"]  # fitted at Bob's first vote (due again at 3 + 4), on the 6 replies voted on
    assert (metrics["events"], metrics["profiles"], metrics["replies"], metrics["components"]) == (3, 2, 6, 5)
    theta, basis = service.rewards.everyone()
    assert basis.shape == (len(theta.theta), 5 + 2) and torch.equal(theta.theta, service.rewards.scorer(None).theta)
    carl = service.create_profile("Carl")["id"]
    assert torch.equal(service.rewards.scorer(carl).theta, theta.theta)  # a newcomer is scored by everyone's
    _choose(service, carl, 1)
    mine = store.current_reward(carl)
    assert mine["metrics"]["space"] == "everyone's 7"
    moved = (service.rewards.current(carl).theta - theta.theta).double()  # one vote moves it, in everyone's space
    q = torch.linalg.qr(basis.double()).Q
    assert moved.norm() > 0 and (moved - q @ (q.T @ moved)).norm() <= 1e-3 * moved.norm()
    service.delete_profile(bob)
    assert store.current_reward(None) is None and store.reward_history(bob) == []
    assert store.reward_features(bob, ["x"]) == {}


def _trust(service, store, profile: str, accuracy: float, pairs: int = 8) -> None:
    """Publish a reward version for `profile` with these held-out figures (the gate reads them)."""
    d = len(service.rewards.scale().mean)
    theta = torch.zeros(d)
    theta[-1] = -1.0  # prefers shorter replies
    store.publish_reward(profile, service.rewards.kind, Fitted(theta, 0.0).to_bytes(),
                         {"held_out_pairs": pairs, "held_out_right": round(accuracy * pairs), "accuracy": accuracy}, 5)


def test_best_of_n_serves_the_top_scored_candidate_only_when_the_reward_is_trusted(store, tiny_model_dir, app_config,
                                                                                  data_home):
    loaded = load_model(ModelConfig(model=str(tiny_model_dir)), tiny_model_dir.parent)
    learning = LearningConfig(reward=RewardConfig(best_of=4, trust_accuracy=0.75, trust_min_pairs=8))
    server = AdapterServer(loaded, AdapterRegistry(data_home / "adapters", store), store, BlendConfig())
    service = ChatService(store, loaded, app_config, adapters=server, learning=learning, rng=random.Random(0))
    ann = service.create_profile("Ann")["id"]
    settings = GenerationSettings(temperature=1.0, max_new_tokens=12, system_prompt="Be brief.")
    plain = list(service.send(ann, None, "Tell me a story.", settings))
    assert "best_of" not in plain[-1].reply.settings  # no reward yet: one sample
    _trust(service, store, ann, accuracy=0.70)
    assert "best_of" not in list(service.send(ann, None, "Tell me a story.", settings))[-1].reply.settings
    _trust(service, store, ann, accuracy=0.75)
    updates = list(service.send(ann, None, "Tell me a story.", settings))
    assert all(len(u.texts) == 1 for u in updates) and updates[0].texts == [""]  # nothing streamed but the served
    reply = updates[-1].reply
    record = reply.settings["best_of"]
    assert len(record["candidates"]) == 4 and record["reward_version"] == 2
    assert record["served"] == max(range(4), key=record["scores"].__getitem__)
    assert reply.content == record["candidates"][record["served"]]
    turns = [{"role": "system", "content": settings.system_prompt}, {"role": "user", "content": "Tell me a story."}]
    rescored = service.rewards.score(service.rewards.current(ann),
                                     [(turns, t, e) for t, e in zip(record["candidates"], record["ended"])])
    assert rescored == pytest.approx(record["scores"], abs=1e-3)
    assert reply.settings["new_tokens"] == [record["new_tokens"][record["served"]]]
    pair = list(service.send(ann, None, "Another one.", settings, compare=True))[-1].comparison
    assert pair is not None and "best_of" not in pair.a.settings  # compare mode: one sample per side
