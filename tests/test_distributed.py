"""Scale: the device setting, and data-parallel training over torch.distributed (gloo, CPU).

The 2-process tests start real processes (torch.multiprocessing.spawn, or torchrun for
the end-to-end run), one torch thread each.
"""

import csv
import json
import os
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from conftest import tiny_gpt

from agents import distributed
from agents.ppo import ActorCritic, PPOConfig, ppo_update
from agents.rollout import Rollout
from agents.training import adam
from textenv.model import resolve_device

ROOT = Path(__file__).resolve().parent.parent
N, TP, TR = 8, 3, 5  # the batch of the equality test: rows, prompt and response widths


# ---- devices ---------------------------------------------------------------------------------
def test_resolve_device_names_and_errors():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="unknown device 'gpu'; valid: auto, cpu, cuda"):
        resolve_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            resolve_device("cuda")


def test_env_device_argument_keeps_numpy_io():
    env = gym.make("TextGen-v0", device="cpu", max_new_tokens=4)
    obs, _ = env.reset(seed=0)
    obs, reward, *_ = env.step(env.action_space.sample())
    assert isinstance(obs, np.ndarray) and env.unwrapped.core.device == "cpu"
    with pytest.raises(ValueError, match="unknown device"):
        gym.make("TextGen-v0", device="tpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_env_and_rollout_give_numpy_to_the_env_and_cuda_tensors_to_the_agent():
    from agents.rollout import collect_rollout, make_envs
    from textenv.assets import load_reference, resolve_assets_dir

    envs = make_envs(4, max_new_tokens=6, device="cuda")
    obs, _ = envs.reset(seed=0)
    assert isinstance(obs, np.ndarray)
    policy = load_reference(resolve_assets_dir(None, "reviews"), "cuda")
    prompts = [envs.unwrapped.task.sample_prompt(np.random.default_rng(0), "train")] * 4
    ro = collect_rollout(envs, policy, prompts, max_new_tokens=6, temperature=1.0,
                         generator=torch.Generator().manual_seed(0),
                         pad_id=envs.unwrapped.tokenizer.pad_id)
    assert ro.response_ids.is_cuda and ro.scores.is_cuda and np.isfinite(ro.scores.cpu()).all()


def test_world_slices_envs_and_offsets_seeds():
    w = distributed.World(rank=1, size=2)
    assert w.local_envs(64) == 32 and w.seed(1) == 1 + distributed.SEED_STRIDE
    assert distributed.World().seed(1) == 1 and distributed.World().is_main
    with pytest.raises(ValueError, match="num_envs=9 must be a multiple of the number of "
                                         "processes"):
        w.local_envs(9)


def test_untrained_or_foreign_loops_refuse_torchrun(monkeypatch):
    from agents.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SystemExit, match="best-of-n runs as one process"):
        main(["train", "best-of-n"])


# ---- one DDP update == one update on the concatenated batch ------------------------------------
def _batch():
    """A fixed batch of N rows, every token real: each half has the same number of tokens,
    so the mean of the two halves' token means is the token mean of the whole batch."""
    g = torch.Generator().manual_seed(3)
    ro = Rollout(prompt_ids=torch.randint(2, 17, (N, TP), generator=g),
                 prompt_mask=torch.ones(N, TP, dtype=torch.bool),
                 response_ids=torch.randint(2, 17, (N, TR), generator=g),
                 response_mask=torch.ones(N, TR, dtype=torch.bool),
                 sample_logprobs=torch.zeros(N, TR), scores=torch.zeros(N),
                 gold=torch.zeros(N), eos=torch.ones(N, dtype=torch.bool),
                 prompts=[""] * N, responses=[""] * N, seconds=0.0)
    old_logp = -2.5 + 0.3 * torch.randn(N, TR, generator=g)
    values, adv, ret = (torch.randn(N, TR, generator=g) for _ in range(3))
    return ro, old_logp, values, adv, ret


def _rows(ro: Rollout, rows: slice) -> Rollout:
    return replace(ro, **{k: getattr(ro, k)[rows] for k in
                          ("prompt_ids", "prompt_mask", "response_ids", "response_mask",
                           "sample_logprobs", "scores", "gold", "eos")})


def _one_update(rows: slice, distributed_grads: bool) -> dict:
    """One PPO update (1 epoch, 1 minibatch, grad-norm clip on) of the tiny actor-critic on
    `rows` of the fixed batch; returns the new parameters."""
    ro, old_logp, values, adv, ret = _batch()
    agent = ActorCritic(tiny_gpt(n_layer=1))
    if distributed_grads:
        distributed.average_gradients(agent)
    cfg = replace(PPOConfig(), update_epochs=1, num_minibatches=1, target_kl=None,
                  max_grad_norm=0.5, ent_coef=0.01)
    part = _rows(ro, rows)
    ppo_update(agent, adam(agent.parameters(), 1e-2), part, part.response_mask.float(),
               old_logp[rows], values[rows], adv[rows], ret[rows], cfg,
               torch.Generator().manual_seed(0), 1, None, 0)
    return {k: v.detach().clone() for k, v in agent.state_dict().items()}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    w = distributed.init(torch.device("cpu"))
    assert (w.rank, w.size) == (rank, world)
    half = N // world
    params = _one_update(slice(rank * half, (rank + 1) * half), distributed_grads=True)
    # The helpers every rank must agree on.
    reduced = distributed.reduce_metrics({"a": float(rank), "steps": 10.0}, summed=("steps",))
    assert reduced == {"a": (world - 1) / 2, "steps": 10.0 * world}
    assert distributed.mean(float(rank)) == (world - 1) / 2
    assert distributed.any_rank(rank == 1) and not distributed.any_rank(False)
    assert distributed.gather(rank) == list(range(world))
    torch.save(params, f"{out}.{rank}")
    torch.distributed.destroy_process_group()


def test_ddp_update_on_two_halves_equals_one_update_on_the_whole_batch(tmp_path):
    out = str(tmp_path / "params")
    single = _one_update(slice(0, N), distributed_grads=False)  # also warms torch up (~4 s)
    # fork: the children start at once, warm, without importing torch and this module again
    mp.start_processes(_ddp_worker, args=(2, _free_port(), out), nprocs=2, join=True,
                       start_method="fork")
    before = {k: v for k, v in ActorCritic(tiny_gpt(n_layer=1)).state_dict().items()}
    rank0, rank1 = (torch.load(f"{out}.{r}", weights_only=True) for r in (0, 1))
    moved = 0.0
    for k in single:
        assert torch.equal(rank0[k], rank1[k]), k  # the ranks stay identical
        assert (rank0[k] - single[k]).abs().max().item() <= 1e-5, k
        moved = max(moved, (single[k] - before[k]).abs().max().item())
    assert moved > 1e-3  # the update did move the weights: the comparison means something


# ---- end to end: torchrun, 2 processes, checkpoint and resume ----------------------------------
def _grpo_args(run_dir, total, extra=()):
    return ["train", "grpo", f"--run-dir={run_dir}", "--num-envs=8", "--group-size=4",
            "--max-new-tokens=16",
            "--eval-every=0", "--eval-samples=1", "--threads=1", "--no-progress",
            "--no-tensorboard", "--checkpoint-every=1", f"--total-env-steps={total}",
            "--device=cpu", *extra]


def _grpo_cmd(run_dir, total, extra=()):
    """`torchrun --standalone --nproc_per_node=2 -m agents.cli train grpo ...`"""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            "--nproc_per_node=2", "-m", "agents.cli", *_grpo_args(run_dir, total, extra)]


def _metrics(run_dir):
    with open(Path(run_dir) / "metrics.csv") as f:
        return {int(float(r["iteration"])): r for r in csv.DictReader(f)}


@pytest.mark.slow
def test_torchrun_two_processes_checkpoint_and_resume_continue_the_same_run(tmp_path):
    """2 gloo processes: an uninterrupted run vs. the same run stopped early and resumed
    from its checkpoint (every rank's random streams restored): the same metrics."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    total = 3 * 8 * 12  # about 3 iterations (responses average ~12 tokens)

    def launch(cmd):
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
        assert p.returncode == 0, p.stderr[-3000:]
        return p

    full, cut = tmp_path / "full", tmp_path / "cut"
    launch(_grpo_cmd(full, total))
    launch(_grpo_cmd(cut, total // 3))  # stops after the first iteration, checkpointed
    first = json.loads((cut / "final_eval.json").read_text())
    assert first["charts/env_steps"] >= total // 3
    config = json.loads((full / "config.json").read_text())
    assert config["world_size"] == 2
    launch(_grpo_cmd(cut, total, ["--resume"]))
    a, b = _metrics(full), _metrics(cut)
    assert sorted(a) == sorted(b) and len(a) >= 2
    for it in sorted(a):
        for key in ("env/gold_mean", "env/reward_mean", "objective/kl", "losses/policy_loss",
                    "charts/env_steps"):
            assert float(a[it][key]) == pytest.approx(float(b[it][key]), abs=1e-6), (it, key)
    # One process cannot resume what two wrote: it would lose a rank's random streams.
    p = subprocess.run([sys.executable, "-m", "agents.cli",
                        *_grpo_args(cut, 2 * total, ["--resume"])],
                       env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert p.returncode != 0 and "written by 2 process(es), this run has 1" in p.stderr
