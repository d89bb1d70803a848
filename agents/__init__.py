"""RL agents for TextGen-v0: one readable file per algorithm over a small shared core.

    agents/core.py       GAE, masked whitening, KL controllers/estimators, clipped losses
    agents/rollout.py    rollouts through the vector env; log-probs in one forward
    agents/training.py   the shared loop: budget, evaluation, logging, checkpoints, resume
    agents/ppo.py        LM-PPO (actor-critic, KL-shaped per-token rewards, GAE)
    agents/reinforce.py  REINFORCE with a moving-average baseline
    agents/rloo.py       REINFORCE leave-one-out
    agents/grpo.py       group-relative policy optimisation
    agents/dr_grpo.py    GRPO without the std and length normalisations
    agents/reinforce_pp.py  REINFORCE++: per-token KL reward, global whitening, clipping
    agents/best_of_n.py  best-of-n sampling (no training)
    agents/sb3.py        stable-baselines3 bridge (features extractor) and its runner

`ALGORITHMS[name] = (ConfigClass, train)`; `train(config)` returns a dict with the final
evaluation ("final"), the per-iteration metrics ("history") and samples. It is built on
first use, so that `import agents` (and `textenv --help`) stays light.
"""


def _algorithms() -> dict:
    from agents import best_of_n, dr_grpo, grpo, ppo, reinforce, reinforce_pp, rloo, sb3

    return {
        "ppo": (ppo.PPOConfig, ppo.train),
        "reinforce": (reinforce.ReinforceConfig, reinforce.train),
        "rloo": (rloo.RLOOConfig, rloo.train),
        "grpo": (grpo.GRPOConfig, grpo.train),
        "dr-grpo": (dr_grpo.DrGRPOConfig, dr_grpo.train),
        "reinforce++": (reinforce_pp.ReinforcePPConfig, reinforce_pp.train),
        "best-of-n": (best_of_n.BestOfNConfig, best_of_n.train),
        "sb3-ppo": (sb3.SB3Config, sb3.train),
    }


def __getattr__(name: str):
    if name == "ALGORITHMS":
        globals()["ALGORITHMS"] = algorithms = _algorithms()
        return algorithms
    raise AttributeError(f"module 'agents' has no attribute {name!r}")
