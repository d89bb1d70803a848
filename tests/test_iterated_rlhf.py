"""Iterated RLHF: rounds resume one run, the reward model is retrained between rounds."""

import json
from dataclasses import replace

import pytest

import agents.iterated_rlhf as iterated_rlhf
from agents.iterated_rlhf import IteratedRLHFConfig, main
from agents.ppo import PPOConfig
from textenv.rewards import RewardModel
from textenv.storage import load_tensors


def test_rounds_resume_and_retrain_the_reward_model(tmp_path, monkeypatch):
    cfg = IteratedRLHFConfig(
        out_dir=str(tmp_path), rounds=2, env_steps_per_round=200, seeds=(1,),
        rankings_per_round=8, eval_rankings=8, calibration_samples=16,
        # The default fine-tuning, shortened: its other settings (no held-out selection
        # among them) are what must make round 2's reward model differ from round 1's.
        rm_train=replace(IteratedRLHFConfig().rm_train, epochs=1, batch_size=8),
        ppo=PPOConfig(num_envs=16, max_new_tokens=12, threads=1, eval_samples=1,
                      eval_every=0, anneal_lr=False, progress=False, tensorboard=False))
    results = main(cfg)

    rounds = results["iterated"]["1"]
    assert [r["round"] for r in rounds] == [1, 2]
    assert rounds[1]["env_steps"] > rounds[0]["env_steps"] >= 200  # round 2 resumed round 1
    assert 0.0 <= rounds[0]["rm_accuracy_on_policy"] <= 1.0
    assert "retrained_rm_accuracy_on_policy" in rounds[0]
    single = results["single_round"]["1"]
    assert single["env_steps"] >= 2 * 200
    # Round 2 trained against a different (retrained, recalibrated) reward model.
    first, second = (tmp_path / "seed1/iterated" / f"round{r}/assets" for r in (1, 2))
    before, after = (load_tensors(d / "reward.safetensors") for d in (first, second))
    assert any(not (before[k] == after[k]).all() for k in before)
    assert RewardModel.load(second).gain != RewardModel.load(first).gain
    assert json.loads((tmp_path / "results.json").read_text())["config"]["rounds"] == 2
    assert "| iterated, round 2 |" in (tmp_path / "results.md").read_text()

    # A second call with the same settings reuses every seed's kept numbers (no training);
    # other settings in the same directory are refused, naming what differs.
    def no_training(*args):
        raise AssertionError("trained again instead of reusing the kept numbers")
    monkeypatch.setattr(iterated_rlhf, "iterated_run", no_training)
    monkeypatch.setattr(iterated_rlhf, "single_round_run", no_training)
    assert main(cfg)["iterated"] == results["iterated"]
    with pytest.raises(ValueError, match="rankings_per_round"):
        main(replace(cfg, rankings_per_round=9))
