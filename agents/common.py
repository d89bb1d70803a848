"""What every algorithm file shares: logging, checkpoints, evaluation, env construction.

- `RunLogger`: one row of metrics per iteration to `metrics.csv` and TensorBoard.
- `save_checkpoint` / `load_checkpoint`: weights as safetensors, optimizer state through
  `torch.save` read back with `weights_only=True`, trainer state as JSON; each file is
  written to a temp name and renamed, so an interrupted write never leaves a broken
  checkpoint.
- `evaluate`: mean gold score, learned reward and KL to the reference on held-out prompts.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

import textenv  # noqa: F401  (registers TextGen-v0)
from agents.rollout import collect_rollout, response_logprobs
from textenv.assets import ASSETS_DIR
from textenv.model import GPT
from textenv.tasks import make_task


def make_envs(num_envs: int, *, reward="learned", max_new_tokens: int | None = None,
              assets_dir=None, task: str = "reviews"):
    """The natively batched TextGen-v0 vector env. KL shaping is left to the agent."""
    kwargs = dict(task=task, reward=reward, max_new_tokens=max_new_tokens, kl_coef=0.0)
    if assets_dir is not None:
        kwargs["assets_dir"] = assets_dir
    return gym.make_vec("TextGen-v0", num_envs=num_envs, vectorization_mode="vector_entry_point",
                        **kwargs)


class RunLogger:
    """Per-iteration metrics to `<run_dir>/metrics.csv` and TensorBoard event files."""

    def __init__(self, run_dir: str | Path, tensorboard: bool = True, resume: bool = False):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.csv_path = self.run_dir / "metrics.csv"
        self.rows: list[dict] = []
        if resume and self.csv_path.exists():
            with open(self.csv_path) as f:
                self.rows = [{k: float(v) for k, v in r.items()} for r in csv.DictReader(f)]
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.run_dir))

    def log(self, step: int, metrics: dict) -> None:
        row = {"iteration": step, **{k: float(v) for k, v in metrics.items()}}
        self.rows.append(row)
        if self.writer is not None:
            for k, v in metrics.items():
                self.writer.add_scalar(k, float(v), step)
        keys = list(dict.fromkeys(k for r in self.rows for k in r))
        _atomic_write(self.csv_path, lambda f: _write_csv(f, keys, self.rows), mode="w")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _write_csv(f, keys, rows) -> None:
    w = csv.DictWriter(f, fieldnames=keys)
    w.writeheader()
    w.writerows(rows)


def _atomic_write(path: Path, write, mode: str = "wb") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_checkpoint(directory: str | Path, modules: dict[str, torch.nn.Module],
                    optimizer: torch.optim.Optimizer | None, state: dict,
                    generator: torch.Generator | None = None) -> None:
    """Write `<directory>/{model.safetensors, optimizer.pt, state.json}` atomically.

    `state.json` is written last: a checkpoint without it (a crash in between) is ignored
    by `load_checkpoint`, which then finds the previous complete one.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {f"{name}.{k}": v.detach().contiguous().clone()
               for name, m in modules.items() for k, v in m.state_dict().items()}
    if generator is not None:
        tensors["rng.torch_generator"] = generator.get_state()
    tensors["rng.torch_global"] = torch.get_rng_state()
    tmp = directory / ".model.safetensors.tmp"
    save_file(_untie(tensors), str(tmp))
    os.replace(tmp, directory / "model.safetensors")
    if optimizer is not None:
        _atomic_write(directory / "optimizer.pt", lambda f: torch.save(optimizer.state_dict(), f))
    _atomic_write(directory / "state.json", lambda f: f.write(json.dumps(state, indent=1)),
                  mode="w")


def _untie(tensors: dict) -> dict:
    """safetensors refuses shared storage (tied embeddings): store each tensor on its own."""
    seen, out = {}, {}
    for k, v in tensors.items():
        ptr = v.data_ptr()
        out[k] = v.clone() if ptr in seen else v
        seen[ptr] = k
    return out


def load_checkpoint(directory: str | Path, modules: dict[str, torch.nn.Module],
                    optimizer: torch.optim.Optimizer | None,
                    generator: torch.Generator | None = None) -> dict:
    """Restore what `save_checkpoint` wrote; returns the trainer state dict."""
    directory = Path(directory)
    for name in ("state.json", "model.safetensors"):
        if not (directory / name).exists():
            raise FileNotFoundError(f"checkpoint file not found: {directory / name}")
    state = json.loads((directory / "state.json").read_text())
    tensors = load_file(str(directory / "model.safetensors"))
    for name, m in modules.items():
        prefix = f"{name}."
        sd = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        missing, unexpected = m.load_state_dict(sd, strict=False)
        missing = [k for k in missing if not k.endswith("lm_head.weight")]  # tied
        if missing or unexpected:
            raise ValueError(f"checkpoint {directory / 'model.safetensors'} does not match "
                             f"the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    if generator is not None and "rng.torch_generator" in tensors:
        generator.set_state(tensors["rng.torch_generator"])
    torch.set_rng_state(tensors["rng.torch_global"])
    if optimizer is not None and (directory / "optimizer.pt").exists():
        optimizer.load_state_dict(torch.load(directory / "optimizer.pt", weights_only=True))
    return state


@torch.no_grad()
def evaluate(policy: GPT, reference: GPT, envs, prompts: list[str], *, max_new_tokens: int,
             temperature: float, pad_id: int, seed: int = 0) -> dict:
    """Sample once per held-out prompt: mean gold, learned reward, sequence KL to reference."""
    n = envs.num_envs
    gen = torch.Generator().manual_seed(seed)
    gold, score, kl, eos, length = [], [], [], [], []
    samples = []
    if len(prompts) < n:
        raise ValueError(f"need at least num_envs={n} evaluation prompts, got {len(prompts)}")
    for s in range(0, len(prompts) - n + 1, n):  # whole batches of num_envs prompts
        chunk = prompts[s:s + n]
        ro = collect_rollout(envs, policy, chunk, max_new_tokens=max_new_tokens,
                             temperature=temperature, generator=gen, pad_id=pad_id)
        logp = response_logprobs(policy, ro, temperature)
        logp_ref = response_logprobs(reference, ro, temperature)
        kl.append(((logp - logp_ref) * ro.response_mask).sum(1))
        gold.append(ro.gold)
        score.append(ro.scores)
        eos.append(ro.eos.float())
        length.append(ro.response_mask.sum(1).float())
        samples += list(zip(ro.prompts, ro.responses, ro.gold.tolist(), ro.scores.tolist()))
    cat = torch.cat
    return {"eval/gold_mean": cat(gold).mean().item(),
            "eval/reward_mean": cat(score).mean().item(),
            "eval/kl": cat(kl).mean().item(),
            "eval/eos_rate": cat(eos).mean().item(),
            "eval/response_length": cat(length).mean().item(),
            "samples": samples}


def rng_state(rng: np.random.Generator) -> dict:
    return rng.bit_generator.state


def set_rng_state(rng: np.random.Generator, state: dict) -> None:
    rng.bit_generator.state = state


@dataclass
class RunConfig:
    """Fields every algorithm shares (each algorithm's config extends this one)."""

    seed: int = 1
    """Seed for prompts, sampling and minibatch order."""
    total_env_steps: int = 150_000
    """Budget in env steps (= generated tokens, summed over envs)."""
    run_dir: str = "runs/run"
    """Where metrics.csv, TensorBoard events and checkpoints go."""
    resume: bool = False
    """Continue from the checkpoint in run_dir/checkpoint."""
    checkpoint_every: int = 20
    """Save a checkpoint every this many iterations (and at the end / on Ctrl-C)."""
    eval_every: int = 10
    """Evaluate on held-out prompts every this many iterations (0: only at the end)."""
    eval_prompts: int = 128
    """Held-out prompts per evaluation."""
    threads: int = 2
    """torch threads (2 suits the 2-core reference machine)."""
    tensorboard: bool = True
    """Write TensorBoard event files beside metrics.csv."""
    progress: bool = True
    """Show a progress bar."""
    assets_dir: str = str(ASSETS_DIR)
    """Directory of the SFT policy, tokenizer and reward model."""
    num_envs: int = 64
    """Responses per rollout (envs of the vector env)."""
    max_new_tokens: int = 40
    """Response length limit."""
    temperature: float = 1.0
    """Sampling temperature (log-probs are taken under it everywhere)."""
    reward: str = "learned"
    """Env reward: "learned" (reward model) or "gold"."""


class NonFiniteLoss(RuntimeError):
    """A loss became NaN/inf: the run stops and the last good checkpoint is kept."""


def check_finite(loss: torch.Tensor, iteration: int) -> None:
    if not torch.isfinite(loss):
        raise NonFiniteLoss(f"non-finite loss ({loss.item()}) at iteration {iteration}; "
                            f"the last good checkpoint is kept")


@dataclass
class Run:
    """What an algorithm hands to `run_loop`: its setup, in plain fields."""

    cfg: RunConfig
    policy: GPT  # the LM that writes responses (evaluated on held-out prompts)
    reference: GPT  # frozen SFT policy (KL is measured against it)
    modules: dict  # name -> nn.Module to checkpoint
    optimizer: torch.optim.Optimizer | None
    envs: object
    pad_id: int
    iteration: Callable[[int, float], dict]  # (iteration, fraction of budget used) -> metrics
    get_state: Callable[[], dict] = dict  # algorithm state for checkpoints (JSON-able)
    set_state: Callable[[dict], None] = lambda state: None
    generator: torch.Generator | None = None


def run_loop(run: Run, name: str) -> dict:
    """The outer loop every algorithm shares: iterations until the env-step budget is
    spent, logging, evaluation, checkpoints (atomic), `--resume`, and Ctrl-C (finish the
    iteration, save a checkpoint, exit cleanly)."""
    cfg = run.cfg
    run_dir = Path(cfg.run_dir)
    ckpt_dir = run_dir / "checkpoint"
    iteration, env_steps = 0, 0
    if cfg.resume:
        state = load_checkpoint(ckpt_dir, run.modules, run.optimizer, run.generator)
        iteration, env_steps = state["iteration"], state["env_steps"]
        run.set_state(state["algorithm"])
    logger = RunLogger(run_dir, tensorboard=cfg.tensorboard, resume=cfg.resume)
    logger.rows = [r for r in logger.rows if r["iteration"] <= iteration]
    (run_dir / "config.json").write_text(json.dumps(asdict(cfg), indent=1, default=str))
    eval_prompts = make_task("reviews").eval_prompts(max(cfg.eval_prompts, cfg.num_envs),
                                                     seed=cfg.seed + 100)

    def run_eval() -> dict:
        return evaluate(run.policy, run.reference, run.envs, eval_prompts,
                        max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                        pad_id=run.pad_id, seed=cfg.seed + 200)

    def checkpoint() -> None:
        save_checkpoint(ckpt_dir, run.modules, run.optimizer,
                        {"iteration": iteration, "env_steps": env_steps,
                         "algorithm": run.get_state(), "name": name}, run.generator)

    interrupted = False

    def on_sigint(signum, frame):
        nonlocal interrupted
        interrupted = True

    old_handler = signal.signal(signal.SIGINT, on_sigint)
    t_start = time.perf_counter()
    bar = tqdm(total=cfg.total_env_steps, initial=env_steps, desc=name, unit="tok",
               disable=not cfg.progress)
    try:
        while env_steps < cfg.total_env_steps:
            iteration += 1
            metrics = run.iteration(iteration, env_steps / cfg.total_env_steps)
            steps = int(metrics.pop("charts/env_steps_iter"))
            env_steps += steps
            bar.update(steps)
            metrics["charts/env_steps"] = env_steps
            metrics["charts/wall_clock"] = time.perf_counter() - t_start
            if cfg.eval_every and iteration % cfg.eval_every == 0:
                metrics.update({k: v for k, v in run_eval().items() if k != "samples"})
            logger.log(iteration, metrics)
            bar.set_postfix(gold=f"{metrics.get('env/gold_mean', float('nan')):.3f}",
                            reward=f"{metrics.get('env/reward_mean', float('nan')):.2f}",
                            kl=f"{metrics.get('objective/kl', float('nan')):.2f}")
            if (interrupted or iteration % cfg.checkpoint_every == 0
                    or env_steps >= cfg.total_env_steps):
                checkpoint()
            if interrupted:
                print(f"\ninterrupted: checkpoint saved at iteration {iteration} in {ckpt_dir}")
                break
    finally:
        bar.close()
        signal.signal(signal.SIGINT, old_handler)
        logger.close()
    final = run_eval()
    final_metrics = {k: v for k, v in final.items() if k != "samples"}
    final_metrics["charts/env_steps"] = env_steps
    final_metrics["charts/wall_clock"] = time.perf_counter() - t_start
    (run_dir / "final_eval.json").write_text(json.dumps(final_metrics, indent=1))
    return {"final": final_metrics, "samples": final["samples"], "history": logger.rows,
            "run_dir": str(run_dir), "interrupted": interrupted, "iterations": iteration}


@dataclass
class Setup:
    """What every algorithm loads first: tokenizer, task, frozen reference, envs, RNGs."""

    tokenizer: object
    task: object
    reference: GPT
    envs: object
    prompt_rng: np.random.Generator
    generator: torch.Generator

    def sample_prompts(self, n: int, group_size: int = 1) -> list[str]:
        """n training prompts; each distinct prompt repeated `group_size` times in a row."""
        distinct = [self.task.sample_prompt(self.prompt_rng, "train")
                    for _ in range(n // group_size)]
        return [p for p in distinct for _ in range(group_size)]


def setup(cfg: RunConfig) -> Setup:
    from agents.core import set_seed
    from textenv.assets import load_policy, load_tokenizer

    torch.set_num_threads(cfg.threads)
    set_seed(cfg.seed)
    tokenizer = load_tokenizer(cfg.assets_dir)
    reference = load_policy("sft", cfg.assets_dir, tokenizer).requires_grad_(False)
    envs = make_envs(cfg.num_envs, reward=cfg.reward, max_new_tokens=cfg.max_new_tokens,
                     assets_dir=cfg.assets_dir)
    return Setup(tokenizer, make_task("reviews"), reference, envs,
                 np.random.default_rng(cfg.seed), torch.Generator().manual_seed(cfg.seed))


def rng_states(s: Setup) -> dict:
    return {"prompt_rng": rng_state(s.prompt_rng)}


def set_rng_states(s: Setup, state: dict) -> None:
    set_rng_state(s.prompt_rng, state["prompt_rng"])


def trainable_copy(model: GPT) -> GPT:
    """A trainable copy of a (frozen, shared) model: the policy starts as the SFT policy."""
    import copy

    return copy.deepcopy(model).requires_grad_(True)
