"""Compare RL algorithms on TextGen-v0: algorithms x seeds x tasks at one budget of env steps.

    textenv compare                                       # the documented default (10 seeds)
    textenv compare --algos ppo rloo --seeds 3 --total-env-steps 10000
    textenv compare --algos ppo examples/reinforce_minimal.py      # a user's agent beside
    textenv compare --set ppo.learning_rate=3e-4 --reward gold --threads 1
    textenv compare --reuse --results-dir docs/results    # rebuild the report only

Every run trains under the same budget of env steps (generated tokens; best-of-n's samples
count too) and ends with the same fixed evaluation (every eval and test prompt x k samples,
one sampling seed for all: `agents.evaluation`). The report (`--out-dir`, and `--results-dir`
when given) holds:

    comparison.md     tables with 95% intervals: IQM / mean / median of final gold (rliable,
                      stratified bootstrap), gold on the test split, gold at KL = 1, 2, 4
                      nats, the area under the gold-vs-KL frontier, win rate against SFT,
                      env steps, gradient steps, wall-clock; probability of improvement for
                      every pair; the fitted over-optimisation curves
    comparison.json   the same numbers; per algorithm and task: iqm, iqm_ci_low,
                      iqm_ci_high, gold_at_kl, seeds, ...
    runs.csv          one row per run
    *.png             learning curves, gold-vs-KL frontier, performance profiles,
                      probability of improvement, the Gao et al. fits

An algorithm is a registered name (`agents.ALGORITHMS`), a variant `LABEL=NAME` (with its
own `--set LABEL.field=value` overrides), or the path of a user's agent file: a module
with a `Config` dataclass (the fields of `agents.training.RunConfig` that it uses) and
`train(config) -> {"policy": GPT, "history": [metric rows]}`; the harness evaluates the
returned policy with the same fixed evaluation as the built-ins.
"""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import io
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from agents import analysis
from agents.best_of_n import analytic_kl, best_of_n
from agents.evaluation import EvalSet
from agents.plots import (
    plot_frontier_with_ci,
    plot_gao_fits,
    plot_learning_curves,
    plot_performance_profiles,
    plot_probability_of_improvement,
)
from agents.training import RunConfig, final_evaluation, setup
from textenv.runlog import read_metrics_csv
from textenv.storage import atomic_write, read_json, write_json

SCORE = "eval/gold_mean"


@dataclass
class CompareConfig:
    """Algorithms x seeds x tasks at one budget of env steps, with the fixed evaluation,
    rliable aggregates, KL-matched gold and the over-optimisation fits."""

    algos: tuple[str, ...] = ("ppo", "reinforce", "rloo", "grpo", "dr-grpo", "reinforce++",
                              "best-of-n", "ppo-no-kl=ppo")
    """Algorithms: registered names, LABEL=NAME variants, or paths of user agent files."""
    set: tuple[str, ...] = ("ppo-no-kl.init_kl_coef=0", "ppo-no-kl.adaptive_kl=False")
    """Per-algorithm overrides LABEL.FIELD=VALUE (the default makes ppo-no-kl: LM-PPO
    without a KL penalty, which reaches the large KL the over-optimisation fit needs; it is
    ignored when ppo-no-kl is not among the algorithms)."""
    seeds: int = 20
    """Seeds per algorithm and task (1..seeds)."""
    tasks: tuple[str, ...] = ("reviews",)
    """Tasks to run every algorithm on."""
    total_env_steps: int = 10_000
    """The budget of every run, in env steps (generated tokens)."""
    reward: str = "learned"
    """Training reward of every run ("learned", "gold", "ensemble")."""
    threads: int = 2
    """torch threads per run."""
    eval_every: int = 4
    """Curve evaluations every this many iterations (points of the gold-vs-KL curves)."""
    eval_samples: int = 4
    """Samples per prompt of the final fixed evaluation."""
    kl_points: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)
    """KL values (nats) at which gold is read along each run."""
    overoptimization: tuple[str, ...] = ("ppo-no-kl",)
    """Algorithms whose gold-vs-KL curves feed the fit of R_RL(d)."""
    gao_n: int = 64
    """Candidates per prompt of the best-of-n curve for the fit of R_bon(d) (1: no fit)."""
    out_dir: str = "runs/compare"
    """Where the runs and the report go."""
    results_dir: str | None = None
    """Also copy the report here (e.g. docs/results)."""
    reuse: bool = False
    """Reuse runs already finished in out_dir instead of training them again."""
    progress: bool = False
    """Progress bars of each run."""
    bootstrap_reps: int = 5000
    """Bootstrap resamples of every interval."""


# ---- what to run -----------------------------------------------------------------------------
@dataclass
class Entry:
    label: str
    config_type: type
    train: object
    overrides: dict


def _parse_value(field_type, text: str):
    if field_type in (bool, "bool"):
        if text.lower() not in ("true", "false"):
            raise ValueError(f"expected true or false, got {text!r}")
        return text.lower() == "true"
    for kind in (int, float):
        if field_type in (kind, kind.__name__):
            return kind(text)
    if "None" in str(field_type) and text == "None":
        return None
    if "float" in str(field_type):
        return float(text)
    if "int" in str(field_type):
        return int(text)
    return text


def load_user_agent(path: Path) -> tuple[type, object]:
    """A user's agent file -> (its Config dataclass, its train function)."""
    if not path.is_file():
        raise FileNotFoundError(f"agent file not found: {path}")
    spec = importlib.util.spec_from_file_location(f"user_agent_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name in ("Config", "train"):
        if not hasattr(module, name):
            raise ValueError(f"{path}: an agent file defines `Config` (a dataclass) and "
                             f"`train(config)`; {name!r} is missing")
    return module.Config, module.train


def entries(cfg: CompareConfig) -> list[Entry]:
    """Resolve --algos and --set into what to run, with clear errors."""
    from agents import ALGORITHMS

    result = []
    for spec in cfg.algos:
        label, _, base = spec.partition("=")
        base = base or label
        if base.endswith(".py"):
            label = Path(label).stem if label == base else label
            config_type, train = load_user_agent(Path(base))
        elif base in ALGORITHMS:
            config_type, train = ALGORITHMS[base]
        else:
            raise ValueError(f"unknown algorithm {base!r}; valid: {', '.join(ALGORITHMS)}, "
                             f"LABEL=NAME, or the path of an agent file (*.py)")
        result.append(Entry(label, config_type, train, {}))
    by_label = {e.label: e for e in result}
    default_set = CompareConfig.set  # the dataclass's class attribute holds the default
    for item in cfg.set:
        target, _, value = item.partition("=")
        label, _, name = target.rpartition(".")  # a label may hold dots, a field not
        if item in default_set and label not in by_label:
            continue  # a default override of an algorithm the user did not select
        if label not in by_label or not name or not value:
            raise ValueError(f"--set {item!r}: expected LABEL.FIELD=VALUE with LABEL one of "
                             f"{', '.join(by_label)}")
        fields = {f.name: f.type for f in dataclasses.fields(by_label[label].config_type)}
        if name not in fields:
            raise ValueError(f"--set {item!r}: {label} has no field {name!r}; valid: "
                             f"{', '.join(fields)}")
        by_label[label].overrides[name] = _parse_value(fields[name], value)
    return result


def run_config(entry: Entry, cfg: CompareConfig, task: str, seed: int):
    fields = {f.name for f in dataclasses.fields(entry.config_type)}
    shared = dict(seed=seed, task=task, total_env_steps=cfg.total_env_steps,
                  run_dir=str(Path(cfg.out_dir) / task / entry.label / f"seed{seed}"),
                  reward=cfg.reward, threads=cfg.threads, eval_every=cfg.eval_every,
                  eval_samples=cfg.eval_samples, progress=cfg.progress, tensorboard=False)
    shared = {k: v for k, v in shared.items() if k in fields}
    return replace(entry.config_type(), **{**shared, **entry.overrides})


def train_one(entry: Entry, run_cfg) -> dict:
    """Train one run; a user's agent is evaluated here with the fixed evaluation."""
    t0 = time.perf_counter()
    result = entry.train(run_cfg)
    if "final" not in result:  # a user's agent returns its policy: the same evaluation
        eval_cfg = RunConfig(**{f.name: getattr(run_cfg, f.name)
                                for f in dataclasses.fields(RunConfig) if hasattr(run_cfg, f.name)})
        final = final_evaluation(result["policy"], setup(eval_cfg), eval_cfg)
        final.pop("samples")
        final["charts/wall_clock"] = time.perf_counter() - t0
        history = result.get("history", [])
        final["charts/env_steps"] = history[-1].get("charts/env_steps", np.nan) if history \
            else np.nan
        result = {"final": final, "history": history}
        write_json(Path(run_cfg.run_dir) / "final_eval.json", final)
    return result


def run_all(cfg: CompareConfig) -> list[dict]:
    """Train (or reuse) every task x algorithm x seed; one dict per run."""
    runs = []
    for task in cfg.tasks:
        for entry in entries(cfg):
            for seed in range(1, cfg.seeds + 1):
                run_cfg = run_config(entry, cfg, task, seed)
                run_dir = Path(run_cfg.run_dir)
                if cfg.reuse and (run_dir / "final_eval.json").exists():
                    metrics = run_dir / "metrics.csv"
                    result = {"final": read_json(run_dir / "final_eval.json", "final evaluation"),
                              "history": read_metrics_csv(metrics) if metrics.exists() else []}
                    curve = run_dir / "best_of_n_curve.json"
                    if curve.exists():
                        result["curve"] = json.loads(curve.read_text())
                else:
                    print(f"== {task} / {entry.label} / seed {seed}", flush=True)
                    result = train_one(entry, run_cfg)
                runs.append({"task": task, "algo": entry.label, "seed": seed,
                             "final": result["final"], "history": result["history"],
                             "curve": result.get("curve")})
    return runs


# ---- the analysis ----------------------------------------------------------------------------
def kl_curve(run: dict, sft_gold: float) -> list[tuple[float, float]]:
    """(KL, gold) along a run: the SFT start, every curve evaluation, the final one."""
    points = [(0.0, sft_gold)]
    points += [(r["eval/kl"], r["eval/gold_mean"]) for r in run["history"] if "eval/kl" in r]
    points.append((run["final"]["eval/kl"], run["final"]["eval/gold_mean"]))
    return points


def analyse(runs: list[dict], cfg: CompareConfig) -> dict:
    report = {"config": dataclasses.asdict(cfg), "tasks": {}}
    for task in dict.fromkeys(r["task"] for r in runs):
        task_runs = [r for r in runs if r["task"] == task]
        algos = list(dict.fromkeys(r["algo"] for r in task_runs))
        by_algo = {a: [r for r in task_runs if r["algo"] == a] for a in algos}
        scores = {a: np.array([[r["final"][SCORE]] for r in rs]) for a, rs in by_algo.items()}
        test = {a: np.array([[r["final"]["test/gold_mean"]] for r in rs])
                for a, rs in by_algo.items()}
        reps = cfg.bootstrap_reps
        agg, agg_test = analysis.aggregate(scores, reps), analysis.aggregate(test, reps)
        sft_gold, sft_reward = _sft_baseline(task, cfg)
        rows = {}
        for a, rs in by_algo.items():
            curves = [kl_curve(r, sft_gold) for r in rs]
            at_kl = {}
            for x in cfg.kl_points:
                values = np.array([analysis.gold_at_kl(c, x) for c in curves])
                reached = values[np.isfinite(values)]
                at_kl[f"{x:g}"] = {
                    "mean": float(reached.mean()) if len(reached) else None,
                    "ci_half_width": float(1.96 * reached.std(ddof=1) / np.sqrt(len(reached)))
                    if len(reached) > 1 else None,
                    "runs_reaching": int(len(reached))}
            auc = np.array([analysis.frontier_auc(c, max(cfg.kl_points)) for c in curves])
            finals = [r["final"] for r in rs]

            def mean(key, finals=finals):  # NaN where no run reports it
                values = np.array([f.get(key, np.nan) for f in finals], dtype=float)
                return float(values[np.isfinite(values)].mean()) if np.isfinite(values).any() \
                    else float("nan")

            rows[a] = {**agg[a], "seeds": [r["seed"] for r in rs],
                       "test_iqm": agg_test[a]["iqm"], "test_iqm_ci_low": agg_test[a]["iqm_ci_low"],
                       "test_iqm_ci_high": agg_test[a]["iqm_ci_high"],
                       "gold_at_kl": at_kl, "frontier_auc": float(np.mean(auc)),
                       "frontier_auc_ci_half_width":
                           float(1.96 * auc.std(ddof=1) / np.sqrt(len(auc))) if len(auc) > 1
                           else None,
                       "learned_reward": mean("eval/reward_mean"), "kl": mean("eval/kl"),
                       "win_rate": mean("eval/win_rate"), "env_steps": mean("charts/env_steps"),
                       "gradient_steps": mean("charts/gradient_steps"),
                       "wall_clock_s": mean("charts/wall_clock")}
        report["tasks"][task] = {
            "algorithms": rows, "sft_gold": sft_gold, "sft_reward": sft_reward,
            "probability_of_improvement": analysis.probability_of_improvement(scores, reps),
            "overoptimization": _gao_fits(by_algo, cfg, task, sft_gold, sft_reward),
            "bootstrap_reps": reps,
        }
    return report


def _sft_baseline(task: str, cfg: CompareConfig) -> tuple[float, float]:
    """The SFT policy's (gold, learned reward) on the fixed evaluation, where every run
    starts (drawn once per process: the win-rate baseline of every run)."""
    s = setup(replace(RunConfig(), task=task, eval_samples=cfg.eval_samples))
    per_slot = s.evaluator.sample(s.reference, EvalSet("eval", cfg.eval_samples))
    return float(per_slot["gold"].mean()), float(per_slot["reward"].mean())


def best_of_n_candidates(task: str, cfg: CompareConfig) -> dict:
    """best-of-1..gao_n candidates of the SFT policy on every eval prompt (one slot each):
    the points of the R_bon fit. Cached in out_dir/<task>/best_of_n_candidates.json."""
    path = Path(cfg.out_dir) / task / "best_of_n_candidates.json"
    if cfg.reuse and path.exists():
        return {k: np.array(v) for k, v in json.loads(path.read_text()).items()}
    s = setup(replace(RunConfig(), task=task))
    result = best_of_n(s.evaluator, EvalSet("eval", 1, seed=7), cfg.gao_n, "reward",
                       budget=float("inf"), seed=0)
    write_json(path, {k: v.tolist() for k, v in result["candidates"].items()})
    return result["candidates"]


def _bon_points(gold: np.ndarray, reward: np.ndarray, key: np.ndarray) -> np.ndarray:
    """(n, 3): sqrt KL of best-of-k, and its gold and proxy gain over k = 1, for k = 1..n,
    choosing by `key` (the learned reward) among the first k candidates of each slot."""
    n, slots = key.shape
    points = []
    for k in range(1, n + 1):
        best = key[:k].argmax(0)  # (S,)
        points.append((np.sqrt(analytic_kl(k)), gold[best, np.arange(slots)].mean(),
                       reward[best, np.arange(slots)].mean()))
    points = np.array(points)
    return points - np.array([0.0, points[0, 1], points[0, 2]])


def _gao_fits(by_algo: dict, cfg: CompareConfig, task: str, sft_gold: float,
              sft_reward: float) -> dict:
    """R_bon fitted to best-of-k of the SFT policy for k = 1..gao_n (intervals: bootstrap
    over prompts), R_RL to the over-optimisation runs (intervals: bootstrap over seeds),
    each for gold and for the learned (proxy) reward."""
    fits, curves = {}, {}
    if cfg.gao_n > 1:
        cand = best_of_n_candidates(task, cfg)
        gold, reward = cand["gold"], cand["reward"]  # (n, S)
        points = _bon_points(gold, reward, reward)
        curves["bon"] = points.tolist()
        rng = np.random.default_rng(0)
        boot = [_bon_points(gold[:, idx], reward[:, idx], reward[:, idx])
                for idx in (rng.integers(0, gold.shape[1], gold.shape[1])
                            for _ in range(200))]
        for col, name in ((1, "bon_gold"), (2, "bon_proxy")):
            fit = analysis.fit_bon(points[:, 0], points[:, col])
            draws = np.array([analysis.fit_bon(b[:, 0], b[:, col]) for b in boot])
            low, high = np.percentile(draws, [2.5, 97.5], axis=0)
            fits[name] = {"alpha": fit[0], "alpha_ci_low": float(low[0]),
                          "alpha_ci_high": float(high[0]), "beta": fit[1],
                          "beta_ci_low": float(low[1]), "beta_ci_high": float(high[1]),
                          "runs": 1, "points": len(points), "slots": int(gold.shape[1])}
    rl_runs = [r for a in cfg.overoptimization for r in by_algo.get(a, [])]
    for key, base, name in (("eval/gold_mean", sft_gold, "rl_gold"),
                            ("eval/reward_mean", sft_reward, "rl_proxy")):
        runs = [np.array(pts) for r in rl_runs
                if (pts := [(np.sqrt(max(row["eval/kl"], 0.0)), row[key] - base)
                            for row in r["history"] if "eval/kl" in row and key in row])]
        if runs:
            fits[name] = analysis.fit_with_ci(runs, "rl", reps=min(cfg.bootstrap_reps, 2000))
    return {"fits": fits, "bon_points": curves.get("bon", [])}


# ---- the report ------------------------------------------------------------------------------
def _ci(row: dict, key: str) -> str:
    return f"{row[key]:.3f} [{row[f'{key}_ci_low']:.3f}, {row[f'{key}_ci_high']:.3f}]"


def markdown(report: dict) -> str:
    cfg = report["config"]
    lines = [f"Budget: {cfg['total_env_steps']} env steps per run, {cfg['seeds']} seeds, "
             f"training reward `{cfg['reward']}`; final evaluation: every prompt of the eval "
             f"and test splits x {cfg['eval_samples']} samples (the same slots and sampling "
             f"seed for every run). Intervals are 95%: stratified bootstrap (rliable) for "
             f"IQM/mean/median (rliable's median is over tasks of the per-task mean: with one "
             f"task it equals the mean); mean ± 1.96 SE over seeds for the KL-matched "
             f"columns.", ""]
    for task, t in report["tasks"].items():
        rows = t["algorithms"]
        kls = list(next(iter(rows.values()))["gold_at_kl"])
        lines += [f"### Task `{task}` (SFT gold {t['sft_gold']:.3f})", "",
                  "| algorithm | seeds | gold IQM | gold mean | gold median | test gold IQM | "
                  "win rate vs SFT | learned reward | KL | env steps | gradient steps | "
                  "wall-clock (s) |", "|---|" + "---|" * 11]
        for a, r in rows.items():
            lines.append(
                f"| {a} | {len(r['seeds'])} | {_ci(r, 'iqm')} | {_ci(r, 'mean')} | "
                f"{_ci(r, 'median')} | {r['test_iqm']:.3f} [{r['test_iqm_ci_low']:.3f}, "
                f"{r['test_iqm_ci_high']:.3f}] | {r['win_rate']:.3f} | "
                f"{r['learned_reward']:.3f} | {r['kl']:.2f} | {r['env_steps']:.0f} | "
                f"{r['gradient_steps']:.0f} | {r['wall_clock_s']:.0f} |")
        lines += ["", "KL-matched gold (runs reaching that KL in brackets) and the area under "
                  "the gold-vs-KL frontier over [0, 4] nats:", "",
                  "| algorithm | " + " | ".join(f"gold at KL {k}" for k in kls)
                  + " | frontier AUC |", "|---|" + "---|" * (len(kls) + 1)]
        for a, r in rows.items():
            cells = []
            for k in kls:
                g = r["gold_at_kl"][k]
                hw = f" ± {g['ci_half_width']:.3f}" if g["ci_half_width"] is not None else ""
                cells.append(f"{g['mean']:.3f}{hw} ({g['runs_reaching']})" if g["mean"] is not None
                             else "— (0)")
            hw = r["frontier_auc_ci_half_width"]
            lines.append(f"| {a} | " + " | ".join(cells)
                         + f" | {r['frontier_auc']:.3f}{f' ± {hw:.3f}' if hw else ''} |")
        lines += ["", "Probability of improvement P(row > column) on final gold, 95% interval:",
                  "", "| | " + " | ".join(rows) + " |", "|---|" + "---|" * len(rows)]
        poi = {(p["x"], p["y"]): p for p in t["probability_of_improvement"]}
        for x in rows:
            cells = ["—" if x == y else f"{poi[x, y]['p']:.2f} [{poi[x, y]['ci_low']:.2f}, "
                     f"{poi[x, y]['ci_high']:.2f}]" for y in rows]
            lines.append(f"| {x} | " + " | ".join(cells) + " |")
        if t["overoptimization"]["fits"]:
            lines += ["", "Over-optimisation fits (Gao et al. 2022), d = sqrt(KL), gain over "
                      "the SFT policy; R_bon on best-of-k of the SFT policy (intervals: "
                      "bootstrap over prompts), R_RL on the runs listed in "
                      "`overoptimization` (intervals: bootstrap over seeds):", "",
                      "| fit | alpha | beta | runs | points |", "|---|---|---|---|---|"]
            for name, f in t["overoptimization"]["fits"].items():
                lines.append(f"| {name} | {_ci(f, 'alpha')} | {_ci(f, 'beta')} | {f['runs']} "
                             f"| {f['points']} |")
        lines.append("")
    return "\n".join(lines)


def write_report(runs: list[dict], report: dict, out: Path) -> None:
    flat = [{"task": r["task"], "algo": r["algo"], "seed": r["seed"], **r["final"]} for r in runs]
    keys = list(dict.fromkeys(k for r in flat for k in r))
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=keys, restval="")
    writer.writeheader()
    writer.writerows(flat)
    atomic_write(out / "runs.csv", text.getvalue())
    write_json(out / "comparison.json", report)
    atomic_write(out / "comparison.md", markdown(report) + "\n")
    for task, t in report["tasks"].items():
        task_runs = [r for r in runs if r["task"] == task]
        algos = list(t["algorithms"])
        suffix = "" if len(report["tasks"]) == 1 else f"_{task}"
        plot_learning_curves({a: [r["history"] for r in task_runs
                                  if r["algo"] == a and r["history"]] for a in algos},
                             out / f"learning_curves{suffix}.png",
                             title=f"{task}: equal env-step budget, mean ± std over seeds")
        plot_frontier_with_ci({a: [kl_curve(r, t["sft_gold"]) for r in task_runs
                                   if r["algo"] == a] for a in algos},
                              out / f"frontier{suffix}.png", title=f"{task}: gold against KL")
        scores = {a: np.array([[r["final"][SCORE]] for r in task_runs if r["algo"] == a])
                  for a in algos}
        plot_performance_profiles(scores, out / f"performance_profiles{suffix}.png",
                                  reps=min(report["config"]["bootstrap_reps"], 2000))
        plot_probability_of_improvement(t["probability_of_improvement"],
                                        out / f"probability_of_improvement{suffix}.png")
        if t["overoptimization"]["fits"]:
            plot_gao_fits(task_runs, t, cfg_overoptimization=report["config"]["overoptimization"],
                          path=out / f"overoptimization{suffix}.png")


def main(cfg: CompareConfig) -> dict:
    """`textenv compare`: run (or reuse) everything, analyse, write the report."""
    runs = run_all(cfg)
    report = analyse(runs, cfg)
    for out in {Path(cfg.out_dir), *([Path(cfg.results_dir)] if cfg.results_dir else [])}:
        write_report(runs, report, out)
    print(markdown(report))
    print(f"wrote {cfg.out_dir}" + (f" and {cfg.results_dir}" if cfg.results_dir else ""))
    return report
