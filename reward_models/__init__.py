"""Reward models learned from preferences (the InstructGPT recipe, on a CPU).

    data.py       preference records (pairwise, K-wise rankings) as JSONL
    labeler.py    the simulated labeler: rankings by gold score with Bradley-Terry noise
    losses.py     pairwise and K-wise Bradley-Terry losses
    model.py      RewardModel: GPT trunk + scalar head at the last real token
    train.py      training with early stopping; calibrate() (SFT samples -> mean 0, std 1)
    ensemble.py   RewardEnsemble: mean or mean - k * std of several reward models
    evaluate.py   accuracy vs noisy labels and vs gold, Spearman with gold
    pipeline.py   build_default_reward_model(): the reward stage of the default build

Quick use:

    from reward_models import RewardModel
    rm = RewardModel.load("textenv/assets")          # reward.safetensors + reward.json
    rm.score(["write a positive review of the pizza about the crust , short :"],
             ["the crust was crispy . <eos>"])       # tensor([...]), SFT samples ~ N(0, 1)
"""

from reward_models.ensemble import RewardEnsemble
from reward_models.model import RewardModel

__all__ = ["RewardEnsemble", "RewardModel"]
