"""Best-of-n sampling: no training at all, the baseline every RL method must beat.

For each evaluation slot, sample n responses from the SFT policy and keep the one the
reward scores highest (the learned reward model, or gold with `--reward gold`). Its KL to
the reference has a closed form (Stiennon et al. 2020; Gao et al. 2022):

    KL(best-of-n || pi_ref) = log n - (n - 1) / n

Its cost is the n - 1 extra responses per slot of the eval split (the first is the
evaluation sample every method gets): every extra generated token counts as an env step,
as the trained methods' training tokens do, and n grows one round at a time (one more
candidate per slot) until the budget `total_env_steps` or `n` is reached; the test split
then uses the same n. The rounds also give the whole
best-of-k curve for k = 1..n (`best_of_n_curve`), which the over-optimisation fit uses.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from agents.evaluation import EvalSet, summarize
from agents.training import RunConfig, setup
from textenv.storage import write_json


@dataclass
class BestOfNConfig(RunConfig):
    run_dir: str = "runs/best_of_n"
    """Where final_eval.json goes."""
    n: int = 16
    """Largest number of samples per slot (fewer if total_env_steps runs out first)."""


def analytic_kl(n: int) -> float:
    """KL(best-of-n policy || base policy) in nats: log n - (n-1)/n."""
    return math.log(n) - (n - 1) / n


def best_of_n(evaluator, eval_set: EvalSet, n: int, select_by: str, budget: float,
              seed: int) -> dict:
    """Candidates round by round: round 0 is the SFT policy's own evaluation (the same for
    every seed), round r > 0 samples every slot once more with a seed of its own. Returns
    the chosen per-slot arrays, the rounds used, the tokens generated and the best-of-k
    curve."""
    rounds, tokens, first = [], 0.0, 0.0
    while len(rounds) < n:
        # Round 0 is the evaluation every method gets for free; the extra candidates are
        # what best-of-n spends instead of training: they must fit in the budget.
        if rounds and (tokens - first) + tokens / len(rounds) > budget:
            break  # the next round would overspend the budget
        r = len(rounds)
        candidate = evaluator.sample(evaluator.reference, EvalSet(
            eval_set.split, eval_set.samples_per_prompt,
            seed=eval_set.seed + (1000 * seed + r if r else 0)))
        rounds.append(candidate)
        tokens += float(candidate["length"].sum())
        first = first or tokens
    stacked = {key: np.stack([r[key] for r in rounds])  # (n, S) each
               for key in ("gold", "reward", "length", "eos")}
    score, slots = stacked[select_by], np.arange(len(rounds[0]["gold"]))
    curve = []
    for k in range(1, len(rounds) + 1):
        best = score[:k].argmax(0)  # (S,) the favourite of the first k candidates
        curve.append({"n": k, "kl": analytic_kl(k),
                      "gold": float(stacked["gold"][best, slots].mean()),
                      "reward": float(stacked["reward"][best, slots].mean())})
    best = score.argmax(0)  # (S,)
    chosen = {key: values[best, slots] for key, values in stacked.items()}
    chosen["kl"] = np.full(len(slots), analytic_kl(len(rounds)))
    chosen["samples"] = [rounds[b]["samples"][i] for i, b in enumerate(best)]
    return {"per_slot": chosen, "n": len(rounds), "tokens": tokens - first, "curve": curve,
            "candidates": {"gold": stacked["gold"], "reward": stacked["reward"]}}  # (n, S)


def train(cfg: BestOfNConfig) -> dict:
    """'Train' = run best-of-n on the fixed evaluation (the same result dict as the others)."""
    if cfg.reward not in ("learned", "gold"):
        raise ValueError(f"best-of-n selects by reward 'learned' or 'gold', got {cfg.reward!r}")
    if cfg.compile or cfg.autocast_bf16:
        raise ValueError("best-of-n trains nothing: --compile and --autocast-bf16 do not apply")
    s = setup(cfg)
    t0 = time.perf_counter()
    final, n = {}, cfg.n
    for split in ("eval", "test"):
        eval_set = EvalSet(split, cfg.eval_samples)
        baseline = s.evaluator.sample(s.reference, eval_set)["gold"]
        # The budget sets n on the eval split; the test split reuses that n (its tokens are
        # reported as test/env_steps, like the evaluation of the trained methods, unbudgeted).
        result = best_of_n(s.evaluator, eval_set, n,
                           "gold" if cfg.reward == "gold" else "reward",  # the env's reward
                           budget=cfg.total_env_steps if split == "eval" else float("inf"),
                           seed=cfg.seed)
        n = result["n"]
        final.update(summarize(result["per_slot"], baseline, prefix=split))
        final[f"{split}/best_of_n"] = float(n)
        final[f"{split}/env_steps"] = result["tokens"]
        if split == "eval":
            samples, curve = result["per_slot"]["samples"], result["curve"]
    final.update({"charts/env_steps": final["eval/env_steps"],
                  "charts/wall_clock": time.perf_counter() - t0, "charts/gradient_steps": 0.0})
    run_dir = Path(cfg.run_dir)
    write_json(run_dir / "config.json", asdict(cfg))
    write_json(run_dir / "final_eval.json", final)
    write_json(run_dir / "best_of_n_curve.json", curve)
    return {"final": final, "samples": samples, "history": [], "run_dir": str(run_dir),
            "interrupted": False, "curve": curve}
