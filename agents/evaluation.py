"""The fixed evaluation: every prompt of a split x k samples, the same for every run and seed.

A comparison between algorithms is only as good as its evaluation. Here every run is
measured on the same slots (each prompt of the split, k times) with the same sampling seed,
so two runs differ only by their policies (common random numbers), and every mean comes with
its standard error:

    eval/gold_mean, eval/gold_se          the task's ground truth
    eval/reward_mean, eval/reward_se      the learned reward model's score (whatever reward
                                          the run was trained on)
    eval/kl, eval/kl_se                   KL(policy || reference) per response, nats
    eval/response_length(_se), eval/eos_rate(_se)
    eval/win_rate, eval/win_rate_ci_low/high
                                          how often the policy's response beats the SFT
                                          policy's on the same slot, judged by gold (ties
                                          count half), with a 95% interval

Splits: "eval" (held-out prompts whose instruction was seen in training: in-distribution)
and "test" (instructions no training stage saw: generalisation); the metrics of a split are
named after it ("eval/gold_mean", "test/gold_mean", ...).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from agents.rollout import collect_rollout, make_envs, response_logprobs
from textenv.assets import resolve_assets_dir
from textenv.model import GPT
from textenv.rewards import has_reward_ensemble, has_reward_model
from textenv.tasks import Task

EVAL_BATCH = 64
"""Envs per evaluation batch: fixed, so that a slot gets the same random numbers whatever
the run's num_envs."""


@dataclass(frozen=True)
class EvalSet:
    """Which slots an evaluation samples, and with which seed."""

    split: str = "eval"
    samples_per_prompt: int = 4
    seed: int = 0

    def slots(self, task: Task) -> list[str]:
        """Every prompt of the split, each `samples_per_prompt` times in a row."""
        return [p for p in task.prompts(self.split) for _ in range(self.samples_per_prompt)]


@torch.no_grad()
def sample_eval_set(policy: GPT, reference: GPT, envs, task: Task, eval_set: EvalSet, *,
                    max_new_tokens: int, temperature: float, pad_id: int) -> dict:
    """Sample every slot once. Returns per-slot arrays (S,): gold, reward, kl, length, eos,
    and the (prompt, response, gold, reward) samples."""
    slots = eval_set.slots(task)
    n = envs.num_envs
    # A dialogue's hidden preference is drawn among the games of the env's split: the
    # evaluated split's (held-out games); single-turn tasks ignore it for given prompts.
    envs.unwrapped.prompt_split = eval_set.split
    gen = torch.Generator().manual_seed(eval_set.seed)
    out = {k: [] for k in ("gold", "reward", "kl", "length", "eos")}
    samples = []
    for start in range(0, len(slots), n):
        chunk = slots[start:start + n]
        real = len(chunk)
        chunk = chunk + [chunk[-1]] * (n - real)  # the last batch is padded, then dropped
        ro = collect_rollout(envs, policy, chunk, max_new_tokens=max_new_tokens,
                             temperature=temperature, generator=gen, pad_id=pad_id)
        logp = response_logprobs(policy, ro, temperature)  # (N, T)
        logp_ref = response_logprobs(reference, ro, temperature)  # (N, T)
        kl = ((logp - logp_ref) * ro.action_mask).sum(1)  # (N,) sequence k1 estimate
        out["gold"].append(ro.gold[:real])
        out["reward"].append(ro.scores[:real])
        out["kl"].append(kl[:real])
        out["length"].append(ro.action_mask.sum(1)[:real].float())  # the agent's tokens
        out["eos"].append(ro.eos[:real].float())
        samples += list(zip(ro.prompts, ro.responses, ro.gold.tolist(), ro.scores.tolist()))[:real]
    arrays = {k: torch.cat(v).double().cpu().numpy() for k, v in out.items()}
    return {**arrays, "samples": samples}


def mean_and_se(x: np.ndarray) -> tuple[float, float]:
    """Mean and its standard error (sample std, ddof 1)."""
    x = np.asarray(x, dtype=np.float64)
    se = float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else float("nan")
    return float(x.mean()), se


def win_rate(gold: np.ndarray, baseline_gold: np.ndarray) -> tuple[float, float, float]:
    """Fraction of slots where `gold` beats `baseline_gold` (ties count half), with a 95%
    normal-approximation interval over slots: (rate, low, high); all NaN for a task without
    a gold score (NaN gold)."""
    if np.isnan(gold).any() or np.isnan(baseline_gold).any():
        return float("nan"), float("nan"), float("nan")
    wins = (gold > baseline_gold) + 0.5 * (gold == baseline_gold)  # (S,)
    rate, se = mean_and_se(wins)
    return rate, max(0.0, rate - 1.96 * se), min(1.0, rate + 1.96 * se)


def summarize(per_slot: dict, baseline_gold: np.ndarray | None = None,
              prefix: str = "eval") -> dict[str, float]:
    """Means with standard errors (and the win rate against a baseline) of sampled slots,
    named `<prefix>/...`."""
    metrics = {}
    for key, name in (("gold", "gold_mean"), ("reward", "reward_mean"), ("kl", "kl"),
                      ("length", "response_length"), ("eos", "eos_rate")):
        mean, se = mean_and_se(per_slot[key])
        metrics[f"{prefix}/{name}"] = mean
        metrics[f"{prefix}/{name.removesuffix('_mean')}_se"] = se
    metrics[f"{prefix}/samples"] = float(len(per_slot["gold"]))
    if baseline_gold is not None:
        rate, low, high = win_rate(per_slot["gold"], baseline_gold)
        metrics.update({f"{prefix}/win_rate": rate, f"{prefix}/win_rate_ci_low": low,
                        f"{prefix}/win_rate_ci_high": high})
    return metrics


class Evaluator:
    """The fixed evaluation of a task's policies, against one reference (SFT) policy.

        evaluator = Evaluator(reference, task="reviews", max_new_tokens=40)
        metrics = evaluator(policy, EvalSet("test", 4))   # test/gold_mean, test/win_rate, ...

    It samples through its own vector env of EVAL_BATCH envs whose reward is the learned
    reward model whenever `assets_dir` has one, else its reward ensemble if it has one (so
    both rewards are reported whatever the training reward), and caches the reference's own
    samples of each eval set: they are the baseline of the win rate.
    """

    def __init__(self, reference: GPT, *, task: str = "reviews", assets_dir=None,
                 max_new_tokens: int = 40, temperature: float = 1.0,
                 reward: str | None = None, device: str = "cpu"):
        assets_dir = resolve_assets_dir(assets_dir, task)
        if reward is None:
            reward = ("learned" if has_reward_model(assets_dir)
                      else "ensemble" if has_reward_ensemble(assets_dir) else "gold")
        self.envs = make_envs(EVAL_BATCH, task=task, reward=reward,
                              max_new_tokens=max_new_tokens, assets_dir=assets_dir,
                              device=device)
        self.task = self.envs.unwrapped.task
        self.reference = reference
        self.kw = dict(max_new_tokens=max_new_tokens, temperature=temperature,
                       pad_id=self.envs.unwrapped.tokenizer.pad_id)
        self._reference_slots: dict[EvalSet, dict] = {}

    def sample(self, policy: GPT, eval_set: EvalSet) -> dict:
        """Per-slot arrays and samples of `policy` on `eval_set`."""
        if policy is self.reference and eval_set in self._reference_slots:
            return self._reference_slots[eval_set]
        per_slot = sample_eval_set(policy, self.reference, self.envs, self.task, eval_set,
                                   **self.kw)
        if policy is self.reference:
            self._reference_slots[eval_set] = per_slot
        return per_slot

    def __call__(self, policy: GPT, eval_set: EvalSet, win_rate: bool = True) -> dict:
        """Metrics named `<split>/...` (see the module doc) and "samples"."""
        per_slot = self.sample(policy, eval_set)
        baseline = self.sample(self.reference, eval_set)["gold"] if win_rate else None
        return {**summarize(per_slot, baseline, prefix=eval_set.split),
                "samples": per_slot["samples"]}
