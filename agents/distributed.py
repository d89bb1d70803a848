"""Data-parallel training with torch.distributed: one process (rank) per slice of the envs.

    torchrun --nproc_per_node=2 -m agents.cli train grpo --num-envs 64 --threads 1

torchrun starts the processes and tells each one its rank and the world size through
environment variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT); without
them the run is one process and everything here is a no-op. With them:

- every rank owns num_envs / world_size envs and its own random streams (seed offset
  SEED_STRIDE * rank), so the ranks sample different prompts and responses;
- every rank holds the whole policy, reference and reward model (data parallelism: only
  the batch is split);
- gradients are averaged over the ranks at the end of each backward, in one all-reduce
  (DDP's semantics: each rank's loss is a mean over its own slice, so with equal slices
  the average is the mean over the whole batch), hence grad-norm clipping and Adam see
  the same gradient on every rank and the weights stay identical;
- the metrics of an iteration are averaged over the ranks (env steps are summed);
- rank 0 alone takes the run-directory lock, logs, evaluates and writes checkpoints; a
  checkpoint holds every rank's random state, so resuming (same world size) continues
  each rank's streams.

The backend is gloo on CPU and nccl on CUDA (one GPU per process: cuda:LOCAL_RANK).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

SEED_STRIDE = 10_000
"""Rank r seeds its streams with seed + SEED_STRIDE * r (rank 0: the one-process seed)."""


@dataclass(frozen=True)
class World:
    """Where this process stands: rank, world size and its GPU index on its node."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that logs, evaluates and checkpoints."""
        return self.rank == 0

    def seed(self, seed: int) -> int:
        return seed + SEED_STRIDE * self.rank

    def local_envs(self, num_envs: int) -> int:
        """This rank's share of the envs."""
        if num_envs % self.size:
            raise ValueError(f"num_envs={num_envs} must be a multiple of the number of "
                             f"processes ({self.size}): each one owns an equal slice")
        return num_envs // self.size


def init(device: torch.device) -> World:
    """Join the process group torchrun describes in the environment (once per process);
    one process without it. `device` picks the backend: nccl for CUDA, else gloo."""
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return World()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def current() -> World:
    """The World of this process as initialised (one process if not)."""
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def _device() -> str:
    return "cuda" if dist.get_backend() == "nccl" else "cpu"  # nccl reduces CUDA tensors only


def mean(value: float) -> float:
    """The mean of `value` over the ranks (itself with one process): for decisions every
    rank must take alike, e.g. PPO's early stop on approx-KL or a KL controller's update."""
    if current().size == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=_device())
    dist.all_reduce(t)
    return t.item() / dist.get_world_size()


def reduce_metrics(metrics: dict[str, float], summed: tuple[str, ...] = ()) -> dict[str, float]:
    """Each metric averaged over the ranks, those named in `summed` added up (every rank
    logs the same keys: the same code ran). One all-reduce for the whole dict."""
    w = current()
    if w.size == 1:
        return metrics
    keys = sorted(metrics)
    t = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64, device=_device())
    dist.all_reduce(t)
    return {k: v if k in summed else v / w.size for k, v in zip(keys, t.tolist())}


def any_rank(flag: bool) -> bool:
    """True on every rank if it is True on any (e.g. Ctrl-C seen by one process only)."""
    if current().size == 1:
        return flag
    t = torch.tensor([float(flag)], device=_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def gather(obj) -> list:
    """Every rank's `obj` (picklable), in rank order, on every rank."""
    w = current()
    if w.size == 1:
        return [obj]
    out = [None] * w.size
    dist.all_gather_object(out, obj)
    return out


def average_gradients(module: nn.Module) -> None:
    """DistributedDataParallel's gradient semantics without its wrapper (the algorithms
    keep calling their modules and sub-modules directly): after each backward, the
    gradients are averaged over the ranks before anything reads them, so grad-norm clipping
    and the optimizer step see the averaged gradient on every rank. The weights are first
    made equal to rank 0's.

    Like DDP's buckets, all of a backward's gradients travel in ONE all-reduce (flattened):
    each parameter's hook only notes that its gradient is ready, and the first one queues a
    callback that autograd runs when the backward ends. (One all-reduce per tensor made the
    2-process update 3x slower on 2 busy cores: every call is a rendezvous.)"""
    w = current()
    if w.size == 1:
        return
    with torch.no_grad():
        for t in [*module.parameters(), *module.buffers()]:
            dist.broadcast(t, src=0)
    params = [p for p in module.parameters() if p.requires_grad]
    index = {id(p): i for i, p in enumerate(params)}
    ready: list[torch.Tensor] = []

    def all_reduce_ready() -> None:  # at the end of the backward
        grads = [p.grad for p in sorted(ready, key=lambda p: index[id(p)])]  # same order
        ready.clear()
        flat = torch.cat([g.reshape(-1) for g in grads])  # one message
        dist.all_reduce(flat)  # sum ...
        flat /= w.size  # ... / world size = mean
        for g, chunk in zip(grads, flat.split([g.numel() for g in grads])):
            g.copy_(chunk.view_as(g))

    def hook(p: torch.Tensor) -> None:
        if not ready:
            torch.autograd.Variable._execution_engine.queue_callback(all_reduce_ready)
        ready.append(p)

    for p in params:
        p.register_post_accumulate_grad_hook(hook)
