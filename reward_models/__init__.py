"""Reward models learned from preferences (the InstructGPT recipe, on a CPU).

    data.py       preference records (pairwise, K-wise rankings) as JSONL
    labeler.py    the simulated labeler: rankings by gold score with Bradley-Terry noise
    losses.py     pairwise and K-wise Bradley-Terry losses
    train.py      training with early stopping; calibrate() (SFT samples -> mean 0, std 1)
    ensemble.py   train_ensemble(): several reward models from different seeds
    evaluate.py   accuracy vs noisy labels and vs gold, Spearman with gold
    pipeline.py   build_default_reward_model(): the reward stage of the default build

Scoring with a trained model is the inference side, in `textenv.rewards` (RewardModel,
RewardEnsemble, the env's reward presets): this package trains and evaluates them.

    from textenv.rewards import RewardModel
    rm = RewardModel.load("textenv/assets")          # reward.safetensors + reward.json
    rm.score(["write a positive review of the pizza about the crust , short :"],
             ["the crust was crispy . <eos>"])       # tensor([...]), SFT samples ~ N(0, 1)
"""
