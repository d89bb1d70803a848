"""stable-baselines3's PPO("MlpPolicy") learns TextGen-Sequences-v0 from a random policy.

    python examples/sb3_from_scratch.py                 # seeds 0 1 2, 150k env steps each
    python examples/sb3_from_scratch.py --seeds 0 --total-env-steps 30000

No pretrained model: a freshly initialised MLP policy reads one-hot observations
(`textenv.wrappers.OneHotObservation`) and is trained on the gold reward of the `sequences`
task (copy, reverse or sort up to three symbols). Before and after training, every prompt of
the held-out splits is answered once: `eval` (instructions held out of training on
sequences seen in training) and `test` (sequences no training prompt contains). Prints a
table (gold mean and success rate = exactly right, sampled and greedy) and writes JSON.
Written against the public API only (gymnasium, textenv, stable-baselines3).
"""

import json
import time
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
import tyro
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env

import textenv  # noqa: F401  (registers TextGen-Sequences-v0)
from textenv.wrappers import OneHotObservation

ENV_ID = "TextGen-Sequences-v0"


@dataclass
class Config:
    seeds: tuple[int, ...] = (0, 1, 2)
    """One training run per seed."""
    total_env_steps: int = 150_000
    """Env steps (generated tokens) per run."""
    n_envs: int = 8
    """SB3 DummyVecEnv copies of the env."""
    n_steps: int = 256
    """Env steps per env per rollout (a rollout is n_envs * n_steps steps)."""
    batch_size: int = 256
    """PPO minibatch size."""
    n_epochs: int = 10
    """PPO epochs per rollout."""
    learning_rate: float = 1e-3
    """Adam learning rate."""
    hidden: tuple[int, ...] = (128, 128)
    """Hidden layers of the policy and value MLPs."""
    threads: int = 1
    """torch threads."""
    out: str = "runs/sb3_from_scratch.json"
    """Where the results go (JSON)."""


def evaluate(model: PPO, split: str, deterministic: bool, seed: int = 1234) -> dict:
    """Answer every prompt of `split` once; mean gold and success rate (gold == 1)."""
    env = OneHotObservation(gym.make(ENV_ID, reward="gold", prompt_split=split))
    prompts = env.unwrapped.task.prompts(split)
    model.set_random_seed(seed)  # the same sampling noise before and after training
    gold = []
    for i, prompt in enumerate(prompts):
        obs, _ = env.reset(seed=seed + i, options={"prompt": prompt})
        done = False
        while not done:
            action, _ = model.predict(obs, deterministic=deterministic)
            obs, _, done, _, info = env.step(int(action))
        gold.append(info["gold_score"])
    gold = np.array(gold)
    return {"gold": float(gold.mean()), "success": float((gold == 1.0).mean())}


def evaluate_all(model: PPO) -> dict:
    return {f"{split}/{mode}/{k}": v
            for split in ("eval", "test") for mode, det in (("sampled", False), ("greedy", True))
            for k, v in evaluate(model, split, det).items()}


def run(cfg: Config, seed: int) -> dict:
    envs = make_vec_env(ENV_ID, n_envs=cfg.n_envs, seed=seed, env_kwargs={"reward": "gold"},
                        wrapper_class=OneHotObservation)
    model = PPO("MlpPolicy", envs, n_steps=cfg.n_steps, batch_size=cfg.batch_size,
                n_epochs=cfg.n_epochs, learning_rate=cfg.learning_rate, gamma=1.0,
                policy_kwargs={"net_arch": list(cfg.hidden)}, seed=seed)
    before = evaluate_all(model)
    t0, cpu0 = time.perf_counter(), time.process_time()
    model.learn(cfg.total_env_steps)
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - cpu0
    after = evaluate_all(model)
    # CPU time is what the wall-clock would be on an idle machine (one thread): it does not
    # grow when other processes share the cores.
    return {"seed": seed, "seconds": seconds, "cpu_seconds": cpu_seconds,
            "steps_per_second": cfg.total_env_steps / seconds, "before": before, "after": after}


def main(cfg: Config) -> list[dict]:
    torch.set_num_threads(cfg.threads)
    runs = []
    for seed in cfg.seeds:
        runs.append(run(cfg, seed))
        r = runs[-1]
        print(f"seed {seed}: eval gold {r['before']['eval/sampled/gold']:.3f} -> "
              f"{r['after']['eval/sampled/gold']:.3f} in {r['seconds']:.0f} s "
              f"({r['cpu_seconds']:.0f} s CPU, {r['steps_per_second']:.0f} env steps/s)")
    print(f"\n{ENV_ID}, PPO('MlpPolicy') from scratch, {cfg.total_env_steps} env steps, "
          f"seeds {list(cfg.seeds)}: mean ± std over seeds\n")
    print("| metric | before | after |\n|---|---|---|")
    for key in runs[0]["after"]:
        b = np.array([r["before"][key] for r in runs])
        a = np.array([r["after"][key] for r in runs])
        print(f"| {key} | {b.mean():.3f} ± {b.std():.3f} | {a.mean():.3f} ± {a.std():.3f} |")
    for key in ("seconds", "cpu_seconds"):
        s = np.array([r[key] for r in runs])
        print(f"| training {key.replace('_', ' ')} | | {s.mean():.0f} ± {s.std():.0f} |")
    Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
    Path(cfg.out).write_text(json.dumps({"config": vars(cfg), "runs": runs}, indent=2))
    return runs


if __name__ == "__main__":
    main(tyro.cli(Config))
