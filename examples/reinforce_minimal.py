"""REINFORCE for TextGen-v0 in one file, written against textenv's public API only.

    python examples/reinforce_minimal.py --total-env-steps 20000
    textenv compare --algos reinforce examples/reinforce_minimal.py --seeds 3

The agent acts through the Gym API: a vector env with dict observations (the masks tell
where each prompt ends and which slots hold tokens), `textenv.PolicyDecoder` for fast
KV-cache decoding from those observations, and one forward over the finished sequences
for the gradient. Return of a response = reward - beta * KL(policy || reference) (summed
per-token log-ratio), baseline = moving average of past returns (Williams 1992).
`train` returns the trained policy; `textenv compare` evaluates it like the built-ins.
"""

from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
import tyro

import textenv


@dataclass
class Config:
    seed: int = 1
    """Seed of the env's prompts, sampling and torch."""
    task: str = "reviews"
    """Task to train on."""
    reward: str = "learned"
    """Env reward: "learned" or "gold"."""
    total_env_steps: int = 20_000
    """Budget in env steps (generated tokens)."""
    num_envs: int = 64
    """Responses per rollout."""
    learning_rate: float = 3e-4
    """Adam learning rate."""
    kl_coef: float = 0.05
    """beta of the KL penalty in the return."""
    baseline_decay: float = 0.9
    """Moving-average decay of the baseline."""
    threads: int = 2
    """torch threads."""
    run_dir: str = "runs/reinforce_minimal"
    """Unused here (the harness passes it to every agent)."""


def rollout(envs, decoder, obs, generator):
    """Step every env until each has finished one response (its first, from `obs` on).
    Returns the finished observations (N, L) with masks, the env rewards and gold scores,
    the env steps taken and the next observation."""
    n = envs.num_envs
    done = np.zeros(n, dtype=bool)
    final = {k: np.zeros_like(v) for k, v in obs.items()}
    reward, gold, steps = np.zeros(n), np.zeros(n), 0
    resetting = np.zeros(n, dtype=bool)  # envs that ended last step: this step resets them
    with torch.no_grad():
        while not done.all():
            logits = decoder.next_logits(obs)  # (N, V), never-emit tokens at -inf
            actions = torch.multinomial(logits.softmax(-1), 1, generator=generator)[:, 0]
            obs, r, terminated, _, info = envs.step(actions.numpy())
            steps += int((~resetting).sum())  # every generated token is an env step
            resetting = terminated
            new = terminated & ~done  # rows whose first response ends on this step
            if new.any():
                for k in final:  # the finished sequence is the observation of that step
                    final[k][new] = obs[k][new]
                reward[new], gold[new] = r[new], info["gold_score"][new]
            done |= terminated
    return final, reward, gold, steps, obs


def response_logprobs(model, seq):
    """log pi(token) of every response token of right-padded sequences (one forward),
    -> (N, L-1) with zeros off the response."""
    ids = torch.as_tensor(seq["input_ids"])  # (N, L)
    mask = torch.as_tensor(seq["attention_mask"]).bool()  # (N, L)
    response = mask & ~torch.as_tensor(seq["prompt_mask"]).bool()  # (N, L)
    logits = model(ids, mask)[:, :-1]  # (N, L-1, V): position t predicts token t+1
    logp = torch.log_softmax(logits.float(), -1).gather(-1, ids[:, 1:, None])[..., 0]
    return logp * response[:, 1:]  # (N, L-1)


def train(cfg: Config) -> dict:
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    generator = torch.Generator().manual_seed(cfg.seed)
    envs = gym.make_vec("TextGen-v0", num_envs=cfg.num_envs, task=cfg.task, reward=cfg.reward,
                        observation_mode="dict", vectorization_mode="vector_entry_point")
    policy, reference = textenv.load_policy(), textenv.load_reference()
    decoder = textenv.PolicyDecoder(policy, cfg.num_envs)
    optimizer = torch.optim.Adam(policy.parameters(), lr=cfg.learning_rate, eps=1e-5)
    baseline, env_steps, history = None, 0, []
    obs, _ = envs.reset(seed=cfg.seed)
    while env_steps < cfg.total_env_steps:
        policy.eval()
        seq, reward, gold, steps, obs = rollout(envs, decoder, obs, generator)
        env_steps += steps
        logp = response_logprobs(policy, seq)  # (N, L-1), with gradient
        with torch.no_grad():
            logp_ref = response_logprobs(reference, seq)
        kl = (logp.detach() - logp_ref).sum(1)  # (N,) per-response KL estimate
        returns = torch.as_tensor(reward, dtype=torch.float32) - cfg.kl_coef * kl  # (N,)
        mean = returns.mean().item()
        baseline = mean if baseline is None else baseline
        loss = -((returns - baseline) * logp.sum(1)).mean()
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        optimizer.step()
        decoder.reset()  # the cached keys and values belong to the old weights
        baseline = cfg.baseline_decay * baseline + (1 - cfg.baseline_decay) * mean
        history.append({"charts/env_steps": env_steps, "env/reward_mean": float(reward.mean()),
                        "env/gold_mean": float(gold.mean()), "objective/kl": kl.mean().item()})
        print(f"{env_steps:>7} env steps  reward {reward.mean():+.3f}  gold {gold.mean():.3f}"
              f"  KL {kl.mean().item():.2f}")
    return {"policy": policy.eval(), "history": history}


if __name__ == "__main__":
    train(tyro.cli(Config))
