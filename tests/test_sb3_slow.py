"""Slow: SB3 PPO, started from the SFT policy, raises the mean learned reward on TextGen-v0."""

import pytest


@pytest.mark.slow
def test_sb3_ppo_raises_mean_reward_over_its_starting_policy(tmp_path):
    from agents.sb3 import SB3BaselineConfig, baseline_main

    results = baseline_main(SB3BaselineConfig(algos=("ppo",), total_env_steps=6000,
                                              out_dir=str(tmp_path)))
    before, after = results["SFT (start)"], results["SB3 ppo"]
    assert after["eval/reward_mean"] > before["eval/reward_mean"] + 0.1
