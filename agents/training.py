"""The loop every trained algorithm shares, and the setup it starts from.

An algorithm file (ppo.py, reinforce.py, ...) defines a config dataclass (a `RunConfig`
with its own fields) and a small class that follows the `Algorithm` protocol:

    class PPO:
        setup, policy, optimizer, modules           # what is evaluated and checkpointed
        def iteration(self, it, progress, timer) -> dict   # one rollout + one update
        def state_dict(self) -> dict                # JSON-able state (KL controller, ...)
        def load_state_dict(self, state) -> None

`run(algo, cfg, name)` then does the rest, the same way for every algorithm: iterations until
the env-step budget is spent, evaluation on held-out prompts, metrics.csv + TensorBoard,
checkpoint sets (`textenv.storage.Checkpoints`), `--resume` from the newest complete one,
Ctrl-C (finish the iteration, save, exit cleanly), a lock on the run directory, and a stop
naming the iteration when a loss or the weights stop being finite.

`timer("phase")` is how an iteration's phases are timed: the loop passes a `PhaseTimer`
(its totals become the `time/<phase>` metrics) and the benchmark passes its own.
"""

from __future__ import annotations

import copy
import math
import random
import signal
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Protocol

import gymnasium as gym
import numpy as np
import torch
from torch import nn

import textenv  # noqa: F401  (registers TextGen-v0)
from agents import distributed
from agents.distributed import World
from agents.evaluation import EvalSet, Evaluator
from agents.rollout import collect_rollout, make_envs
from textenv.assets import load_reference, load_tokenizer, resolve_assets_dir
from textenv.model import GPT, resolve_device
from textenv.runlog import Progress, RunLogger
from textenv.storage import (
    Checkpoints,
    RunDirLock,
    check_tensors,
    load_tensors,
    read_json,
    save_tensors,
    write_json,
)
from textenv.tasks import Task, make_task
from textenv.tokenizer import Tokenizer


@dataclass
class RunConfig:
    """Fields every algorithm shares (each algorithm's config extends this one)."""

    seed: int = 1
    """Seed for prompts, sampling and minibatch order."""
    task: str = "reviews"
    """Task to train on (its prompts, gold scorer and evaluation prompts)."""
    total_env_steps: int = 150_000
    """Budget in env steps (= generated tokens, summed over envs)."""
    run_dir: str = "runs/run"
    """Where metrics.csv, TensorBoard events and checkpoints go."""
    resume: bool = False
    """Continue from the newest complete checkpoint in run_dir/checkpoints."""
    checkpoint_every: int = 20
    """Save a checkpoint every this many iterations (and at the end / on Ctrl-C)."""
    eval_every: int = 10
    """Evaluate on the eval split every this many iterations (0: only at the end)."""
    eval_samples: int = 4
    """Samples per prompt of the final evaluation (every prompt of the eval and test
    splits, the same slots and sampling seed for every run)."""
    curve_eval_samples: int = 1
    """Samples per prompt of the evaluations every eval_every iterations (learning and
    gold-vs-KL curves)."""
    threads: int = 2
    """torch threads (2 suits the 2-core reference machine)."""
    tensorboard: bool = True
    """Write TensorBoard event files beside metrics.csv."""
    progress: bool = True
    """Show progress (a bar on a terminal, a line every ~10 s in a log)."""
    assets_dir: str | None = None
    """Directory of the SFT policy, tokenizer and reward model (default: the task's shipped
    assets, textenv/assets/TASK/)."""
    num_envs: int = 64
    """Responses per rollout (envs of the vector env), over all processes: under torchrun
    each process owns num_envs / nproc of them."""
    max_new_tokens: int | None = None
    """Response length limit (default: the task's own, 40 tokens for reviews; for a
    dialogue, the agent's tokens over all its turns)."""
    temperature: float = 1.0
    """Sampling temperature (log-probs are taken under it everywhere)."""
    reward: str = "learned"
    """Env reward: "learned" (reward model), "gold" or "ensemble"."""
    normalize_reward: bool = True
    """Divide the env reward by its standard deviation over SFT samples (measured at the
    start of the run), so that a KL coefficient means the same for the learned reward
    (std 1 by calibration), gold (std about 0.3) or a callable."""
    max_abs_weight: float = 1000.0
    """Divergence guard: stop (keeping the last good checkpoint) once any weight's magnitude
    exceeds this (the shipped SFT policy's largest is about 1.3)."""
    device: str = "auto"
    """Where the policy, reference, reward model and their tensors live: "cpu", "cuda",
    "cuda:N" or "auto" (cuda if available, else cpu). Under torchrun, "cuda"/"auto" give
    each process cuda:LOCAL_RANK."""
    autocast_bf16: bool = False
    """Run the update's forward under bfloat16 autocast (losses and log-probs stay float32);
    refused on a device without bfloat16 support. On the 2-core reference CPU it is slower
    than float32 (docs/performance.md, "The update")."""
    compile: bool = False
    """torch.compile the model the update runs (dynamic shapes: each minibatch has its own
    width). The first update pays 20-60 s of compilation; on the 2-core reference CPU it
    is no faster (docs/performance.md, "The update")."""


# ---- what every algorithm starts from --------------------------------------------------------
@dataclass
class Setup:
    """What every algorithm loads first: tokenizer, task, frozen reference, envs, RNGs."""

    tokenizer: Tokenizer
    task: Task
    reference: GPT
    envs: gym.vector.VectorEnv
    evaluator: Evaluator  # the fixed evaluation, shared by every run of this task and assets
    reward_scale: float  # multiplies the env reward in the RL objective (normalize_reward)
    prompt_rng: np.random.Generator
    generator: torch.Generator  # on the CPU whatever the device: one stream, saved as is
    device: torch.device = torch.device("cpu")
    world: World = World()  # this process's rank and the number of processes

    def sample_prompts(self, n: int, group_size: int = 1) -> list[str]:
        """This process's share of n training prompts (all of them with one process); each
        distinct prompt repeated `group_size` times in a row."""
        n = self.world.local_envs(n)
        if n % group_size:
            raise ValueError(f"each of the {self.world.size} processes gets {n} envs, not a "
                             f"multiple of the group size {group_size}")
        distinct = [self.task.sample_prompt(self.prompt_rng, "train")
                    for _ in range(n // group_size)]
        return [p for p in distinct for _ in range(group_size)]


def set_seed(seed: int) -> None:
    """Seed Python's `random`, NumPy and torch (CPU and, if present, CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def setup(cfg: RunConfig) -> Setup:
    torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    world = distributed.init(device)  # one process unless started by torchrun
    if device.type == "cuda" and world.size > 1 and device.index is None:
        device = torch.device("cuda", world.local_rank)  # one GPU per process
    if device.type == "cuda":
        torch.cuda.set_device(device)
    seed = world.seed(cfg.seed)  # rank 0: cfg.seed; other ranks: their own streams
    set_seed(seed)
    assets_dir = resolve_assets_dir(cfg.assets_dir, cfg.task)
    task = make_task(cfg.task, assets_dir)
    if cfg.max_new_tokens is None:  # resolved here, so config.json records the value used
        cfg.max_new_tokens = task.max_response_tokens
    envs = make_envs(world.local_envs(cfg.num_envs), task=cfg.task, reward=cfg.reward,
                     max_new_tokens=cfg.max_new_tokens, assets_dir=assets_dir,
                     device=str(device))
    evaluator = shared_evaluator(str(assets_dir), cfg.task, cfg.max_new_tokens, cfg.temperature,
                                 str(device))
    tokenizer, reference = load_tokenizer(assets_dir), load_reference(assets_dir, str(device))
    scale = 1.0 / sft_reward_std(reference, envs, task, cfg) if cfg.normalize_reward else 1.0
    return Setup(tokenizer, task, reference, envs, evaluator, scale,
                 np.random.default_rng(seed), torch.Generator().manual_seed(seed), device, world)


@torch.no_grad()
def sft_reward_std(reference: GPT, envs, task: Task, cfg: RunConfig) -> float:
    """Standard deviation of the env reward over SFT samples of fixed train prompts (two
    batches, own generator: the run's random streams are untouched)."""
    prompts = task.prompts("train")
    gen = torch.Generator().manual_seed(12345)
    scores = []
    for b in range(2):
        chunk = [prompts[(b * envs.num_envs + i) % len(prompts)] for i in range(envs.num_envs)]
        try:
            scores.append(collect_rollout(envs, reference, chunk,
                                          max_new_tokens=cfg.max_new_tokens,
                                          temperature=cfg.temperature, generator=gen,
                                          pad_id=envs.unwrapped.tokenizer.pad_id).scores)
        except Exception as e:
            e.add_note(f"(while measuring the scale of reward {cfg.reward!r} on SFT samples "
                       f"before training: normalize_reward)")
            raise
    std = torch.cat(scores).std().item()
    if not std > 1e-6:
        raise ValueError(f"the reward {cfg.reward!r} gives every SFT sample the same score "
                         f"(std {std}); set normalize_reward=False to train on it anyway")
    return std


@lru_cache(maxsize=4)
def shared_evaluator(assets_dir: str, task: str, max_new_tokens: int,
                     temperature: float, device: str = "cpu") -> Evaluator:
    """One Evaluator per (assets, task, length, temperature, device) in a process: the SFT
    policy's own samples (the win-rate baseline) are drawn once for all the runs of a
    comparison."""
    return Evaluator(load_reference(assets_dir, device), task=task, assets_dir=assets_dir,
                     max_new_tokens=max_new_tokens, temperature=temperature, device=device)


def final_evaluation(policy: GPT, s: Setup, cfg: RunConfig) -> dict:
    """The fixed evaluation on the eval and test splits (every prompt x eval_samples), with
    the win rate against the SFT policy: what every run reports at its end."""
    metrics, samples = {}, []
    for split in ("eval", "test"):
        result = s.evaluator(policy, EvalSet(split, cfg.eval_samples))
        samples += result.pop("samples") if split == "eval" else []
        metrics.update(result)
    return {**metrics, "samples": samples}


def curve_evaluation(policy: GPT, s: Setup, cfg: RunConfig) -> dict:
    """The evaluation every eval_every iterations: every eval-split prompt,
    curve_eval_samples times (eval/... metrics)."""
    result = s.evaluator(policy, EvalSet("eval", cfg.curve_eval_samples), win_rate=False)
    result.pop("samples")
    return result


def trainable_copy(model: GPT) -> GPT:
    """A trainable copy of a (frozen, shared) model: the policy starts as the SFT policy."""
    return copy.deepcopy(model).requires_grad_(True)


def bf16_supported(device: torch.device) -> bool:
    """Whether `device` runs bfloat16 matmuls natively (CUDA: the GPU says; CPU: oneDNN's
    check for the AVX-512 or AMX instructions its bfloat16 kernels need)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return False


def update_model(model: nn.Module, cfg: RunConfig) -> nn.Module:
    """The module an algorithm's update runs its forward on: `model` itself, or with
    `compile` its torch.compile'd view (same parameters). Checks `autocast_bf16` can run
    here; `forward_responses(..., bf16=cfg.autocast_bf16)` applies it."""
    device = next(model.parameters()).device
    if cfg.autocast_bf16 and not bf16_supported(device):
        raise ValueError(f"autocast_bf16=True: device {device} has no bfloat16 support "
                         f"(torch.backends.cpu.get_cpu_capability() = "
                         f"{torch.backends.cpu.get_cpu_capability()!r}); run without "
                         f"--autocast-bf16")
    # dynamic=True: one graph for every minibatch width, not one compilation per width.
    return torch.compile(model, dynamic=True) if cfg.compile else model


def adam(parameters, learning_rate: float) -> torch.optim.Adam:
    """The optimizer of every RL agent. fused: one kernel updates every tensor (a for-loop
    Adam costs about 5x more per step at these sizes)."""
    return torch.optim.Adam(parameters, lr=learning_rate, eps=1e-5, fused=True)


# ---- the protocol and the loop ---------------------------------------------------------------
Timer = Callable[[str], AbstractContextManager]
"""timer(name) -> a context manager around one phase of an iteration."""


class PhaseTimer:
    """Sums the wall-clock of named phases: `with timer("update"): ...`."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0


class Algorithm(Protocol):
    """What `run` needs from an algorithm."""

    setup: Setup  # tokenizer, task, frozen reference, envs, prompt RNG, torch generator
    policy: GPT  # the LM that writes responses (evaluated on held-out prompts)
    optimizer: torch.optim.Optimizer
    modules: dict[str, nn.Module]  # name -> module, saved in checkpoints

    def iteration(self, iteration: int, progress: float, timer: Timer) -> dict[str, float]:
        """One rollout and one update; `progress` is the fraction of the budget used.
        Returns the metrics, including `charts/env_steps_iter` (tokens generated)."""

    def state_dict(self) -> dict:
        """The algorithm's own state, JSON-able (KL controller, baselines). Weights, the
        optimizer and the RNGs are saved by `run`."""

    def load_state_dict(self, state: dict) -> None: ...


class DivergenceError(RuntimeError):
    """A loss, the weights or a gradient stopped being finite: the run stops, and the last
    good checkpoint is kept."""


def check_finite(loss: torch.Tensor, iteration: int) -> None:
    if not torch.isfinite(loss):
        raise DivergenceError(f"non-finite loss ({loss.item()}) at iteration {iteration}; "
                              f"the last good checkpoint is kept")


def rng_states(s: Setup) -> dict:
    """This process's random streams: the run's torch generator, torch's global one and
    the prompt sampler's."""
    return {"torch_generator": s.generator.get_state(), "torch_global": torch.get_rng_state(),
            "prompt_rng": s.prompt_rng.bit_generator.state}


def _rng_prefix(rank: int) -> str:
    return "rng." if rank == 0 else f"rng.rank{rank}."


def save_checkpoint(directory: Path, algo: Algorithm, state: dict,
                    rngs: list[dict] | None = None) -> None:
    """One checkpoint set into `directory`: weights (safetensors), optimizer state
    (torch.save, read back with weights_only=True), RNG states (`rngs`: every rank's, in
    rank order; default this process's), and state.json."""
    tensors = {f"{name}.{k}": v for name, m in algo.modules.items()
               for k, v in m.state_dict().items()}
    for rank, rng in enumerate(rngs or [rng_states(algo.setup)]):
        tensors[_rng_prefix(rank) + "torch_generator"] = rng["torch_generator"]
        tensors[_rng_prefix(rank) + "torch_global"] = rng["torch_global"]
    save_tensors(directory / "model.safetensors", tensors)
    torch.save(algo.optimizer.state_dict(), directory / "optimizer.pt")
    write_json(directory / "state.json", state)


def load_checkpoint(directory: Path, algo: Algorithm) -> dict:
    """Restore what `save_checkpoint` wrote (this rank's random streams); returns the trainer
    state (state.json). A missing, corrupt or mismatched file raises a ValueError naming it."""
    state = read_json(directory / "state.json", "checkpoint state")
    for key in ("iteration", "env_steps", "algorithm"):
        if key not in state:
            raise ValueError(f"checkpoint state {directory / 'state.json'} has no {key!r}")
    world = algo.setup.world
    if state.get("world_size", 1) != world.size:
        raise ValueError(f"checkpoint {directory} was written by {state.get('world_size', 1)} "
                         f"process(es), this run has {world.size}: resume with the same "
                         f"number of processes (torchrun --nproc_per_node)")
    w_path = directory / "model.safetensors"
    tensors = load_tensors(w_path)
    for name, m in algo.modules.items():
        prefix = f"{name}."
        sd = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        expected = {k: v for k, v in m.state_dict().items() if k in sd or
                    not k.endswith("lm_head.weight")}  # a tied head is stored once
        try:
            check_tensors(sd, expected, w_path, f"the {name} being trained")
            m.load_state_dict(sd, strict=False)
        except (ValueError, RuntimeError) as e:
            raise ValueError(f"checkpoint {w_path} does not match the model: {e}") from e
    try:
        algo.setup.generator.set_state(tensors[_rng_prefix(world.rank) + "torch_generator"])
        torch.set_rng_state(tensors[_rng_prefix(world.rank) + "torch_global"])
    except (KeyError, RuntimeError, TypeError) as e:
        raise ValueError(f"checkpoint {w_path}: bad or missing RNG state ({e!r})") from e
    opt_path = directory / "optimizer.pt"
    try:
        algo.optimizer.load_state_dict(torch.load(opt_path, weights_only=True))
    except Exception as e:  # torch raises several types on truncated or foreign files
        raise ValueError(f"could not read optimizer state {opt_path}: {e}") from e
    try:
        algo.setup.prompt_rng.bit_generator.state = (
            state["prompt_rng"] if world.rank == 0 else state["rank_prompt_rngs"][world.rank - 1])
        algo.load_state_dict(state["algorithm"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"checkpoint state {directory / 'state.json'}: bad 'algorithm' "
                         f"or 'prompt_rng' entry ({e!r})") from e
    return state


def run(algo: Algorithm, cfg: RunConfig, name: str) -> dict:
    """Train `algo` until `cfg.total_env_steps` env steps are spent; see the module doc.

    Returns {"final": final evaluation, "samples": its (prompt, response, gold, reward),
    "history": the metric rows, "run_dir", "interrupted", "iterations"}. Under torchrun
    every rank trains; rank 0 alone locks the run directory, logs, evaluates and checkpoints
    (the other ranks return "final": None and no history).
    """
    run_dir = Path(cfg.run_dir)
    if not algo.setup.world.is_main:
        return _run_locked(algo, cfg, name, run_dir)
    with RunDirLock(run_dir):
        return _run_locked(algo, cfg, name, run_dir)


def _run_locked(algo: Algorithm, cfg: RunConfig, name: str, run_dir: Path) -> dict:
    checkpoints = Checkpoints(run_dir)
    iteration, env_steps, gradient_steps = 0, 0, 0
    main = algo.setup.world.is_main  # the process that logs, evaluates and checkpoints
    for module in algo.modules.values():  # several processes: gradients averaged over them
        distributed.average_gradients(module)

    def count_step(*_) -> None:  # gradient steps are reported beside env steps
        nonlocal gradient_steps
        gradient_steps += 1

    algo.optimizer.register_step_post_hook(count_step)
    if cfg.resume:
        latest = checkpoints.latest()
        if latest is None:
            raise FileNotFoundError(f"--resume: no complete checkpoint in {checkpoints.root}")
        state = load_checkpoint(latest, algo)
        iteration, env_steps = state["iteration"], state["env_steps"]
        gradient_steps = state.get("gradient_steps", 0)
        for group in algo.optimizer.param_groups:  # the config's, not the saved optimizer's
            group["lr"] = getattr(cfg, "learning_rate", group["lr"])
        if main:
            print(f"resuming from {latest} (iteration {iteration}, {env_steps} env steps)")
    logger = RunLogger(run_dir, tensorboard=cfg.tensorboard, resume=cfg.resume) if main else None
    if main:
        logger.truncate(iteration)
        write_json(run_dir / "config.json", {**asdict(cfg), "world_size": algo.setup.world.size})

    def checkpoint() -> None:
        rngs = distributed.gather(rng_states(algo.setup))  # every rank's streams, rank order
        state = {"iteration": iteration, "env_steps": env_steps, "name": name,
                 "gradient_steps": gradient_steps, "prompt_rng": rngs[0]["prompt_rng"],
                 "algorithm": algo.state_dict(), "world_size": len(rngs)}
        if len(rngs) > 1:
            state["rank_prompt_rngs"] = [r["prompt_rng"] for r in rngs[1:]]
        if main:
            checkpoints.save(iteration, lambda d: save_checkpoint(d, algo, state, rngs))

    interrupted = False

    def on_sigint(signum, frame):
        nonlocal interrupted
        interrupted = True

    old_handler = signal.signal(signal.SIGINT, on_sigint)
    t_start = time.perf_counter()
    bar = Progress(cfg.total_env_steps, desc=name, unit="tok", initial=env_steps,
                   enabled=cfg.progress and main)
    try:
        while env_steps < cfg.total_env_steps:
            iteration += 1
            timer, t_iter = PhaseTimer(), time.perf_counter()
            try:
                metrics = algo.iteration(iteration, env_steps / cfg.total_env_steps, timer)
            except Exception as e:  # e.g. a reward function returning NaN: say when
                e.add_note(f"(in iteration {iteration} of the {name} run in {run_dir}; the "
                           f"last good checkpoint is kept)")
                raise
            check_weights(algo, iteration, cfg.max_abs_weight)
            metrics.update({f"time/{k}": v for k, v in timer.seconds.items()})
            # Several processes: the mean over them (env steps: the sum), and a stop seen by
            # one (Ctrl-C) is taken by all.
            metrics = distributed.reduce_metrics(metrics, summed=("charts/env_steps_iter",))
            interrupted = distributed.any_rank(interrupted)
            steps = int(metrics.pop("charts/env_steps_iter"))
            env_steps += steps
            metrics["charts/tokens_per_second"] = steps / (time.perf_counter() - t_iter)
            metrics["charts/env_steps"] = env_steps
            metrics["charts/gradient_steps"] = gradient_steps
            metrics["charts/wall_clock"] = time.perf_counter() - t_start
            if main and cfg.eval_every and iteration % cfg.eval_every == 0:
                metrics.update(curve_evaluation(algo.policy, algo.setup, cfg))
            if main:
                logger.log(iteration, metrics)
            bar.update(steps, gold=metrics.get("env/gold_mean", float("nan")),
                       reward=metrics.get("env/reward_mean", float("nan")),
                       kl=metrics.get("objective/kl", float("nan")))
            if (interrupted or iteration % cfg.checkpoint_every == 0
                    or env_steps >= cfg.total_env_steps):
                checkpoint()
            if interrupted:
                if main:
                    print(f"\ninterrupted: checkpoint saved at iteration {iteration} in "
                          f"{checkpoints.root}")
                break
    finally:
        bar.close()
        signal.signal(signal.SIGINT, old_handler)
        if main:
            logger.close()
    if not main:
        return {"final": None, "samples": [], "history": [], "run_dir": str(run_dir),
                "interrupted": interrupted, "iterations": iteration}
    final = final_evaluation(algo.policy, algo.setup, cfg)
    final_metrics = {k: v for k, v in final.items() if k != "samples"}
    final_metrics["charts/env_steps"] = env_steps
    final_metrics["charts/gradient_steps"] = gradient_steps
    final_metrics["charts/wall_clock"] = time.perf_counter() - t_start
    final_metrics["charts/reward_scale"] = algo.setup.reward_scale
    write_json(run_dir / "final_eval.json", final_metrics)
    return {"final": final_metrics, "samples": final["samples"], "history": logger.rows,
            "run_dir": str(run_dir), "interrupted": interrupted, "iterations": iteration}


@torch.no_grad()
def check_weights(algo: Algorithm, iteration: int, max_abs_weight: float) -> None:
    """Stop before a checkpoint is written if any weight is no longer finite or has grown
    past `max_abs_weight` (an update that diverged: the next rollout would sample from
    garbage logits)."""
    for name, module in algo.modules.items():
        for pname, p in module.named_parameters():
            largest = p.abs().max().item()
            if not math.isfinite(largest) or largest > max_abs_weight:
                raise DivergenceError(
                    f"the update diverged in iteration {iteration}: weight {name}.{pname} "
                    f"reached {largest:.3g} (limit max_abs_weight={max_abs_weight:g}); the "
                    f"last good checkpoint is kept (lower the learning rate?)")
