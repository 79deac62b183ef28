"""bench/reward_rerank.py: the Bradley–Terry fit, and the harness in --quick mode on the tiny model."""

from __future__ import annotations

import json
import subprocess
import sys

import torch

from bench.reward_rerank import FEATURE_SETS, fit
from tests.conftest import HANG, REPO



def test_bradley_terry_fit_recovers_the_direction_of_a_known_reward():
    generator = torch.Generator().manual_seed(0)
    truth = torch.tensor([2.0, -1.0, 0.0, 0.5])
    a, b = torch.randn(400, 4, generator=generator), torch.randn(400, 4, generator=generator)
    a_wins = torch.rand(400, generator=generator) < torch.sigmoid((a - b) @ truth)
    diffs = torch.where(a_wins[:, None], a - b, b - a)  # φ(chosen) − φ(rejected)
    theta = fit(diffs, l2=0.001)
    assert torch.cosine_similarity(theta, truth, dim=0) > 0.95
    # the penalty shrinks θ toward 0, and a flipped set of choices flips it
    assert fit(diffs, l2=1.0).norm() < 0.5 * theta.norm()
    assert torch.cosine_similarity(fit(-diffs, l2=0.001), -truth, dim=0) > 0.95


def test_reward_rerank_quick_mode_writes_a_well_formed_result(tmp_path):
    out = tmp_path / "rerank.json"
    result = subprocess.run([sys.executable, "-m", "bench.reward_rerank", "--quick", "--output", str(out)], cwd=REPO,
                            capture_output=True, text=True, timeout=HANG)
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["benchmark"] == "reward_rerank" and data["quick"] and data["machine"]["cores"] >= 1
    keys = {"sample", "oracle_4", *(f"{kind}/rerank_2" for kind in FEATURE_SETS)}
    assert len(data["users"]) == 2 and set(data["summary"]) == keys
    for row in data["users"].values():
        assert set(row) == keys and all(0.0 <= v <= 1.0 for v in row.values())
        # the best candidate by the user's own reward never does worse than the first candidate
        assert row["oracle_4"] >= row["sample"]
    bad = subprocess.run([sys.executable, "-m", "bench.reward_rerank", "--choices", "1"], cwd=REPO,
                         capture_output=True, text=True, timeout=HANG)
    assert bad.returncode == 2 and "--choices" in bad.stderr
