"""Best-of-n sampling: no training at all, the baseline every RL method must beat.

For each prompt, sample n responses from the SFT policy and keep the one the reward model
scores highest. Its KL to the reference has a closed form (Stiennon et al. 2020;
Gao et al. 2022):  KL(best-of-n || pi_ref) = log n - (n - 1) / n.
The cost is n times the generation; the env-step count reports it.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from agents.rollout import collect_rollout
from agents.training import RunConfig, eval_prompts, setup
from textenv.storage import write_json


@dataclass
class BestOfNConfig(RunConfig):
    run_dir: str = "runs/best_of_n"
    """Where final_eval.json goes."""
    n: int = 16
    """Samples per prompt (num_envs must be a multiple of it)."""


def analytic_kl(n: int) -> float:
    """KL(best-of-n policy || base policy) in nats: log n - (n-1)/n."""
    return math.log(n) - (n - 1) / n


@torch.no_grad()
def best_of_n(envs, policy, prompts: list[str], n: int, *, max_new_tokens: int,
              temperature: float, generator: torch.Generator, pad_id: int) -> dict:
    """Pick the reward model's favourite of n samples for each prompt."""
    per_rollout = envs.num_envs // n  # prompts per rollout
    chosen_gold, chosen_score, tokens, samples = [], [], 0, []
    for s in range(0, len(prompts), per_rollout):
        chunk = prompts[s:s + per_rollout]
        chunk = chunk + [chunk[-1]] * (per_rollout - len(chunk))  # pad the last rollout
        ro = collect_rollout(envs, policy, [p for p in chunk for _ in range(n)],
                             max_new_tokens=max_new_tokens, temperature=temperature,
                             generator=generator, pad_id=pad_id)
        tokens += ro.num_tokens
        scores = ro.scores.view(per_rollout, n)  # (P, n)
        best = scores.argmax(1)  # (P,)
        rows = torch.arange(per_rollout) * n + best
        keep = min(per_rollout, len(prompts) - s)
        chosen_gold += ro.gold[rows][:keep].tolist()
        chosen_score += scores.max(1).values[:keep].tolist()
        samples += [(ro.prompts[r], ro.responses[r], ro.gold[r].item(), ro.scores[r].item())
                    for r in rows[:keep].tolist()]
    return {"eval/gold_mean": sum(chosen_gold) / len(chosen_gold),
            "eval/reward_mean": sum(chosen_score) / len(chosen_score),
            "eval/kl": analytic_kl(n), "charts/env_steps": tokens, "samples": samples}


def train(cfg: BestOfNConfig) -> dict:
    """'Train' = evaluate best-of-n on held-out prompts (same interface as the others)."""
    if cfg.num_envs % cfg.n:
        raise ValueError(f"n={cfg.n} must divide num_envs={cfg.num_envs}")
    s = setup(cfg)
    t0 = time.perf_counter()
    prompts = eval_prompts(cfg)
    result = best_of_n(s.envs, s.reference, prompts, cfg.n, max_new_tokens=cfg.max_new_tokens,
                       temperature=cfg.temperature, generator=s.generator,
                       pad_id=s.tokenizer.pad_id)
    final = {k: v for k, v in result.items() if k != "samples"}
    final["charts/wall_clock"] = time.perf_counter() - t0
    run_dir = Path(cfg.run_dir)
    write_json(run_dir / "config.json", asdict(cfg))
    write_json(run_dir / "final_eval.json", final)
    return {"final": final, "samples": result["samples"], "history": [], "run_dir": str(run_dir),
            "interrupted": False}
