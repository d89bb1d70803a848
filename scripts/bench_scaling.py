"""Data-parallel throughput: LM-PPO with 1 and 2 processes (torchrun, gloo, 1 thread each).

    python scripts/bench_scaling.py                      # ~5 min on the 2-core machine
    python scripts/bench_scaling.py --rounds 1 --json runs/bench_scaling.json

Each configuration is a real training run (`torchrun --standalone --nproc_per_node=P -m
agents.cli ppo ...`) with the same global batch and budget; the configurations are
interleaved round by round (A, B, C, A, B, C, ...) so that a busy machine slows them alike.
A run's figure is the median over its iterations (the first, warm-up, left out) of the
logged tokens/s and phase seconds (averaged over the processes by the training loop).
Three configurations:

    1 process x 64 envs    the baseline
    2 processes x 32 envs  the same global batch, split (data parallel)
    1 process x 32 envs    what each of the two processes does, alone: the ideal speed-up of
                           the split is (time of 64 envs) / (time of 32 envs), not 2

and the latency of one all-reduce of the policy's gradient (2 gloo processes, the shipped
SFT policy's parameter count in float32, median of 200), the price of each update step.
"""

from __future__ import annotations

import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import tyro

PHASES = ("rollout", "reference", "old_logprobs", "advantages", "update")


@dataclass
class BenchScalingConfig:
    rounds: int = 2
    """Repeats of each configuration (interleaved)."""
    total_env_steps: int = 6000
    """Budget of each run (about 5 iterations of 64 envs)."""
    max_new_tokens: int = 40
    """Response length limit."""
    json: str | None = None
    """Also write the figures here."""


def run_once(nproc: int, num_envs: int, cfg: BenchScalingConfig, run_dir: Path) -> dict:
    """One PPO run under torchrun; median tokens/s and phase seconds over iterations >= 2."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", "-m", "agents.cli", "ppo", f"--run-dir={run_dir}",
           f"--num-envs={num_envs}", f"--max-new-tokens={cfg.max_new_tokens}",
           f"--total-env-steps={cfg.total_env_steps}", "--eval-every=0", "--eval-samples=1",
           "--threads=1", "--no-progress", "--no-tensorboard", "--device=cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if p.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{p.stderr[-3000:]}")
    with open(run_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))[1:]  # the first iteration warms up
    med = {k: statistics.median(float(r[k]) for r in rows) for k in
           ["charts/tokens_per_second", *(f"time/{ph}" for ph in PHASES)]}
    return {"tokens_per_s": med["charts/tokens_per_second"],
            **{ph: med[f"time/{ph}"] for ph in PHASES}, "iterations": len(rows)}


def _all_reduce_worker(rank: int, port: int, numel: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2)
    flat, seconds = torch.randn(numel), []
    for i in range(220):
        t0 = time.perf_counter()
        dist.all_reduce(flat)
        if i >= 20:  # warm-up left out
            seconds.append(time.perf_counter() - t0)
    if rank == 0:
        Path(out).write_text(json.dumps(statistics.median(seconds)))
    dist.destroy_process_group()


def all_reduce_seconds(tmp: str) -> tuple[float, int]:
    """Median seconds of one all-reduce of the SFT policy's gradient size, 2 gloo processes."""
    import socket

    from textenv.assets import load_reference, resolve_assets_dir

    numel = sum(p.numel() for p in load_reference(resolve_assets_dir(None, "reviews"))
                .parameters())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(Path(tmp) / "all_reduce.json")
    mp.start_processes(_all_reduce_worker, args=(port, numel, out), nprocs=2,
                       start_method="spawn")
    return json.loads(Path(out).read_text()), numel


def main(cfg: BenchScalingConfig) -> dict:
    configs = [(1, 64), (2, 64), (1, 32)]
    load0 = os.getloadavg()[0]
    results: dict[str, list[dict]] = {f"{p}x{n // p}": [] for p, n in configs}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(cfg.rounds):
            for p, n in configs:
                name = f"{p}x{n // p}"
                print(f"round {r + 1}: {p} process(es) x {n // p} envs", file=sys.stderr)
                results[name].append(run_once(p, n, cfg, Path(tmp) / f"{name}_{r}"))
        reduce_s, numel = all_reduce_seconds(tmp)
    figures = {name: {k: statistics.median(run[k] for run in runs) for k in runs[0]}
               for name, runs in results.items()}
    base, split, half = figures["1x64"], figures["2x32"], figures["1x32"]
    out = {"figures": figures, "speedup_2_processes": split["tokens_per_s"] / base["tokens_per_s"],
           "ideal_speedup": half["tokens_per_s"] * 2 / base["tokens_per_s"],
           "all_reduce_seconds": reduce_s, "all_reduce_floats": numel,
           "load_average_before_after": [load0, os.getloadavg()[0]], "cores": os.cpu_count()}
    print("| processes x envs | tokens/s | " + " | ".join(f"{ph} s" for ph in PHASES) + " |")
    print("|---|---|" + "---|" * len(PHASES))
    for name, f in figures.items():
        print(f"| {name} | {f['tokens_per_s']:.0f} | "
              + " | ".join(f"{f[ph]:.3f}" for ph in PHASES) + " |")
    print(f"\nspeed-up of 2 processes over 1: {out['speedup_2_processes']:.2f}x "
          f"(the split's ceiling, 2 x (32-env speed) / (64-env speed): "
          f"{out['ideal_speedup']:.2f}x); one all-reduce of {numel} floats (2 gloo processes): "
          f"{reduce_s * 1e3:.2f} ms; {out['cores']} cores; load average before/after: "
          f"{load0:.1f} / {out['load_average_before_after'][1]:.1f}")
    if cfg.json:
        Path(cfg.json).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.json).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main(tyro.cli(BenchScalingConfig))
