"""Benchmark textenv on this machine: absolute figures and side-by-side ratios.

    python scripts/bench.py --quick                     # ~30 s: everything but PPO-to-target
    python scripts/bench.py --json runs/bench.json      # full run (< 10 min)
    python scripts/bench.py --quick --assets-dir /tmp/tiny_assets --threads 1

(`make bench` runs the full one.) Always prints a markdown table (stdout); progress goes to
stderr. Every figure is the median of k repeats after warm-up, and every ratio is formed
from two figures of the same run; the two sides of the headline ratios (rollout vs bare
generation, KV cache vs recomputation) are interleaved A, B, B, A, ... so that a noisy,
shared machine slows both alike. The table also states the load average and warns when
other processes already kept the cores busy.

Nothing here patches the env or the agents: reward scoring is timed by handing the env a
timed reward function (`TimedReward`, as its `reward=`), and the phases of an LM-PPO
iteration by handing `PPO.iteration` a `PhaseTimer`.

Figures (keys of the JSON's "figures"), one function each:
  1. single_env_steps_per_s          uniform random actions in gym.make("TextGen-v0")
  2. vector_env_tokens_per_s_n64     the same in gym.make_vec(..., num_envs=64); tokens =
                                     env steps x num_envs; `vector_env_kl_autoreset_...`:
                                     under VectorKLPenalty(kl_coef=0.05) (the reference
                                     policy runs every step) with 6% EOS actions, so that
                                     envs autoreset at spread-out steps
  3. rollout_vs_bare_generation_ratio
                                     agents.rollout.collect_rollout through the vector env
                                     against model.generate on the same prompts with the same
                                     sampling seed (so both write the same tokens):
                                     (bare s/token) / (rollout s/token); the rollout's time
                                     includes the env's reward scoring, `..._excl_scoring`
                                     subtracts it; `rollout_vs_generate_then_score_ratio`
                                     adds to the bare side one batched call of the same
                                     reward function on its responses (a hand-written
                                     generate-then-score loop; design goal >= 0.9);
                                     `generate_then_score_vs_bare_generation_ratio` is that
                                     loop against bare generation alone: the ceiling of
                                     rollout_vs_bare_generation_ratio for any rollout that
                                     runs this reward model after (not beside) decoding,
                                     since one batch is the cheapest way to score
  4. kv_cache_speedup                decoding 32 fixed tokens at batch 64 with the KV cache
                                     against a forward over the whole prefix every step
                                     (design goal >= 5)
  5. ppo_*                           one LM-PPO iteration (agents.ppo.PPO.iteration) split
                                     into its timed phases: rollout (without scoring) /
                                     reward scoring (in the env) / reference log-probs /
                                     old log-probs and values / advantages / update;
                                     ref_plus_scoring_fraction (design goal <= 0.25)
  6. ppo_time_to_target_s, ppo_to_target_*
                                     (full run only) wall-clock for agents.ppo.train with the
                                     default PPOConfig to reach gold g0 + 0.5 (1 - g0) on
                                     held-out prompts, and its peak RSS (run in a subprocess)
  7. generation_flop_utilization     bare generation tokens/s at batch 256 x 2 x params
                                     FLOPs/token, over the measured float32 matmul FLOP rate
                                     (`matmul_gflops`, measured first at --threads)
  8. machine                         cores, torch version and threads, python version
  9. decode_flop_utilisation_real_tokens_b256
                                     bare generation at batch 256 split into the prompts'
                                     prefill and the decode steps (the `Decoder` loop of
                                     GPT.generate), at 1 and at 2 threads (suffix _1t, _2t;
                                     unsuffixed: at --threads), each against the matmul rate
                                     measured at that thread count; `dead_row_fraction`: the
                                     row-steps a decoder that keeps finished rows would spend
                                     on them; `decode_vs_hf_generate_ratio`: Hugging Face
                                     generate on a converted copy of the same weights (s per
                                     generated token) over GPT.generate's, when transformers
                                     is installed (skipped otherwise);
                                     `decode_bound_flop_utilisation_real_tokens_b256`: the
                                     highest utilisation these decode steps allow, if each
                                     step took only the longer of its matmuls at the matmul
                                     rate and reading its float32 keys and values (timed as
                                     a plain sum over them); `decode_vs_bound_ratio_b256`:
                                     that bound's seconds per real token over the measured
                                     ones; `decode_fused_vs_pytorch_ratio`: the same decode
                                     steps in PyTorch ops (s per real token) over the fused
                                     step's (textenv.fused_decode), when it is available
 10. update_*                        the LM-PPO update (4 epochs x 4 minibatches, no early
                                     stop) on one rollout of num_envs, from the same start,
                                     interleaved: the whole padded width (`baseline`),
                                     minibatches trimmed to their own longest prompt and
                                     response (`trim`, the default), trim + length-bucketed
                                     minibatches (`bucket`), trim + bf16 autocast (`bf16`,
                                     when the CPU supports bf16), trim + torch.compile
                                     (`compile`: full run only; its first, compiling
                                     update is `update_compile_warmup_s`).
                                     update_trim_speedup = baseline s / trim s; the
                                     bucket, bf16 and compile speedups are against trim;
                                     FLOP utilisation against the matmul rate measured
                                     between the repeats (details: update_matmul_gflops)

Every phase also reports its FLOP utilisation (`*_flop_utilisation_real_tokens` and
`*_all_row_steps`): 2 x params FLOPs per token for a forward, 6 for forward + backward
(attention's own FLOPs are not counted), over the matmul rate at the same thread count.
Real tokens are the prompt and response tokens of sequences still running; all row-steps
also count padding and finished rows (the padded batch a phase computes).
"""

from __future__ import annotations

import copy
import json
import math
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F

import textenv  # noqa: F401  (registers TextGen-v0)
from agents.rollout import collect_rollout, make_envs
from agents.training import PhaseTimer, bf16_supported
from textenv import fused_decode
from textenv.assets import ASSETS_DIR, load_reference, load_tokenizer, read_quality
from textenv.lm import encode_prompt, pad_left
from textenv.model import Decoder, KVCache
from textenv.rewards import RewardFn, make_reward_fn
from textenv.runlog import read_metrics_csv
from textenv.tasks import make_task
from textenv.wrappers import VectorKLPenalty

ROOT = Path(__file__).resolve().parent.parent

# Figures every run reports (finite, > 0). FULL_ONLY_KEYS are added by the full run when
# the learned reward model exists and the target is reached.
FIGURE_KEYS = (
    "single_env_steps_per_s",
    "vector_env_tokens_per_s_n64",
    "vector_env_kl_autoreset_tokens_per_s_n64",
    "vector_vs_single_speedup",
    "bare_generation_tokens_per_s_n64",
    "rollout_tokens_per_s_n64",
    "rollout_vs_bare_generation_ratio",
    "rollout_vs_bare_generation_ratio_excl_scoring",
    "rollout_vs_generate_then_score_ratio",
    "generate_then_score_vs_bare_generation_ratio",
    "rollout_scoring_s",
    "rollout_scoring_one_batch_s",
    "kv_cache_decode_s",
    "no_cache_decode_s",
    "kv_cache_speedup",
    "ppo_iteration_s",
    "ppo_rollout_s",
    "ppo_rollout_excl_scoring_s",
    "ppo_scoring_s",
    "ppo_scoring_one_batch_s",
    "ppo_reference_s",
    "ppo_old_logprobs_s",
    "ppo_advantages_s",
    "ppo_update_s",
    "ppo_rollout_excl_scoring_fraction",
    "ppo_scoring_fraction",
    "ppo_reference_fraction",
    "ppo_old_logprobs_fraction",
    "ppo_advantages_fraction",
    "ppo_update_fraction",
    "ref_plus_scoring_fraction",
    "matmul_gflops",
    "bare_generation_tokens_per_s_b256",
    "generation_flop_utilization",
    "bench_peak_rss_mb",
    # every phase's FLOP utilisation (fraction of the matmul rate at the same thread count)
    *(f"{phase}_flop_utilisation_{count}"
      for phase in ("bare_generation", "rollout_excl_scoring", "kv_cache_decode",
                    "ppo_rollout_excl_scoring", "ppo_reference", "ppo_old_logprobs",
                    "ppo_update")
      for count in ("real_tokens", "all_row_steps")),
    "decode_flop_utilisation_real_tokens_b256",
    "decode_flop_utilisation_all_row_steps_b256",
    "prefill_flop_utilisation_real_tokens_b256",
    "decode_bound_flop_utilisation_real_tokens_b256",
    "decode_vs_bound_ratio_b256",
    *(f"{key}_{t}t" for t in (1, 2)
      for key in ("matmul_gflops", "decode_flop_utilisation_real_tokens_b256",
                  "decode_flop_utilisation_all_row_steps_b256",
                  "prefill_flop_utilisation_real_tokens_b256",
                  "prefill_flop_utilisation_all_row_steps_b256",
                  "decode_bound_flop_utilisation_real_tokens_b256",
                  "decode_vs_bound_ratio_b256")),
)
# Figure 10: every run times these update variants; bf16 when the CPU supports it, compile
# in the full run.
UPDATE_KEYS = (
    *(f"update_{v}{suffix}" for v in ("baseline", "trim", "bucket")
      for suffix in ("_s", "_flop_utilisation_real_tokens", "_flop_utilisation_all_row_steps")),
    "update_trim_speedup", "update_bucket_speedup", "update_flop_utilisation_real_tokens")
UPDATE_OPTIONAL_KEYS = (
    *(f"update_{v}{suffix}" for v in ("bf16", "compile")
      for suffix in ("_s", "_flop_utilisation_real_tokens", "_flop_utilisation_all_row_steps")),
    "update_bf16_speedup", "update_compile_speedup", "update_compile_warmup_s")
# Figures every run reports in [0, 1).
FRACTION_KEYS = ("dead_row_fraction",)
# Figures that need the learned reward model (scoring FLOPs), transformers (HF generate) or
# the fused decode step (a C compiler).
OPTIONAL_KEYS = ("rollout_scoring_flop_utilisation_real_tokens",
                 "scoring_one_batch_flop_utilisation_real_tokens",
                 "ppo_scoring_flop_utilisation_real_tokens",
                 "decode_vs_hf_generate_ratio", "decode_vs_hf_generate_ratio_1t",
                 "decode_vs_hf_generate_ratio_2t", "decode_fused_vs_pytorch_ratio",
                 "decode_fused_vs_pytorch_ratio_1t", "decode_fused_vs_pytorch_ratio_2t")
FULL_ONLY_KEYS = (
    "ppo_time_to_target_s",
    "ppo_to_target_train_s",
    "ppo_to_target_process_s",
    "ppo_to_target_env_steps",
    "ppo_to_target_iterations",
    "ppo_peak_rss_mb",
)
MACHINE_KEYS = ("cores", "cpu", "cpu_capability", "torch_version", "torch_threads",
                "python_version", "platform", "load_avg_1min", "omp_wait_policy",
                "gomp_spincount")
# Design goals, printed beside the measured figure (the table states, it does not judge).
DESIGN_GOALS = {"rollout_vs_generate_then_score_ratio": ">= 0.9",
                "decode_flop_utilisation_real_tokens_b256": ">= 0.30",
                "decode_vs_hf_generate_ratio": ">= 1.4",
                "kv_cache_speedup": ">= 5",
                "ref_plus_scoring_fraction": "<= 0.25"}
# The phases PPO.iteration times, in order; the bench splits "rollout" into decoding and
# the env's reward scoring.
PPO_PHASES = ("rollout", "reference", "old_logprobs", "advantages", "update")


@dataclass
class BenchConfig:
    """Measure textenv's speed on this machine; sizes left at None follow --quick/full."""

    quick: bool = False
    """Small sizes, finishes within ~45 s on a 2-core machine; skips the PPO-to-target run."""
    json: str | None = None
    """Write the figures (and machine, config, details) to this JSON file."""
    assets_dir: str = str(ASSETS_DIR)
    """Assets to benchmark (tokenizer, SFT policy, reward model, quality.json)."""
    threads: int = 2
    """torch.set_num_threads(threads) for every measurement (and the PPO subprocess)."""
    reward: str = "auto"
    """Env reward: "learned", "gold", or "auto" (learned if the reward model exists)."""
    num_envs: int = 64
    """Batch of the vector env, rollouts and the PPO iteration (figures 2, 3, 5)."""
    max_new_tokens: int = 40
    """Response length limit for rollouts and bare generation (PPOConfig's default)."""
    repeats: int | None = None
    """Timed repeats per measurement, the median is reported (default 3 quick, 7 full)."""
    single_env_steps: int | None = None
    """Env steps per timed repeat of the single env (default 1000 quick, 5000 full)."""
    vector_env_steps: int | None = None
    """Vector-env steps per timed repeat (default 50 quick, 250 full)."""
    kv_batch: int = 64
    """Batch size of the KV-cache vs recomputation comparison."""
    kv_new_tokens: int = 32
    """Tokens decoded in the KV-cache vs recomputation comparison."""
    gen_batch: int = 256
    """Batch size of the bare-generation FLOP-utilisation figure."""
    matmul_size: int = 1024
    """n of the n x n @ n x n float32 matmul that measures the machine's FLOP rate."""
    ppo_iterations: int | None = None
    """Timed LM-PPO iterations after one warm-up (default 2 quick, 5 full)."""
    update_compile: bool = True
    """Full run only: figure 10 also times the update under torch.compile (its compilation
    takes 20-60 s on 2 cores)."""
    ppo_to_target: bool = True
    """Full run only: time agents.ppo.train (default PPOConfig) to the gold target."""
    ppo_eval_every: int = 2
    """Held-out evaluation every this many iterations in the PPO-to-target run."""
    ppo_timeout: float | None = None
    """Give up on the PPO-to-target run after this many seconds (None: what is left of a
    10-minute full run, at least 30 s)."""
    seed: int = 0
    """Seed for prompts, actions and sampling."""
    progress: bool = True
    """Progress lines on stderr."""


# ---- helpers -------------------------------------------------------------------------------
_T0 = time.perf_counter()
_PROGRESS = True  # set by run() from cfg.progress


def log(msg: str) -> None:
    if _PROGRESS:
        print(f"[bench {time.perf_counter() - _T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


def median(xs) -> float:
    return float(statistics.median(xs))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def sizes(cfg: BenchConfig) -> dict:
    """The sizes left at None in cfg, filled in for a quick or a full run."""
    pick = lambda v, quick, full: v if v is not None else (quick if cfg.quick else full)
    return {"repeats": pick(cfg.repeats, 3, 7),
            "single_env_steps": pick(cfg.single_env_steps, 1000, 5000),
            "vector_env_steps": pick(cfg.vector_env_steps, 50, 250),
            "ppo_iterations": pick(cfg.ppo_iterations, 2, 5)}


def resolve_reward(cfg: BenchConfig) -> tuple[str, bool]:
    """-> (reward preset to use, whether the learned reward model exists)."""
    d = Path(cfg.assets_dir)
    has_rm = (d / "reward.safetensors").is_file() and (d / "reward.json").is_file()
    if cfg.reward == "auto":
        return ("learned" if has_rm else "gold"), has_rm
    if cfg.reward not in ("learned", "gold"):
        raise ValueError(f"unknown reward {cfg.reward!r}; valid: 'auto', 'learned', 'gold'")
    return cfg.reward, has_rm


def matmul_flop_rate(n: int, repeats: int) -> float:
    """FLOP/s of float32 n x n @ n x n products (2 n^3 each) at the current thread count."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
    inner = max(1, int(2e9 // (2 * n ** 3)))  # ~2 GFLOP per timed sample
    for _ in range(2):  # warm-up
        a @ b
    times = []
    for _ in range(max(3, repeats)):
        t0 = time.perf_counter()
        for _ in range(inner):
            a @ b
        times.append(time.perf_counter() - t0)
    return 2 * n ** 3 * inner / median(times)


def flop_utilisation(params: int, tokens: float, seconds: float, rate: float,
                     flops_per_param: int = 2) -> float:
    """Fraction of the matmul rate: flops_per_param x params FLOPs per token (2 for a
    forward, 6 for forward + backward; attention's own FLOPs are not counted)."""
    return flops_per_param * params * tokens / seconds / rate


def kv_read_seconds(cache, rows=None, tries: int = 3) -> float:
    """The fastest of `tries` plain sums over the keys and values a decode step just read
    (every layer, the filled slots of every row of the cache, or of `rows` (R,) where the
    step skipped the others): an estimate of the least time a decode step on a float32
    cache spends reading them on this machine."""
    k, v = cache.k[..., :cache.length, :], cache.v[..., :cache.length, :]
    if rows is not None:  # gathered first (untimed): the sum then streams just those rows
        k, v = k[:, rows], v[:, rows]
    times = []
    for _ in range(tries):
        t0 = time.perf_counter()
        k.sum(), v.sum()
        times.append(time.perf_counter() - t0)
    return min(times)


def num_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def sample_prompts(task, n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [task.sample_prompt(rng, "train") for _ in range(n)]


class TimedReward:
    """A reward function for the env's `reward=` that times the one it wraps: the seconds
    spent scoring and the calls add up until reset(). It keeps what it scored, so that
    the same episodes can be re-scored in one batch (the batched ideal)."""

    def __init__(self, fn: RewardFn):
        self.fn = fn
        if hasattr(fn, "score_ids"):  # the env calls score_ids exactly when it exists
            self.score_ids = self._score_ids
        self.reset()

    def reset(self) -> None:
        self.seconds, self.calls = 0.0, 0
        self.texts: tuple[list[str], list[str]] = ([], [])  # prompts, responses
        self.id_batches: list[tuple[torch.Tensor, torch.Tensor]] = []  # (B, T) ids, mask

    def __call__(self, prompts, responses):
        t0 = time.perf_counter()
        out = self.fn(prompts, responses)
        self.seconds += time.perf_counter() - t0
        self.calls += 1
        self.texts[0].extend(prompts)
        self.texts[1].extend(responses)
        return out

    def _score_ids(self, ids, mask):
        t0 = time.perf_counter()
        out = self.fn.score_ids(ids, mask)
        self.seconds += time.perf_counter() - t0
        self.calls += 1
        self.id_batches.append((ids, mask))
        return out

    def token_counts(self) -> tuple[int, int, int]:
        """(episodes, real tokens, longest sequence) of everything scored since reset():
        [bos] + prompt + response per episode (texts: the tokenizer is word-level)."""
        lengths = [int(n) for _, mask in self.id_batches for n in mask.sum(1)]
        lengths += [1 + len(p.split()) + len(r.split()) for p, r in zip(*self.texts)]
        return len(lengths), sum(lengths), max(lengths, default=0)

    def rescore_in_one_batch(self) -> float:
        """Score everything seen since reset() in ONE call -> seconds."""
        t0 = time.perf_counter()
        if self.id_batches:
            width = max(ids.shape[1] for ids, _ in self.id_batches)
            ids = torch.cat([F.pad(i, (0, width - i.shape[1])) for i, _ in self.id_batches])
            mask = torch.cat([F.pad(m, (0, width - m.shape[1])) for _, m in self.id_batches])
            self.fn.score_ids(ids, mask)  # (B, W) right-padded, padding masked out
        if self.texts[0]:
            self.fn(*self.texts)
        return time.perf_counter() - t0


# ---- 1: single env -------------------------------------------------------------------------
def single_env_throughput(cfg: BenchConfig, reward: str, steps: int,
                          repeats: int) -> tuple[dict, dict]:
    env = gym.make("TextGen-v0", reward=reward, assets_dir=cfg.assets_dir)
    rng = np.random.default_rng(cfg.seed)
    vocab = env.action_space.n
    env.reset(seed=cfg.seed)

    def timed(n: int) -> float:
        actions = rng.integers(0, vocab, size=n)  # uniform random token ids
        t0 = time.perf_counter()
        for a in actions:
            _, _, terminated, truncated, _ = env.step(a)
            if terminated or truncated:
                env.reset()
        return time.perf_counter() - t0

    timed(min(steps, 100))  # warm-up (lazy loads, first scoring)
    times = [timed(steps) for _ in range(repeats)]
    env.close()
    return {"single_env_steps_per_s": steps / median(times)}, {}


# ---- 2: vector env, plain and with the reference policy -----------------------------------
def vector_env_throughput(cfg: BenchConfig, reward: str, steps: int,
                          repeats: int) -> tuple[dict, dict]:
    """Random actions at N envs: uniform ones, and under VectorKLPenalty with EOS drawn 6%
    of the time, so that episodes end at spread-out steps and some envs autoreset on most
    steps (the reference policy's partial prefills)."""
    n = cfg.num_envs
    rng = np.random.default_rng(cfg.seed + 1)

    def tokens_per_s(envs, p_eos: float) -> float:
        vocab, eos = envs.single_action_space.n, envs.unwrapped.tokenizer.eos_id
        envs.reset(seed=cfg.seed)

        def timed(k: int) -> float:
            actions = rng.integers(0, vocab, size=(k, n))  # (k, N) uniform random token ids
            actions[rng.random((k, n)) < p_eos] = eos
            t0 = time.perf_counter()
            for a in actions:
                envs.step(a)
            return time.perf_counter() - t0

        timed(min(steps, 10))  # warm-up
        times = [timed(steps) for _ in range(repeats)]
        envs.close()
        return steps * n / median(times)

    make = lambda: gym.make_vec("TextGen-v0", num_envs=n, reward=reward,
                                vectorization_mode="vector_entry_point",
                                assets_dir=cfg.assets_dir)
    return {"vector_env_tokens_per_s_n64": tokens_per_s(make(), p_eos=0.0),
            "vector_env_kl_autoreset_tokens_per_s_n64":
            tokens_per_s(VectorKLPenalty(make(), kl_coef=0.05), p_eos=0.06)}, {}


# ---- 3: rollout through the env vs bare generation -----------------------------------------
def rollout_vs_bare_generation(cfg: BenchConfig, reward: str, policy, tokenizer, task,
                               repeats: int, rate: float) -> tuple[dict, dict]:
    n, T = cfg.num_envs, cfg.max_new_tokens
    score = make_reward_fn(reward, task, cfg.assets_dir)  # the bare side calls it directly
    timed_score = TimedReward(score)  # the env calls it through this
    envs = make_envs(n, reward=timed_score, max_new_tokens=T, assets_dir=cfg.assets_dir)
    prompts = sample_prompts(task, n, cfg.seed + 2)
    prompt_ids, prompt_mask = pad_left([encode_prompt(tokenizer, p) for p in prompts],
                                       tokenizer.pad_id)  # (N, Tp) left-padded

    def score_in_one_batch(out: dict) -> float:
        """Bare generation's responses scored in ONE call of the same reward function:
        what a hand-written generate-then-score loop pays for the same rewards."""
        t0 = time.perf_counter()
        if hasattr(score, "score_ids"):
            score.score_ids(torch.cat([prompt_ids, out["response_ids"]], 1),  # (N, Tp + Tr)
                            torch.cat([prompt_mask, out["response_mask"]], 1))
        else:
            score(prompts, [tokenizer.decode(r[m].tolist())
                            for r, m in zip(out["response_ids"], out["response_mask"])])
        return time.perf_counter() - t0

    def bare(seed: int):
        g = torch.Generator().manual_seed(seed)
        t0 = time.perf_counter()
        out = policy.generate(prompt_ids, prompt_mask, T, eos_id=tokenizer.eos_id,
                              pad_id=tokenizer.pad_id, temperature=1.0, generator=g)
        seconds = time.perf_counter() - t0
        tokens = int(out["response_mask"].sum())
        return seconds, out["response_ids"], tokens, score_in_one_batch(out)

    rm = getattr(score, "reward_model", None)  # None: the gold reward (no model FLOPs)
    P, P_rm = policy.num_params(), (num_params(rm) if rm is not None else 0)
    prompt_real, (N, Tp) = int(prompt_mask.sum()), prompt_ids.shape

    def rollout(seed: int):
        g = torch.Generator().manual_seed(seed)
        timed_score.reset()
        t0 = time.perf_counter()
        ro = collect_rollout(envs, policy, prompts, max_new_tokens=T, temperature=1.0,
                             generator=g, pad_id=tokenizer.pad_id)
        return time.perf_counter() - t0, ro.response_ids, ro.num_tokens, timed_score.seconds

    # Seconds per token of: bare generation, generate-then-score, rollout, rollout without
    # its scoring; the scoring seconds; tokens/s; same tokens written.
    b_spt, gs_spt, r_spt, r_spt_ex, scoring, one_batch, b_tps, r_tps, same = (
        [] for _ in range(9))
    util = {}  # FLOP utilisation per phase, counting real tokens / all row-steps

    def note(key: str, params: int, real: float, rows: float, seconds: float) -> None:
        util.setdefault(f"{key}_flop_utilisation_real_tokens", []).append(
            flop_utilisation(params, real, seconds, rate))
        util.setdefault(f"{key}_flop_utilisation_all_row_steps", []).append(
            flop_utilisation(params, rows, seconds, rate))

    for rep in range(1 + repeats):  # rep 0 is the warm-up
        seed = cfg.seed + 1000 + rep  # both sides sample with the same seed
        if rep % 2 == 0:  # A, B, B, A, ...: neither side always runs first
            tb, ids_b, nb, tsb = bare(seed)
            tr, ids_r, nr, ts = rollout(seed)
        else:
            tr, ids_r, nr, ts = rollout(seed)
            tb, ids_b, nb, tsb = bare(seed)
        if rep == 0:
            continue
        b_spt.append(tb / nb)
        gs_spt.append((tb + tsb) / nb)
        r_spt.append(tr / nr)
        r_spt_ex.append((tr - ts) / nr)
        scoring.append(ts)
        one_batch.append(tsb)
        b_tps.append(nb / tb)
        r_tps.append(nr / tr)
        same.append(ids_b.shape == ids_r.shape and bool(torch.equal(ids_b, ids_r)))
        # Tokens in the (prompt + response) sequences; row-steps: the padded rectangle.
        note("bare_generation", P, prompt_real + nb, N * (Tp + ids_b.shape[1]), tb)
        note("rollout_excl_scoring", P, prompt_real + nr, N * (Tp + ids_r.shape[1]), tr - ts)
        if P_rm:
            _, real, _ = timed_score.token_counts()
            rows = sum(ids.numel() for ids, _ in timed_score.id_batches) or real
            note("rollout_scoring", P_rm, real, rows, ts)
            note("scoring_one_batch", P_rm, prompt_real + nb, N * (Tp + ids_b.shape[1]), tsb)
    envs.close()
    figures = {
        "bare_generation_tokens_per_s_n64": median(b_tps),
        "rollout_tokens_per_s_n64": median(r_tps),
        "rollout_vs_bare_generation_ratio": median(b_spt) / median(r_spt),
        "rollout_vs_bare_generation_ratio_excl_scoring": median(b_spt) / median(r_spt_ex),
        "rollout_vs_generate_then_score_ratio": median(gs_spt) / median(r_spt),
        "generate_then_score_vs_bare_generation_ratio": median(b_spt) / median(gs_spt),
        "rollout_scoring_s": median(scoring),
        "rollout_scoring_one_batch_s": median(one_batch),
        **{key: median(values) for key, values in util.items()},
    }
    details = {"rollout_same_tokens_as_bare": all(same),
               "bare_generation_s_per_token": median(b_spt),
               "generate_then_score_s_per_token": median(gs_spt),
               "rollout_s_per_token": median(r_spt),
               "rollout_excl_scoring_s_per_token": median(r_spt_ex),
               "rollout_reward_calls": timed_score.calls}
    return figures, details


# ---- 4: KV cache vs recomputation -------------------------------------------------------------
@torch.no_grad()
def kv_cache_speedup(cfg: BenchConfig, policy, tokenizer, task,
                     repeats: int, rate: float) -> tuple[dict, dict]:
    B = cfg.kv_batch
    prompts = sample_prompts(task, B, cfg.seed + 3)
    prompt_ids, prompt_mask = pad_left([encode_prompt(tokenizer, p) for p in prompts],
                                       tokenizer.pad_id)  # (B, Tp)
    Tp = prompt_ids.shape[1]
    new = min(cfg.kv_new_tokens, policy.config.block_size - Tp)
    g = torch.Generator().manual_seed(cfg.seed + 4)
    # Fixed tokens (not special ids), so both paths do exactly the same work.
    fixed = torch.randint(4, policy.config.vocab_size, (B, new), generator=g)  # (B, new)
    ids = torch.cat([prompt_ids, fixed], 1)  # (B, Tp + new)
    mask = torch.cat([prompt_mask, torch.ones_like(fixed, dtype=torch.bool)], 1)
    ones = torch.ones(B, 1, dtype=torch.bool)

    def cached():
        cache = KVCache(policy.config, B, Tp + new)
        logits = policy(prompt_ids, prompt_mask, kv_cache=cache)[:, -1]  # (B, V) -> token 0
        logits.argmax(-1)
        for t in range(new - 1):  # feed token t -> logits for token t + 1
            logits = policy(fixed[:, t:t + 1], ones, kv_cache=cache)[:, -1]
            logits.argmax(-1)
        return logits

    def recompute():
        for t in range(new):  # forward over the whole prefix every step
            logits = policy(ids[:, :Tp + t], mask[:, :Tp + t])[:, -1]  # (B, V)
            logits.argmax(-1)
        return logits

    cached()  # warm-up; recomputation's warm-up is one forward at the widest prefix
    policy(ids[:, :Tp + new - 1], mask[:, :Tp + new - 1])
    tc, tn, last = [], [], {}
    for rep in range(repeats):
        pairs = ((cached, tc), (recompute, tn))
        for fn, out in (pairs if rep % 2 == 0 else pairs[::-1]):  # A, B, B, A, ...
            t0 = time.perf_counter()
            last[fn.__name__] = fn()
            out.append(time.perf_counter() - t0)
    max_diff = float((last["cached"] - last["recompute"]).abs().max())  # same logits?
    # The cached path computes the prompts once, then new - 1 tokens per row.
    real, rows = int(prompt_mask.sum()) + B * (new - 1), B * (Tp + new - 1)
    P = policy.num_params()
    return ({"kv_cache_decode_s": median(tc), "no_cache_decode_s": median(tn),
             "kv_cache_speedup": median(tn) / median(tc),
             "kv_cache_decode_flop_utilisation_real_tokens":
             flop_utilisation(P, real, median(tc), rate),
             "kv_cache_decode_flop_utilisation_all_row_steps":
             flop_utilisation(P, rows, median(tc), rate)},
            {"kv_batch": B, "kv_new_tokens": new, "kv_prompt_width": Tp,
             "kv_vs_recompute_max_logit_diff": max_diff})


# ---- 5: one LM-PPO iteration ------------------------------------------------------------------
def ppo_iteration_phases(cfg: BenchConfig, reward: str, iterations: int,
                         rate: float) -> tuple[dict, dict]:
    from agents.ppo import PPO, PPOConfig

    task = make_task("reviews")
    timed_score = TimedReward(make_reward_fn(reward, task, cfg.assets_dir))
    # The reward field reaches the env's reward= unchanged (a preset name or a callable).
    pcfg = PPOConfig(assets_dir=cfg.assets_dir, reward=timed_score, num_envs=cfg.num_envs,
                     max_new_tokens=cfg.max_new_tokens, threads=cfg.threads, seed=cfg.seed + 5,
                     progress=False, tensorboard=False)
    algo = PPO(pcfg)  # what agents.ppo.train builds
    updates = [0]  # optimizer steps (minibatch updates) of the current iteration
    algo.optimizer.register_step_post_hook(lambda *_: updates.__setitem__(0, updates[0] + 1))
    mb_size = max(1, pcfg.num_envs // pcfg.num_minibatches)
    max_updates = pcfg.update_epochs * math.ceil(pcfg.num_envs / mb_size)
    rm = getattr(timed_score.fn, "reward_model", None)
    params = {"rollout_excl_scoring": num_params(algo.agent.lm),
              "scoring": num_params(rm) if rm is not None else 0,
              "reference": num_params(algo.setup.reference),
              "old_logprobs": num_params(algo.agent), "update": num_params(algo.agent)}
    rows = []
    for it in range(1, iterations + 2):  # iteration 1 is the warm-up
        timed_score.reset()
        updates[0] = 0
        timer = PhaseTimer()
        t0 = time.perf_counter()
        m = algo.iteration(it, 0.0, timer)  # progress 0: the start-of-run learning rate
        wall = time.perf_counter() - t0
        in_env = timed_score.seconds
        episodes, real, longest = timed_score.token_counts()
        one_batch = timed_score.rescore_in_one_batch()  # the same pairs in ONE call
        log(f"  PPO iteration {it}{' (warm-up)' if it == 1 else ''}: {wall:.2f} s, "
            f"{updates[0]}/{max_updates} minibatch updates")
        if it > 1:
            rows.append({**{p: timer.seconds.get(p, 0.0) for p in PPO_PHASES},
                         "total": sum(timer.seconds.values()), "wall": wall,
                         "scoring": in_env, "one_batch": one_batch,
                         "calls": timed_score.calls, "tokens": m["charts/env_steps_iter"],
                         "updates": updates[0]})
            seconds = {**timer.seconds, "scoring": in_env,
                       "rollout_excl_scoring": timer.seconds["rollout"] - in_env}
            # Real tokens: [bos] + prompt + response of every episode; row-steps: every
            # episode padded to the longest (a lower bound of the batch each forward pads to).
            # The update runs forward + backward on update_fraction of the batch.
            update_fraction = updates[0] * mb_size / pcfg.num_envs
            for phase, P in params.items():
                if P == 0 or seconds.get(phase, 0) <= 0:
                    continue
                times = update_fraction if phase == "update" else 1.0
                per_param = 6 if phase == "update" else 2
                rows[-1][f"{phase}_util_real"] = flop_utilisation(
                    P, times * real, seconds[phase], rate, per_param)
                rows[-1][f"{phase}_util_rows"] = flop_utilisation(
                    P, times * episodes * longest, seconds[phase], rate, per_param)
    algo.setup.envs.close()
    med = {k: median([r[k] for r in rows if k in r]) for k in {k for r in rows for k in r}}
    total = med["total"]  # every timed phase, so the fractions below add up to 1
    rollout_ex = med["rollout"] - med["scoring"]
    figures = {
        "ppo_iteration_s": total,
        "ppo_rollout_s": med["rollout"],
        "ppo_rollout_excl_scoring_s": rollout_ex,
        "ppo_scoring_s": med["scoring"],
        "ppo_scoring_one_batch_s": med["one_batch"],
        **{f"ppo_{p}_s": med[p] for p in PPO_PHASES[1:]},
        "ppo_rollout_excl_scoring_fraction": rollout_ex / total,
        "ppo_scoring_fraction": med["scoring"] / total,
        **{f"ppo_{p}_fraction": med[p] / total for p in PPO_PHASES[1:]},
        "ref_plus_scoring_fraction": (med["reference"] + med["scoring"]) / total,
    }
    for phase in params:
        if f"{phase}_util_real" in med:
            figures[f"ppo_{phase}_flop_utilisation_real_tokens"] = med[f"{phase}_util_real"]
            figures[f"ppo_{phase}_flop_utilisation_all_row_steps"] = med[f"{phase}_util_rows"]
    details = {"ppo_iteration_wall_s": med["wall"], "ppo_reward_calls_per_rollout": med["calls"],
               "ppo_tokens_per_rollout": med["tokens"], "ppo_num_envs": pcfg.num_envs,
               "ppo_minibatch_updates": med["updates"], "ppo_minibatch_updates_max": max_updates,
               "ppo_old_logprobs_includes": "no-grad forward for pi_old log-probs and values",
               "ppo_advantages_includes": "KL-shaped per-token rewards, GAE, whitening",
               "ppo_update_includes": "epochs x minibatches of forward + backward + step"}
    return figures, details


# ---- 10: the update's options ---------------------------------------------------------------
# The LM-PPO update in five ways on one rollout (PPOConfig overrides): the whole padded width
# (baseline), each minibatch trimmed to its own longest prompt and response (the default),
# and trimming with length-bucketed minibatches, bf16 autocast or torch.compile.
UPDATE_VARIANTS = {"baseline": {"trim_padding": False}, "trim": {},
                   "bucket": {"bucket_by_length": True}, "bf16": {"autocast_bf16": True},
                   "compile": {"compile": True}}


def update_options(cfg: BenchConfig, reward: str, repeats: int,
                   variants: tuple[str, ...]) -> tuple[dict, dict]:
    """One rollout of num_envs, then the update (epochs x minibatches, no early stop) from
    the same weights, optimizer state and minibatch seed in every variant, interleaved
    (the order reversed every other repeat). FLOP utilisation: 6 x params FLOPs per real
    token, and per computed row-step (each minibatch's rows x the width it ran), against
    the float32 matmul rate measured between the repeats (a shared machine's rate drifts)."""
    from agents.ppo import (
        PPO,
        PPOConfig,
        advantages_and_returns,
        minibatches,
        old_logprobs_and_values,
        per_token_rewards,
        ppo_update,
    )
    from agents.rollout import response_logprobs, trimmed_columns
    from agents.training import update_model

    pcfg = PPOConfig(assets_dir=cfg.assets_dir, reward=reward, num_envs=cfg.num_envs,
                     max_new_tokens=cfg.max_new_tokens, threads=cfg.threads,
                     seed=cfg.seed + 10, progress=False, tensorboard=False, target_kl=None)
    algo = PPO(pcfg)
    s, agent, t = algo.setup, algo.agent, pcfg.temperature
    ro = collect_rollout(s.envs, agent.lm, s.sample_prompts(pcfg.num_envs),
                         max_new_tokens=pcfg.max_new_tokens, temperature=t,
                         generator=s.generator, pad_id=s.tokenizer.pad_id)
    s.envs.close()
    mask = ro.action_mask.float()  # (N, T)
    logp_ref = response_logprobs(s.reference, ro, t)
    old_logp, old_values = old_logprobs_and_values(agent, ro, mask, t)
    rewards, _ = per_token_rewards(ro.scores * s.reward_scale, old_logp, logp_ref, mask,
                                   algo.kl_ctl.value, pcfg.kl_estimator)
    advantages, returns = advantages_and_returns(rewards, old_values, mask, pcfg)
    start = ({k: v.clone() for k, v in agent.state_dict().items()},
             copy.deepcopy(algo.optimizer.state_dict()))
    cfgs = {v: replace(pcfg, **UPDATE_VARIANTS[v]) for v in variants}
    models = {v: update_model(agent, c) for v, c in cfgs.items()}
    mb_size = max(1, pcfg.num_envs // pcfg.num_minibatches)

    def update(v: str) -> tuple[float, float]:
        """-> (seconds, mean policy loss) of one update from the start state."""
        agent.load_state_dict(start[0])
        algo.optimizer.load_state_dict(start[1])
        t0 = time.perf_counter()
        stats = ppo_update(models[v], algo.optimizer, ro, mask, old_logp, old_values,
                           advantages, returns, cfgs[v], torch.Generator().manual_seed(0), 1,
                           None, s.tokenizer.pad_id)
        return time.perf_counter() - t0, float(np.mean(stats["pg"]))

    def row_steps(v: str) -> int:
        """The (row, column) pairs the update's forwards compute: same minibatches."""
        gen, total = torch.Generator().manual_seed(0), 0
        for _ in range(pcfg.update_epochs):
            for mb in minibatches(ro, mb_size, gen, cfgs[v].bucket_by_length):
                first, width = (trimmed_columns(ro.prompt_mask[mb], ro.response_mask[mb])
                                if cfgs[v].trim_padding else (0, ro.response_mask.shape[1]))
                total += len(mb) * (ro.prompt_mask.shape[1] - first + width)
        return total

    warmup, losses = {}, {}
    for v in variants:  # warm-up; the compiled model's first update compiles it
        warmup[v], losses[v] = update(v)
    times: dict[str, list[float]] = {v: [] for v in variants}
    rates = []
    for rep in range(repeats):
        rates.append(matmul_flop_rate(cfg.matmul_size, 1))
        for v in (variants if rep % 2 == 0 else variants[::-1]):
            times[v].append(update(v)[0])
    rate = median(rates)
    real = pcfg.update_epochs * int(ro.prompt_mask.sum() + ro.response_mask.sum())
    P = num_params(agent)
    figures: dict[str, float] = {}
    for v in variants:
        sec = median(times[v])
        figures[f"update_{v}_s"] = sec
        figures[f"update_{v}_flop_utilisation_real_tokens"] = flop_utilisation(
            P, real, sec, rate, 6)
        figures[f"update_{v}_flop_utilisation_all_row_steps"] = flop_utilisation(
            P, row_steps(v), sec, rate, 6)
    speedups = {"update_trim_speedup": ("baseline", "trim"),
                "update_bucket_speedup": ("trim", "bucket"),
                "update_bf16_speedup": ("trim", "bf16"),
                "update_compile_speedup": ("trim", "compile")}
    for key, (a, b) in speedups.items():
        if a in times and b in times:
            figures[key] = figures[f"update_{a}_s"] / figures[f"update_{b}_s"]
    if "trim" in variants:  # the default configuration's
        figures["update_flop_utilisation_real_tokens"] = (
            figures["update_trim_flop_utilisation_real_tokens"])
    if "compile" in variants:
        figures["update_compile_warmup_s"] = warmup["compile"]
    details = {"update_variants": list(variants), "update_real_tokens": real,
               "update_matmul_gflops": rate / 1e9,
               "update_rollout_width": int(ro.prompt_mask.shape[1] + ro.response_mask.shape[1]),
               "update_row_steps": {v: row_steps(v) for v in variants},
               "update_mean_pg_loss": losses}
    return figures, details


# ---- 6: LM-PPO to the gold target (subprocess) ----------------------------------------------
_CHILD = """
import json, sys
from agents.ppo import PPOConfig, train
train(PPOConfig(**json.loads(sys.argv[1])))
"""


def _vm_hwm_mb(pid: int) -> float | None:
    """Peak RSS of a running process (Linux /proc), MB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def ppo_time_to_target(assets_dir: str, target: float, *, threads: int, eval_every: int,
                       timeout: float, overrides: dict | None = None) -> tuple[dict, dict]:
    """Run agents.ppo.train (default PPOConfig except run_dir, eval_every, threads, progress,
    tensorboard and `overrides`) in a subprocess; stop it once eval/gold_mean >= target.

    Returns figures (empty if not reached) and details (target, best gold seen, reason)."""
    run_dir = Path(tempfile.mkdtemp(prefix="textenv_bench_ppo_"))
    kwargs = {"assets_dir": str(assets_dir), "run_dir": str(run_dir), "eval_every": eval_every,
              "threads": threads, "progress": False, "tensorboard": False,
              **(overrides or {})}
    log_path, metrics_path = run_dir / "train.log", run_dir / "metrics.csv"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    t0 = time.perf_counter()
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen([sys.executable, "-c", _CHILD, json.dumps(kwargs)], cwd=ROOT,
                                env=env, stdout=log_file, stderr=subprocess.STDOUT)
    reached, rusage, status, hwm = None, None, None, None
    seen_evals, best = 0, -math.inf
    rows: list[dict] = []
    try:
        while True:  # poll metrics.csv (written atomically after every iteration)
            pid, st, ru = os.wait4(proc.pid, os.WNOHANG)
            if pid == proc.pid:
                rusage, status = ru, st
            else:
                hwm = _vm_hwm_mb(proc.pid) or hwm
            rows = read_metrics_csv(metrics_path) if metrics_path.exists() else []
            evals = [r for r in rows if "eval/gold_mean" in r]
            for r in evals[seen_evals:]:
                best = max(best, r["eval/gold_mean"])
                log(f"  PPO iteration {int(r['iteration'])}: held-out gold "
                    f"{r['eval/gold_mean']:.3f} (target {target:.3f}), "
                    f"{time.perf_counter() - t0:.0f} s")
                if reached is None and r["eval/gold_mean"] >= target:
                    reached = (r, time.perf_counter() - t0)
            seen_evals = len(evals)
            if reached is not None or rusage is not None:
                break
            if time.perf_counter() - t0 > timeout:
                log(f"  PPO-to-target: timeout after {timeout:.0f} s")
                break
            time.sleep(0.5)
    finally:
        if rusage is None:
            proc.send_signal(signal.SIGTERM)
            try:
                _, status, rusage = os.wait4(proc.pid, 0)
            except ChildProcessError:
                pass
        proc.returncode = 0 if status is None else os.waitstatus_to_exitcode(status)
    peak = max(x for x in (hwm, rusage.ru_maxrss / 1024 if rusage else None, 0.0)
               if x is not None)
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # keep metrics.csv and the log
    final_path = run_dir / "final_eval.json"
    if reached is None and rusage is not None and final_path.exists() and rows:
        final = json.loads(final_path.read_text())  # the evaluation after the budget
        best = max(best, final.get("eval/gold_mean", -math.inf))
        if final.get("eval/gold_mean", -math.inf) >= target:
            reached = ({**rows[-1], **final}, time.perf_counter() - t0)
    details = {"ppo_target_gold": target, "ppo_best_eval_gold": best,
               "ppo_eval_every": eval_every, "ppo_run_dir": str(run_dir),
               "ppo_config_overrides": overrides or {}}
    if reached is None:
        tail = log_path.read_text()[-2000:] if log_path.exists() else ""
        finished = status is not None and proc.returncode == 0
        why = ("the default budget ended" if finished else
               f"timeout after {timeout:.0f} s" if proc.returncode in (0, -signal.SIGTERM)
               else f"the run failed (exit {proc.returncode}):\n{tail}")
        details["ppo_to_target_skipped"] = (f"target gold {target:.3f} not reached "
                                            f"(best {best:.3f}): {why}")
        details["ppo_peak_rss_mb_partial"] = peak
        return {}, details
    row, process_s = reached
    # Training time: every timed phase of the iterations up to the target (no evaluations).
    train_s = sum(v for r in rows if r["iteration"] <= row["iteration"]
                  for k, v in r.items() if k.startswith("time/"))
    return ({"ppo_time_to_target_s": row["charts/wall_clock"],
             "ppo_to_target_train_s": train_s,
             "ppo_to_target_process_s": process_s,
             "ppo_to_target_env_steps": row["charts/env_steps"],
             "ppo_to_target_iterations": row["iteration"],
             "ppo_peak_rss_mb": peak}, details)


# ---- 7: generation FLOP utilisation -------------------------------------------------------------
def generation_flop_utilization(cfg: BenchConfig, policy, tokenizer, task,
                                repeats: int, rate: float) -> tuple[dict, dict]:
    """Bare generation (GPT.generate) at batch gen_batch: generated tokens x 2 x params
    FLOPs, over the float32 matmul FLOP rate (the figure of earlier runs; figure 9 splits
    it into prefill and decoding)."""
    prompts = sample_prompts(task, cfg.gen_batch, cfg.seed + 6)
    ids, mask = pad_left([encode_prompt(tokenizer, p) for p in prompts], tokenizer.pad_id)
    tokens_per_s = []
    for rep in range(1 + repeats):  # rep 0: a short warm-up
        g = torch.Generator().manual_seed(cfg.seed + 2000 + rep)
        t0 = time.perf_counter()
        out = policy.generate(ids, mask, cfg.max_new_tokens if rep else 4,
                              eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id,
                              temperature=1.0, generator=g)
        dt = time.perf_counter() - t0
        if rep:
            tokens_per_s.append(int(out["response_mask"].sum()) / dt)
    tps = median(tokens_per_s)
    return {"bare_generation_tokens_per_s_b256": tps,
            "generation_flop_utilization": tps * 2 * policy.num_params() / rate}, {}


# ---- 9: decoding at batch 256, at 1 and at 2 threads; Hugging Face generate ---------------------
def hf_copy(policy):
    """The policy as a Hugging Face GPT2LMHeadModel with the same weights (same
    architecture: pre-LayerNorm blocks, exact GELU, learned positions, tied embeddings),
    or None when transformers is not installed."""
    try:
        from transformers import GPT2Config, GPT2LMHeadModel
    except ImportError:
        return None
    c = policy.config
    hf = GPT2LMHeadModel(GPT2Config(
        vocab_size=c.vocab_size, n_positions=c.block_size, n_embd=c.n_embd, n_layer=c.n_layer,
        n_head=c.n_head, activation_function="gelu", resid_pdrop=0.0, embd_pdrop=0.0,
        attn_pdrop=0.0, layer_norm_epsilon=1e-5, tie_word_embeddings=c.tie_embeddings,
        bos_token_id=None, eos_token_id=None, pad_token_id=None)).eval()
    sd = policy.state_dict()
    zeros = torch.zeros  # the biases of a bias=False config
    weights = {"transformer.wte.weight": sd["tok_emb.weight"],
               "transformer.wpe.weight": sd["pos_emb.weight"],
               "transformer.ln_f.weight": sd["ln_f.weight"],
               "transformer.ln_f.bias": sd.get("ln_f.bias", zeros(c.n_embd)),
               "lm_head.weight": sd["lm_head.weight"]}
    for i in range(c.n_layer):
        for ours, theirs, conv1d in (("ln1", "ln_1", False), ("ln2", "ln_2", False),
                                     ("attn.qkv", "attn.c_attn", True),
                                     ("attn.proj", "attn.c_proj", True),
                                     ("mlp.0", "mlp.c_fc", True), ("mlp.2", "mlp.c_proj", True)):
            w = sd[f"blocks.{i}.{ours}.weight"]  # Linear (out, in); GPT-2's Conv1D is (in, out)
            weights[f"transformer.h.{i}.{theirs}.weight"] = w.t().contiguous() if conv1d else w
            weights[f"transformer.h.{i}.{theirs}.bias"] = sd.get(f"blocks.{i}.{ours}.bias",
                                                                 zeros(w.shape[0]))
    hf.load_state_dict(weights, strict=False)  # (only buffers such as attention masks remain)
    return hf


def hf_generated_tokens(new_ids: torch.Tensor, eos_id: int) -> int:
    """Real tokens in Hugging Face generate's new tokens (B, T): up to each row's eos."""
    is_eos = (new_ids == eos_id).long()
    return int(((is_eos.cumsum(1) - is_eos) == 0).sum())


@torch.no_grad()
def decode_phases(cfg: BenchConfig, policy, tokenizer, task, repeats: int) -> tuple[dict, dict]:
    """Bare generation at batch gen_batch split into the prompts' prefill and the decode
    steps (the `Decoder` loop that GPT.generate runs), at 1 and at 2 threads (and
    --threads), each against the matmul rate measured at that thread count. Real tokens:
    the tokens fed for rows still generating (the decoder computes only those rows); all
    row-steps: batch x decode steps, what a decoder that keeps finished rows computes. With
    transformers installed, Hugging Face generate on a converted copy of the same weights
    runs interleaved with GPT.generate (seconds per generated token, each side's own
    samples)."""
    prompts = sample_prompts(task, cfg.gen_batch, cfg.seed + 7)
    ids, mask = pad_left([encode_prompt(tokenizer, p) for p in prompts], tokenizer.pad_id)
    B, P, eos = ids.shape[0], policy.num_params(), tokenizer.eos_id
    hf = hf_copy(policy)
    details: dict[str, Any] = {"hf_generate": "ran" if hf is not None else
                               "skipped: transformers is not installed"}
    if hf is not None:
        with torch.no_grad():
            pos = (mask.long().cumsum(1) - 1).clamp(min=0)
            diff = (policy(ids, mask) - hf(input_ids=ids, attention_mask=mask.long(),
                                            position_ids=pos).logits)[mask].abs().max()
        details["hf_max_logit_diff"] = float(diff)  # the copy computes the same model

    def ours(seed: int, probe: bool = False, fused: bool | None = None) -> dict:
        """One generation, timed. probe: after each decode step, also time a plain sum over
        the keys and values that step read (that run's times are not used). fused: as
        Decoder's (None: the fused step where it applies; False: PyTorch)."""
        g = torch.Generator().manual_seed(seed)
        t0 = time.perf_counter()
        dec = Decoder(policy, ids, mask, cfg.max_new_tokens, pad_id=tokenizer.pad_id,
                      generator=g, fused=fused)  # the prefill
        t1 = time.perf_counter()
        done = torch.zeros(B, dtype=torch.bool)
        steps = fed = generated = 0
        per_step = []  # with probe: (rows fed, seconds to read their keys and values)
        while True:
            tok, _ = dec.sample()
            generated += B - int(done.sum())
            ended = ~done & (tok == eos)
            done |= ended
            if not dec.advance(tok, ended):
                break
            steps, fed = steps + 1, fed + dec.batch_size
            if probe:
                per_step.append((dec.batch_size, kv_read_seconds(
                    dec.cache, dec.rows if dec.fused is not None else None)))
        t2 = time.perf_counter()
        return {"prefill": t1 - t0, "decode": t2 - t1, "steps": steps, "fed": fed,
                "generated": generated, "per_step": per_step}

    def theirs(seed: int) -> dict:
        torch.manual_seed(seed)
        t0 = time.perf_counter()
        out = hf.generate(input_ids=ids, attention_mask=mask.long(), do_sample=True, top_k=0,
                          max_new_tokens=cfg.max_new_tokens, eos_token_id=eos,
                          pad_token_id=tokenizer.pad_id)
        seconds = time.perf_counter() - t0
        return {"seconds": seconds,
                "generated": hf_generated_tokens(out[:, ids.shape[1]:], eos)}

    def pytorch(seed: int) -> dict:
        return ours(seed, fused=False)

    fused = fused_decode.unusable_reason(policy) is None
    details["fused_decode"] = (f"on, {fused_decode.library().simd_width()}-float vectors"
                               if fused else f"off: {fused_decode.unusable_reason(policy)}")
    figures: dict[str, float] = {}
    dead = []
    for threads in sorted({1, 2, cfg.threads}):
        torch.set_num_threads(threads)
        rate = matmul_flop_rate(cfg.matmul_size, repeats)
        runs = {"ours": [], "hf": [], "pytorch": []}
        for rep in range(1 + repeats):  # rep 0 is the warm-up
            sides = ([("ours", ours)] + ([("pytorch", pytorch)] if fused else [])
                     + ([("hf", theirs)] if hf is not None else []))
            for name, fn in (sides if rep % 2 == 0 else sides[::-1]):
                r = fn(cfg.seed + 3000 + rep)
                if rep:
                    runs[name].append(r)
        o = {k: median([r[k] for r in runs["ours"]]) for k in runs["ours"][0]
             if k != "per_step"}
        # The bound: each step at least reads its keys and values (float32, as fast as a
        # plain sum reads them) and multiplies its rows by the weights at the matmul rate.
        probe = ours(cfg.seed + 3001, probe=True)
        matmul_s, read_s = zip(*[(2 * P * rows / rate, read) for rows, read in
                                 probe["per_step"]])
        bound_s = sum(map(max, matmul_s, read_s))  # for probe["fed"] real tokens
        dead += [1 - r["fed"] / (B * r["steps"]) for r in runs["ours"] if r["steps"]]
        prompt_real = int(mask.sum())
        t = f"_{threads}t"
        figures.update({
            f"matmul_gflops{t}": rate / 1e9,
            f"decode_flop_utilisation_real_tokens_b256{t}":
            flop_utilisation(P, o["fed"], o["decode"], rate),
            f"decode_flop_utilisation_all_row_steps_b256{t}":
            flop_utilisation(P, B * o["steps"], o["decode"], rate),
            f"prefill_flop_utilisation_real_tokens_b256{t}":
            flop_utilisation(P, prompt_real, o["prefill"], rate),
            f"prefill_flop_utilisation_all_row_steps_b256{t}":
            flop_utilisation(P, ids.numel(), o["prefill"], rate),
            f"decode_bound_flop_utilisation_real_tokens_b256{t}": sum(matmul_s) / bound_s,
            f"decode_vs_bound_ratio_b256{t}":  # seconds per real token, bound / measured
            (bound_s / probe["fed"]) / (o["decode"] / o["fed"]),
        })
        details.update({f"decode_s{t}": o["decode"], f"decode_bound_s{t}": bound_s,
                        f"decode_matmul_s_at_rate{t}": sum(matmul_s),
                        f"decode_kv_read_s{t}": sum(read_s)})
        if runs["pytorch"]:  # the same decoder, its steps and sampling in PyTorch ops
            p = {k: median([r[k] for r in runs["pytorch"]]) for k in ("decode", "fed")}
            figures[f"decode_fused_vs_pytorch_ratio{t}"] = \
                (p["decode"] / p["fed"]) / (o["decode"] / o["fed"])
            details[f"decode_pytorch_s{t}"] = p["decode"]
        if runs["hf"]:
            s_ours = median([(r["prefill"] + r["decode"]) / r["generated"] for r in runs["ours"]])
            s_hf = median([r["seconds"] / r["generated"] for r in runs["hf"]])
            figures[f"decode_vs_hf_generate_ratio{t}"] = s_hf / s_ours
        log(f"  {threads} thread(s): decode FLOP utilisation "
            f"{figures[f'decode_flop_utilisation_real_tokens_b256{t}']:.3f} (real tokens)"
            + (f", vs HF generate {figures[f'decode_vs_hf_generate_ratio{t}']:.2f}x"
               if runs["hf"] else ""))
    torch.set_num_threads(cfg.threads)
    at = f"_{cfg.threads}t"  # the headline figures: at --threads
    for key in ("decode_flop_utilisation_real_tokens_b256",
                "decode_flop_utilisation_all_row_steps_b256",
                "prefill_flop_utilisation_real_tokens_b256", "decode_vs_hf_generate_ratio",
                "decode_bound_flop_utilisation_real_tokens_b256", "decode_vs_bound_ratio_b256",
                "decode_fused_vs_pytorch_ratio"):
        if key + at in figures:
            figures[key] = figures[key + at]
    figures["dead_row_fraction"] = median(dead) if dead else 0.0
    details.update({"decode_batch": B, "decode_prompt_width": ids.shape[1],
                    "decode_prompt_real_tokens": int(mask.sum())})
    return figures, details


# ---- 8: machine --------------------------------------------------------------------------------
def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux), or what `platform` says elsewhere."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    """What makes two runs' numbers comparable: the CPU, its vector instructions as torch
    dispatches them (e.g. AVX2, AVX512), the threads and the OpenMP wait settings."""
    return {"cores": os.cpu_count(), "cpu": cpu_model(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "torch_version": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "python_version": platform.python_version(),
            "platform": platform.platform(),
            "load_avg_1min": os.getloadavg()[0],
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
            "gomp_spincount": os.environ.get("GOMP_SPINCOUNT", "")}


def busy_warning(threads: int) -> str | None:
    """A warning when other processes already keep the cores busy (1-minute load average)."""
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    if load + threads <= cores + 0.5:
        return None
    msg = (f"machine busy: load average {load:.1f} on {cores} cores before the bench; "
           f"timings are noisy")
    if threads > 1 and os.environ.get("OMP_WAIT_POLICY", "").upper() != "PASSIVE":
        msg += (f", and {threads} spinning OpenMP threads on oversubscribed cores can make "
                f"small ops many times slower (for development numbers use --threads 1 or "
                f"set OMP_WAIT_POLICY=PASSIVE)")
    return msg


# ---- the run -----------------------------------------------------------------------------------
def run(cfg: BenchConfig) -> dict:
    """Run every measurement; returns {"figures", "details", "machine", "config", "skipped"}."""
    global _PROGRESS
    _PROGRESS = cfg.progress
    t_start = time.perf_counter()
    sz = sizes(cfg)
    for name in ("threads", "num_envs", "max_new_tokens", "kv_batch", "kv_new_tokens",
                 "gen_batch", "matmul_size", "ppo_eval_every"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(cfg, name)}")
    for name, value in sz.items():
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    assets = Path(cfg.assets_dir)
    if not (assets / "sft.safetensors").is_file() or not (assets / "tokenizer.json").is_file():
        raise FileNotFoundError(
            f"no SFT policy/tokenizer in {assets}: build the assets (`make assets`) or pass "
            f"--assets-dir (e.g. a dev build such as /tmp/tiny_assets)")
    torch.set_num_threads(cfg.threads)
    reward, has_rm = resolve_reward(cfg)
    warning = busy_warning(cfg.threads)
    if warning:
        log(f"WARNING: {warning}")
    k = sz["repeats"]
    tokenizer = load_tokenizer(assets)
    policy = load_reference(assets).eval()  # the SFT policy, frozen
    task = make_task("reviews")
    figures: dict[str, float] = {}
    details: dict[str, Any] = {"reward": reward, "learned_reward_model_present": has_rm,
                               "mode": "quick" if cfg.quick else "full", **sz,
                               "model_params": policy.num_params(),
                               "load_avg_1min_start": os.getloadavg()[0],
                               "warnings": [warning] if warning else []}
    skipped: dict[str, str] = {}
    log(f"assets {assets} | reward '{reward}' | threads {torch.get_num_threads()} | "
        f"{details['mode']} run, median of {k}")

    def measure(what: str, fn, *args) -> None:
        log(what)
        f, d = fn(*args)
        figures.update(f)
        details.update(d)

    measure(f"figure 1, single env: {k} x {sz['single_env_steps']} random steps",
            single_env_throughput, cfg, reward, sz["single_env_steps"], k)
    measure(f"figure 2, vector env N={cfg.num_envs}: {k} x {sz['vector_env_steps']} random "
            f"steps, plain and under VectorKLPenalty",
            vector_env_throughput, cfg, reward, sz["vector_env_steps"], k)
    figures["vector_vs_single_speedup"] = (figures["vector_env_tokens_per_s_n64"]
                                           / figures["single_env_steps_per_s"])
    log(f"figure 7, matmul {cfg.matmul_size}^3 FLOP rate at {cfg.threads} thread(s)")
    rate = matmul_flop_rate(cfg.matmul_size, k)  # for every phase's FLOP utilisation
    figures["matmul_gflops"] = rate / 1e9
    measure(f"figure 3, rollout through the vector env vs bare generation: {k} pairs",
            rollout_vs_bare_generation, cfg, reward, policy, tokenizer, task, k, rate)
    measure(f"figure 4, KV cache vs recomputation: {k} pairs",
            kv_cache_speedup, cfg, policy, tokenizer, task, k, rate)
    measure(f"figure 5, LM-PPO iteration: 1 warm-up + {sz['ppo_iterations']}",
            ppo_iteration_phases, cfg, reward, sz["ppo_iterations"], rate)
    torch.set_num_threads(cfg.threads)  # (PPO's setup sets the same; be explicit)
    measure(f"figure 7, bare generation at batch {cfg.gen_batch}",
            generation_flop_utilization, cfg, policy, tokenizer, task, k, rate)
    measure(f"figure 9, prefill and decoding at batch {cfg.gen_batch}, threads "
            f"{sorted({1, 2, cfg.threads})}, each against its own matmul rate",
            decode_phases, cfg, policy, tokenizer, task, k)
    variants = ("baseline", "trim", "bucket")
    variants += ("bf16",) if bf16_supported(torch.device("cpu")) else ()
    variants += ("compile",) if cfg.update_compile and not cfg.quick else ()
    measure(f"figure 10, the LM-PPO update: {', '.join(variants)}; 1 warm-up + {k} each, "
            f"interleaved", update_options, cfg, reward, k, variants)
    if "bf16" not in variants:
        skipped["update_bf16"] = "skipped: this CPU has no bfloat16 support"
    if "compile" not in variants:
        skipped["update_compile"] = ("skipped: --quick" if cfg.quick
                                     else "skipped: --no-update-compile")
    figures["bench_peak_rss_mb"] = peak_rss_mb()

    # Figure 6 last: it gets what is left of the full run's 10 minutes.
    if cfg.quick or not cfg.ppo_to_target:
        skipped["ppo_to_target"] = ("skipped: --quick" if cfg.quick
                                    else "skipped: --no-ppo-to-target")
    elif not has_rm:
        skipped["ppo_to_target"] = (f"skipped: no learned reward model in {assets} "
                                    f"(reward.safetensors/reward.json); the default PPOConfig "
                                    f"trains on it")
    elif not (assets / "quality.json").is_file():
        skipped["ppo_to_target"] = f"skipped: no quality.json (sft_gold_mean) in {assets}"
    else:
        g0 = float(read_quality(assets)["sft_gold_mean"])
        target = g0 + 0.5 * (1 - g0)
        budget = (cfg.ppo_timeout if cfg.ppo_timeout is not None
                  else max(30.0, 580 - (time.perf_counter() - t_start)))
        measure(f"figure 6, LM-PPO (default PPOConfig) to held-out gold {target:.3f} "
                f"(g0 = {g0:.3f}), timeout {budget:.0f} s",
                lambda: ppo_time_to_target(str(assets), target, threads=cfg.threads,
                                           eval_every=cfg.ppo_eval_every, timeout=budget))
        details["ppo_sft_gold_mean"] = g0
        if "ppo_to_target_skipped" in details:
            skipped["ppo_to_target"] = details["ppo_to_target_skipped"]
    if "ppo_to_target" in skipped:
        log(f"figure 6, PPO-to-target {skipped['ppo_to_target']}")
    details["bench_seconds"] = time.perf_counter() - t_start
    return {"figures": figures, "details": details, "machine": machine_info(),
            "config": asdict(cfg), "skipped": skipped}


# ---- output ------------------------------------------------------------------------------------
def _fmt(x) -> str:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return str(x)
    if x == 0 or not math.isfinite(x):
        return str(x)
    a = abs(x)
    if a >= 1e5:
        return f"{x:,.0f}"
    if a >= 100:
        return f"{x:.0f}"
    if a >= 1:
        return f"{x:.2f}"
    return f"{x:.3g}"


def markdown_table(result: dict) -> str:
    f, d, m, c = result["figures"], result["details"], result["machine"], result["config"]
    n = d.get("ppo_num_envs", c["num_envs"])
    goal = lambda key: f"design goal {DESIGN_GOALS[key]}"

    def util(key: str) -> str:
        """A phase's FLOP utilisation, counting real tokens and all row-steps."""
        real = f.get(f"{key}_flop_utilisation_real_tokens")
        rows = f.get(f"{key}_flop_utilisation_all_row_steps")
        if real is None:
            return ""
        return (f"FLOP utilisation {_fmt(real)} (real tokens)"
                + (f", {_fmt(rows)} (all row-steps)" if rows is not None else ""))

    rows = [
        ("1", f"single env steps/s (random actions, reward '{d['reward']}')",
         f.get("single_env_steps_per_s"), ""),
        ("2", f"vector env tokens/s, N={n} (random actions)",
         f.get("vector_env_tokens_per_s_n64"),
         f"{_fmt(f.get('vector_vs_single_speedup'))}x single env"),
        ("2", f"  same under VectorKLPenalty(kl_coef=0.05) with 6% EOS (autoresets), N={n}",
         f.get("vector_env_kl_autoreset_tokens_per_s_n64"), "the reference policy every step"),
        ("3", f"bare generation tokens/s, N={n}", f.get("bare_generation_tokens_per_s_n64"),
         util("bare_generation")),
        ("3", f"rollout through vector env tokens/s, N={n}", f.get("rollout_tokens_per_s_n64"),
         f"without scoring: {util('rollout_excl_scoring')}"),
        ("3", "rollout vs bare generation (bare s/token / rollout s/token)",
         f.get("rollout_vs_bare_generation_ratio"), ""),
        ("3", "  same, rollout without in-env reward scoring",
         f.get("rollout_vs_bare_generation_ratio_excl_scoring"),
         f"scoring {_fmt(f.get('rollout_scoring_s'))} s/rollout"
         + (f"; {util('rollout_scoring')}" if "rollout_scoring_flop_utilisation_real_tokens"
            in f else "")),
        ("3", "  rollout vs bare generation + the same scoring in one batch",
         f.get("rollout_vs_generate_then_score_ratio"),
         f"{goal('rollout_vs_generate_then_score_ratio')}; one batch "
         f"{_fmt(f.get('rollout_scoring_one_batch_s'))} s/rollout"),
        ("3", "  bare generation + scoring in one batch vs bare generation",
         f.get("generate_then_score_vs_bare_generation_ratio"),
         "ceiling of the rollout ratio while the reward model runs after generation"),
        ("4", f"decode {d.get('kv_new_tokens')} tokens at batch {d.get('kv_batch')}, KV cache (s)",
         f.get("kv_cache_decode_s"), util("kv_cache_decode")),
        ("4", "  same, full recomputation (s)", f.get("no_cache_decode_s"), ""),
        ("4", "KV-cache speedup", f.get("kv_cache_speedup"), goal("kv_cache_speedup")),
        ("5", "LM-PPO iteration (s)", f.get("ppo_iteration_s"),
         "rollout + reference + old log-probs + advantages + update"),
    ]
    for key, label in (("rollout_excl_scoring", "rollout without scoring"),
                       ("scoring", "reward scoring (in env)"),
                       ("reference", "reference log-probs"),
                       ("old_logprobs", "old log-probs and values"),
                       ("advantages", "KL-shaped rewards, GAE"), ("update", "update")):
        frac = f.get(f"ppo_{key}_fraction")
        note = f"{100 * frac:.1f}% of the iteration" if frac is not None else ""
        if key == "update" and "ppo_minibatch_updates" in d:
            done, most = d["ppo_minibatch_updates"], d["ppo_minibatch_updates_max"]
            note += (f"; {done:g}/{most} minibatch updates"
                     + (" (target_kl stopped early)" if done < most else ""))
        if util(f"ppo_{key}"):
            note += f"; {util(f'ppo_{key}')}"
        rows.append(("5", f"  {label} (s)", f.get(f"ppo_{key}_s"), note))
    rows += [
        ("5", "  scoring the same responses in one batch (s)", f.get("ppo_scoring_one_batch_s"),
         ""),
        ("5", "reference + scoring fraction", f.get("ref_plus_scoring_fraction"),
         goal("ref_plus_scoring_fraction")),
    ]
    if "ppo_time_to_target_s" in f:
        rows += [
            ("6", f"LM-PPO to held-out gold {d['ppo_target_gold']:.3f}: wall-clock (s)",
             f["ppo_time_to_target_s"],
             f"iteration {int(f['ppo_to_target_iterations'])}, "
             f"{int(f['ppo_to_target_env_steps'])} env steps, evals every "
             f"{d['ppo_eval_every']} it. included"),
            ("6", "  training only, without evaluations (s)", f["ppo_to_target_train_s"], ""),
            ("6", "  process, incl. start-up (s)", f["ppo_to_target_process_s"], ""),
            ("6", "  peak RSS of that run (MB)", f["ppo_peak_rss_mb"], ""),
        ]
    else:
        rows.append(("6", "LM-PPO to gold target", None,
                     result["skipped"].get("ppo_to_target", "").split("\n")[0]))
    rows += [
        ("7", "float32 matmul GFLOP/s", f.get("matmul_gflops"), f"{c['matmul_size']}^3"),
        ("7", f"bare generation tokens/s, batch {c['gen_batch']}",
         f.get("bare_generation_tokens_per_s_b256"), f"{d['model_params']:,} params"),
        ("7", "generation FLOP utilisation (2 x params FLOPs/token)",
         f.get("generation_flop_utilization"), "fraction of matmul rate, generated tokens"),
    ]
    for t in sorted({1, 2, m["torch_threads"]}):
        x = {key: f.get(f"{key}_{t}t") for key in (
            "matmul_gflops", "decode_vs_hf_generate_ratio",
            "prefill_flop_utilisation_real_tokens_b256",
            "prefill_flop_utilisation_all_row_steps_b256",
            "decode_flop_utilisation_real_tokens_b256",
            "decode_flop_utilisation_all_row_steps_b256",
            "decode_bound_flop_utilisation_real_tokens_b256", "decode_vs_bound_ratio_b256",
            "decode_fused_vs_pytorch_ratio")}
        hf = x["decode_vs_hf_generate_ratio"]
        rows += [
            ("9", f"{t} thread(s): float32 matmul GFLOP/s", x["matmul_gflops"], ""),
            ("9", f"  prefill FLOP utilisation, batch {c['gen_batch']} (real tokens)",
             x["prefill_flop_utilisation_real_tokens_b256"],
             f"{_fmt(x['prefill_flop_utilisation_all_row_steps_b256'])} (all row-steps)"),
            ("9", f"  decode FLOP utilisation, batch {c['gen_batch']} (real tokens)",
             x["decode_flop_utilisation_real_tokens_b256"],
             f"{_fmt(x['decode_flop_utilisation_all_row_steps_b256'])} (all row-steps); "
             + goal("decode_flop_utilisation_real_tokens_b256")),
            ("9", "  bound on that utilisation (matmul rate + reading the float32 KV cache)",
             x["decode_bound_flop_utilisation_real_tokens_b256"],
             f"decode at {_fmt(x['decode_vs_bound_ratio_b256'])} of the bound's speed"),
            ("9", "  fused decode step vs the same steps in PyTorch ops (s/token ratio)",
             x["decode_fused_vs_pytorch_ratio"], d.get("fused_decode", "")),
            ("9", "  GPT.generate vs Hugging Face generate (s/token ratio)", hf,
             goal("decode_vs_hf_generate_ratio") if hf is not None
             else d.get("hf_generate", "")),
        ]
    rows += [
        ("9", "dead-row fraction (row-steps on finished rows without compaction)",
         f.get("dead_row_fraction"), "the decoder drops those rows"),
    ]
    labels = {"baseline": "whole padded width", "trim": "trimmed to each minibatch (default)",
              "bucket": "trim + length-bucketed minibatches", "bf16": "trim + bf16 autocast",
              "compile": "trim + torch.compile"}
    speedups = {"trim": "update_trim_speedup", "bucket": "update_bucket_speedup",
                "bf16": "update_bf16_speedup", "compile": "update_compile_speedup"}
    for v, label in labels.items():
        if f"update_{v}_s" not in f:
            continue
        note = util(f"update_{v}")
        if v in speedups:
            note += f"; {_fmt(f[speedups[v]])}x " + ("the whole width" if v == "trim"
                                                       else "trim alone")
        if v == "compile":
            note += f"; compiling: {_fmt(f['update_compile_warmup_s'])} s (first update)"
        rows.append(("10", f"LM-PPO update (s), {label}" if v == "baseline"
                     else f"  {label} (s)", f[f"update_{v}_s"], note))
    rows += [
        ("", "peak RSS of the bench process (MB)", f.get("bench_peak_rss_mb"), ""),
        ("8", "machine", None,
         f"{m['cores']} cores ({m.get('cpu', '?')}, {m.get('cpu_capability', '?')}), "
         f"torch {m['torch_version']} ({m['torch_threads']} threads"
         + (f", OMP_WAIT_POLICY={m['omp_wait_policy']}" if m.get("omp_wait_policy") else "")
         + (f", GOMP_SPINCOUNT={m['gomp_spincount']}" if m.get("gomp_spincount") else "")
         + f"), python {m['python_version']}"),
    ]
    lines = ["| # | figure | value | ratio / note |", "|---|---|---:|---|"]
    for num, label, value, note in rows:
        lines.append(f"| {num} | {label} | {'-' if value is None else _fmt(value)} | {note} |")
    lines.append("")
    lines.append(f"{d['mode']} run in {d['bench_seconds']:.0f} s; medians of "
                 f"{d['repeats']} interleaved repeats after warm-up; reward '{d['reward']}'"
                 + ("" if d["learned_reward_model_present"]
                    else " (no learned reward model in the assets)") + "; load average "
                 f"{d['load_avg_1min_start']:.1f} at start, {m['load_avg_1min']:.1f} at end.")
    lines += [f"WARNING: {w}" for w in d["warnings"]]
    return "\n".join(lines)


def main(cfg: BenchConfig) -> dict:
    """Run the bench, print the table (stdout), write the JSON when asked."""
    result = run(cfg)
    print(markdown_table(result))
    if cfg.json:
        path = Path(cfg.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2, default=str))
        log(f"wrote {path}")
    return result
