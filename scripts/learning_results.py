"""Does RL beat best-of-16? Every trained algorithm with `reward="gold"` and with the learned
reward, several seeds each, against best-of-16 selected by the same reward, on the same
fixed evaluation (every prompt of the eval split x 4 samples; the test split beside it).

    python scripts/learning_results.py                       # everything (reuses finished runs)
    python scripts/learning_results.py --rewards gold        # one half, e.g. on another core

A half whose runs are not on this machine is kept from the report already at `--out`, when
that report's settings for it (budget, overrides, seeds) are the ones asked for; each half
records its own date.

The runs are `textenv compare` runs (one comparison per reward, in OUT_DIR/REWARD, with its
own report there); this script adds the targets and writes `docs/results/learning.json`:
per algorithm and reward, final held-out gold (mean, standard error and per seed), test
gold, KL, the peak of the seed-averaged learning curve and the drop from it to the final
gold, and the wall-clock of training; then each target with the measured numbers and
whether it is met.
"""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tyro

from agents.compare import CompareConfig, run_all
from agents.compare import main as compare_main
from textenv.storage import read_json, write_json

ALGOS = ("ppo", "reinforce", "rloo", "grpo", "dr-grpo", "reinforce++")


@dataclass
class Args:
    rewards: tuple[str, ...] = ("gold", "learned")
    """Training rewards to run ("gold", "learned"); the JSON is written when both halves are
    done here or a half not run here is kept from OUT."""
    algos: tuple[str, ...] = ALGOS
    """Trained algorithms (best-of-16 is always added)."""
    seeds: int = 3
    """Seeds per algorithm (1..seeds)."""
    gold_env_steps: int = 300_000
    """Budget of every run trained on gold, in env steps."""
    learned_env_steps: int = 600_000
    """Budget of every run trained on the learned reward, in env steps (LM-PPO at its default
    step size reaches the goal there: docs/results.md#learning-against-best-of-16)."""
    gold_set: tuple[str, ...] = (
        "ppo.learning_rate=6e-4", "ppo.init_kl_coef=0.003", "ppo.adaptive_kl=false",
        "reinforce.learning_rate=6e-4", "reinforce.kl_coef=0.003",
        "rloo.learning_rate=6e-4", "rloo.kl_coef=0.003",
        "grpo.learning_rate=6e-4", "grpo.beta=0.003",
        "dr-grpo.learning_rate=6e-4", "dr-grpo.beta=0.003",
        "reinforce++.learning_rate=6e-4", "reinforce++.kl_coef=0.003")
    """Overrides of the runs trained on gold (LABEL.FIELD=VALUE), one setting for every
    algorithm: gold cannot be gamed, so a small KL penalty and a larger step size (tuned on
    LM-PPO: docs/results.md#learning-against-best-of-16)."""
    learned_set: tuple[str, ...] = ()
    """Overrides of the runs trained on the learned reward (default: every default)."""
    timed_alone: tuple[str, ...] = ("ppo",)
    """Algorithms whose gold runs are repeated alone on the machine with `alone_threads`
    threads, for the time target (the runs above share the cores)."""
    alone_threads: int = 2
    """torch threads of the runs timed alone."""
    with_best_of_n: bool = True
    """Also run best-of-16 (off in a second process that shares OUT_DIR)."""
    eval_every: int = 10
    """Curve evaluations (eval split x 1 sample) every this many iterations."""
    threads: int = 1
    """torch threads per run."""
    out_dir: Path = Path("runs/learning")
    """Runs and the two comparison reports go to OUT_DIR/REWARD."""
    out: Path = Path("docs/results/learning.json")
    """Where to write the numbers and targets."""


def compare_config(args: Args, reward: str) -> CompareConfig:
    steps = args.gold_env_steps if reward == "gold" else args.learned_env_steps
    overrides = [item for item in (args.gold_set if reward == "gold" else args.learned_set)
                 if item.partition("=")[0].rpartition(".")[0] in args.algos]  # algos run only
    algos = list(args.algos)
    if args.with_best_of_n:
        algos.append("best-of-n")
        overrides.append("best-of-n.n=16")
    return CompareConfig(
        algos=tuple(algos), set=tuple(overrides), seeds=args.seeds, total_env_steps=steps,
        reward=reward, threads=args.threads, eval_every=args.eval_every, gao_n=1,
        out_dir=str(args.out_dir / reward), reuse=True, overoptimization=())


def mean_se(values) -> dict:
    x = np.asarray(values, dtype=float)
    se = float(x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else float("nan")
    return {"mean": float(x.mean()), "se": se, "per_seed": [round(float(v), 4) for v in x]}


def summarise(runs: list[dict]) -> dict:
    """One algorithm's seeds -> final gold, test gold, KL, seconds, curve peak and drop."""
    finals = [r["final"] for r in runs]
    row = {key: mean_se([f[metric] for f in finals]) for key, metric in (
        ("gold", "eval/gold_mean"), ("test_gold", "test/gold_mean"), ("kl", "eval/kl"),
        ("learned_reward", "eval/reward_mean"), ("seconds", "charts/wall_clock"),
        ("env_steps", "charts/env_steps"))}
    if "eval/best_of_n" in finals[0]:  # the n the budget allowed (16 unless it ran out)
        row["n"] = mean_se([f["eval/best_of_n"] for f in finals])
    # The learning curve averaged over seeds (curve evaluations share their iterations), then
    # the final evaluation as its last point: the drop is its peak minus that last point.
    curves = [[h["eval/gold_mean"] for h in r["history"] if "eval/gold_mean" in h] for r in runs]
    steps = [[h["charts/env_steps"] for h in r["history"] if "eval/gold_mean" in h] for r in runs]
    n = min(map(len, curves)) if curves else 0
    curve = [float(np.mean([c[i] for c in curves])) for i in range(n)] + [row["gold"]["mean"]]
    row["curve"] = {"env_steps": [float(np.mean([s[i] for s in steps])) for i in range(n)]
                    + [row["env_steps"]["mean"]], "gold": curve}
    row["peak_gold"] = max(curve)
    row["gold_drop"] = max(curve) - row["gold"]["mean"]
    return row


def run_alone(args: Args, algo: str) -> dict:
    """`algo`'s gold runs again, one after the other, each alone on the machine with
    `alone_threads` threads: wall-clock (evaluations included) and final gold per seed."""
    cfg = compare_config(args, "gold")
    cfg = CompareConfig(**{**cfg.__dict__, "algos": (algo,), "threads": args.alone_threads,
                           "set": tuple(x for x in cfg.set if x.startswith(f"{algo}.")),
                           "out_dir": str(args.out_dir / "gold_alone")})
    runs = run_all(cfg)  # reused when they exist: run them when nothing else runs
    return {"seconds": mean_se([r["final"]["charts/wall_clock"] for r in runs]),
            "gold": mean_se([r["final"]["eval/gold_mean"] for r in runs]),
            "test_gold": mean_se([r["final"]["test/gold_mean"] for r in runs]),
            "threads": args.alone_threads}


def targets(results: dict, alone: dict) -> list[dict]:
    """The issue's targets, each with the numbers it compares and whether it is met. The
    time target reads the run timed alone where there is one."""
    out = []
    for reward, rows in results.items():
        bo16 = rows["best-of-n"]["gold"]["mean"]
        for algo in (a for a in rows if a != "best-of-n"):
            gold = rows[algo]["gold"]["mean"]
            if reward == "gold":
                goal = max(bo16, 0.90)
                seconds = alone[algo]["seconds"]["mean"] if algo in alone else None
                out.append({"target": f"{algo}, reward gold: gold >= best-of-16 by gold and "
                            f">= 0.90, within 300 s of training alone on the machine",
                            "gold": gold, "best_of_16_gold": bo16, "seconds_alone": seconds,
                            "seconds_shared": rows[algo]["seconds"]["mean"],
                            "met": bool(gold >= goal and seconds is not None and seconds <= 300)})
            else:
                out.append({"target": f"{algo}, learned reward: gold >= best-of-16 by the learned "
                            f"reward + 0.05, drop from the peak <= 0.02", "gold": gold,
                            "best_of_16_gold": bo16, "gold_drop": rows[algo]["gold_drop"],
                            "met": bool(gold >= bo16 + 0.05 and rows[algo]["gold_drop"] <= 0.02)})
    return out


def half_settings(args: Args, reward: str) -> dict:
    """What a half is made with: a half kept from an earlier report must match it."""
    cfg = compare_config(args, reward)
    return {"total_env_steps": cfg.total_env_steps, "overrides": list(cfg.set), "seeds": cfg.seeds}


def kept_half(args: Args, reward: str) -> dict | None:
    """`reward`'s half of the report at `args.out` (results, date, and for gold the runs timed
    alone), when it was made with the settings asked for now; else None."""
    if not args.out.exists():
        return None
    old = read_json(args.out, "the earlier learning report")
    if old.get("settings", {}).get(reward) != half_settings(args, reward):
        return None
    dates = old.get("dates", {reward: old.get("date")})
    half = {"results": old["results"][reward], "date": dates.get(reward, old.get("date"))}
    if reward == "gold":
        half["timed_alone"] = old.get("timed_alone", {})
    return half


def main(args: Args) -> dict | None:
    for reward in args.rewards:
        compare_main(compare_config(args, reward))
    if not args.with_best_of_n:
        print("the JSON needs best-of-16: run once more with every algorithm and best-of-16 "
              "(finished runs are reused)")
        return None
    results, dates, alone = {}, {}, {}
    today = datetime.date.today().isoformat()
    for reward in ("gold", "learned"):
        if (args.out_dir / reward / "comparison.json").exists():
            runs = run_all(compare_config(args, reward))  # trains only what is missing
            labels = dict.fromkeys(r["algo"] for r in runs)
            results[reward] = {a: summarise([r for r in runs if r["algo"] == a]) for a in labels}
            dates[reward] = today
            if reward == "gold":
                alone = {algo: run_alone(args, algo) for algo in args.timed_alone}
        elif (kept := kept_half(args, reward)) is not None:
            print(f"{reward}: kept from {args.out} ({kept['date']})")
            results[reward], dates[reward] = kept["results"], kept["date"]
            alone = kept.get("timed_alone", alone)
        else:
            print(f"{reward}: no runs in {args.out_dir / reward} and no matching half in "
                  f"{args.out}: run it (`--rewards {reward}`), then once more")
            return None
    flat = {}
    for reward, rows in results.items():
        for algo, row in rows.items():
            key = algo.replace("-", "_").replace("++", "_pp").replace("best_of_n", "best_of_16")
            flat[f"{key}_{reward}_reward_gold"] = round(row["gold"]["mean"], 4)
            if algo != "best-of-n":  # no training: no curve, no training time
                flat[f"{key}_{reward}_reward_gold_drop"] = round(row["gold_drop"], 4)
                flat[f"{key}_{reward}_reward_seconds_shared"] = round(row["seconds"]["mean"], 1)
    for algo, timing in alone.items():
        key = algo.replace("-", "_").replace("++", "_pp")
        flat[f"{key}_gold_reward_seconds"] = round(timing["seconds"]["mean"], 1)
        flat[f"{key}_gold_reward_gold_alone"] = round(timing["gold"]["mean"], 4)
    report = {
        "what": "final held-out gold (eval split, every prompt x 4 samples) of each algorithm "
                "trained on gold and on the learned reward, against best-of-16 selected by the "
                "same reward; mean over seeds, standard error, per seed",
        "command": "python scripts/learning_results.py",
        "date": max(dates.values()),
        "dates": dates,
        "settings": {reward: half_settings(args, reward) for reward in results},
        "figures": flat,
        "targets": targets(results, alone),
        "timed_alone": alone,
        "results": results,
    }
    write_json(args.out, report)
    print(json.dumps({"figures": flat, "targets": report["targets"]}, indent=1))
    return report


if __name__ == "__main__":
    main(tyro.cli(Args))
