"""Iterated RLHF: alternate LM-PPO with retraining the reward model on the current policy.

The InstructGPT recipe's steps 2 (collect rankings, train a reward model) and 3 (optimise a
policy against it) can be repeated: once the policy has moved away from the SFT policy, the
reward model is judging text unlike anything it was trained on, and that is where it is
exploitable. Each round here

    1. trains LM-PPO for `env_steps_per_round` more env steps against the current reward
       model (one run resumed round after round: policy, value head, optimiser and the
       adaptive beta carry over; the KL reference stays the SFT policy);
    2. measures, on held-out (eval-split) prompts: the learned reward, gold, KL, and the
       reward model's gold accuracy on rankings of the *current* policy's samples;
    3. asks the simulated labeler to rank K samples of the current policy on
       `rankings_per_round` train prompts, adds them to the rankings of earlier rounds,
       and fine-tunes the reward model on them plus an equal share of fresh SFT rankings
       (so it does not forget the SFT distribution), then calibrates it again on SFT
       samples (mean 0, std 1: beta keeps its meaning).

Against it, the same seeds run a single round of the same total budget against the
shipped reward model. Writes results.json and results.md to --out-dir.

    textenv iterated-rlhf --rounds 3 --env-steps-per-round 20000 --seeds 1 2 3

Each seed's numbers are kept in its own directory (seedS/iterated/rows.json,
seedS/single/row.json) and reused by a later call with the same settings: seeds can run in
separate processes into one --out-dir, and a final call with all seeds writes the table.
"""

from __future__ import annotations

import copy
import json
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from agents.evaluation import mean_and_se
from agents.ppo import PPOConfig, train
from reward_models.evaluate import gold_accuracy, score_records
from reward_models.pipeline import RewardPipelineConfig, calibration_set, make_rankings
from reward_models.train import RMTrainConfig, calibrate, train_reward_model
from textenv.assets import load_policy, load_tokenizer, resolve_assets_dir
from textenv.rewards import RewardModel
from textenv.storage import atomic_write, read_json, write_json
from textenv.tasks import make_task

# What a round's assets directory needs besides the reward model: the env loads the
# tokenizer and the reference (SFT) policy from the same directory.
SHARED_ASSET_FILES = ("tokenizer.json", "sft.json", "sft.safetensors")


@dataclass
class IteratedRLHFConfig:
    """Iterated RLHF against a single round at the same total budget, same seeds: does
    retraining the reward model on the current policy's samples buy gold?"""

    out_dir: str = "runs/iterated_rlhf"
    """Where the runs, the per-round reward models and results.json/results.md go."""
    rounds: int = 3
    """RL rounds; the reward model is retrained between consecutive rounds."""
    env_steps_per_round: int = 20_000
    """LM-PPO env steps per round (the single-round baseline gets rounds times this)."""
    seeds: tuple[int, ...] = (1, 2, 3)
    """One iterated run and one single-round run per seed."""
    rankings_per_round: int = 1000
    """New rankings of the current policy's samples (train prompts) after each round."""
    k: int = 4
    """Responses per ranking."""
    eval_rankings: int = 256
    """Rankings of the current policy's samples on eval prompts, for the RM's accuracy."""
    calibration_samples: int = 1024
    """Fresh SFT samples that calibrate each retrained reward model (mean 0, std 1)."""
    labeler_temperature: float = RewardPipelineConfig.labeler_temperature
    """Bradley-Terry noise of the simulated labeler (as in the shipped build)."""
    rm_train: RMTrainConfig = field(default_factory=lambda: RMTrainConfig(
        epochs=4, lr=3e-4, batch_size=32, center_coef=0.1, head_lr_mult=1.0, patience=0,
        val_fraction=0.0))
    """Fine-tuning of the reward model between rounds (from the previous round's model).
    No held-out selection: on a small mixed validation set the starting model often has
    the lowest loss, and selecting it would silently undo the retraining."""
    single_round: bool = True
    """Also run the single-round baseline."""
    ppo: PPOConfig = field(default_factory=lambda: PPOConfig(eval_every=0))
    """LM-PPO settings shared by every run (task and assets_dir included). The learning
    rate anneals over the whole budget (rounds x env_steps_per_round) in both arms."""


def copy_assets(source: Path, target: Path, reward_model: RewardModel) -> Path:
    """A round's assets directory: the shared files of `source` plus `reward_model`."""
    target.mkdir(parents=True, exist_ok=True)
    for name in SHARED_ASSET_FILES:
        shutil.copy2(source / name, target / name)
    reward_model.save(target, "reward", extra={"trained_by": "agents.iterated_rlhf"})
    return target


def rm_gold_accuracy(rm: RewardModel, records, task) -> float:
    """The reward model's accuracy against gold on pairs of these rankings (>= 0.1 apart)."""
    gold = [[task.gold_score(r.prompt, x) for x in r.responses] for r in records]
    return gold_accuracy(score_records(rm, records), gold)[0]


def retrain_reward_model(rm: RewardModel, policy_rankings: list, sft, tokenizer, task,
                         cfg: IteratedRLHFConfig, seed: int) -> RewardModel:
    """Fine-tune a copy of `rm` on every policy ranking so far plus as many fresh SFT
    rankings, then calibrate it on SFT samples."""
    sft_rankings = make_rankings(sft, tokenizer, task, len(policy_rankings), cfg.k,
                                 split="train", labeler_temperature=cfg.labeler_temperature,
                                 seed=seed)
    new_rm = copy.deepcopy(rm).requires_grad_(True)  # the previous round's model stays as it was
    train_reward_model(new_rm, policy_rankings + sft_rankings,
                       replace(cfg.rm_train, seed=seed), progress=False)
    calibrate(new_rm, *calibration_set(sft, tokenizer, task, cfg.calibration_samples,
                                         seed=seed + 1))
    return new_rm.requires_grad_(False)


def measure(result: dict, rm: RewardModel, policy, tokenizer, task, cfg: IteratedRLHFConfig,
            seed: int) -> dict:
    """A round's numbers: the final evaluation of the run (eval and test splits) and the
    reward model's gold accuracy on fresh rankings of the policy's eval-prompt samples."""
    final = result["final"]
    records = make_rankings(policy, tokenizer, task, cfg.eval_rankings, cfg.k, split="eval",
                            labeler_temperature=cfg.labeler_temperature, seed=seed)
    return {"learned_reward": final["eval/reward_mean"], "gold": final["eval/gold_mean"],
            "test_gold": final["test/gold_mean"], "kl": final["eval/kl"],
            "env_steps": final["charts/env_steps"],
            "rm_accuracy_on_policy": rm_gold_accuracy(rm, records, task)}


def iterated_run(cfg: IteratedRLHFConfig, seed: int, shipped: Path, out: Path) -> list[dict]:
    """One seed of iterated RLHF; returns one row of numbers per round."""
    task = make_task(cfg.ppo.task, shipped)
    tokenizer = load_tokenizer(shipped)
    sft = load_policy("sft", shipped, tokenizer)
    rm = RewardModel.load(shipped, "reward").requires_grad_(False)
    assets = copy_assets(shipped, out / "round1" / "assets", rm)
    policy_rankings, rows = [], []
    for r in range(1, cfg.rounds + 1):
        print(f"== seed {seed}, round {r}/{cfg.rounds}")
        run_cfg = replace(cfg.ppo, seed=seed, assets_dir=str(assets), resume=r > 1,
                          total_env_steps=r * cfg.env_steps_per_round, run_dir=str(out / "run"),
                          anneal_env_steps=cfg.rounds * cfg.env_steps_per_round)
        result = train(run_cfg)
        if rows and result["final"]["charts/env_steps"] <= rows[-1]["env_steps"]:
            raise ValueError(f"round {r} ran no iteration: round {r - 1} overshot its budget by "
                             f"more than env_steps_per_round ({cfg.env_steps_per_round}); raise "
                             f"it above one iteration's env steps (num_envs x response length)")
        policy = result["agent"].lm
        row = {"round": r, **measure(result, rm, policy, tokenizer, task, cfg, seed + 1000 * r)}
        if r < cfg.rounds:
            policy_rankings += make_rankings(
                policy, tokenizer, task, cfg.rankings_per_round, cfg.k, split="train",
                labeler_temperature=cfg.labeler_temperature, seed=seed + 1000 * r + 1)
            rm = retrain_reward_model(rm, policy_rankings, sft, tokenizer, task, cfg,
                                      seed + 1000 * r + 2)
            # The retrained model on the same current-policy rankings: did it learn them?
            eval_records = make_rankings(policy, tokenizer, task, cfg.eval_rankings, cfg.k,
                                         split="eval", seed=seed + 1000 * r,
                                         labeler_temperature=cfg.labeler_temperature)
            row["retrained_rm_accuracy_on_policy"] = rm_gold_accuracy(rm, eval_records, task)
            assets = copy_assets(shipped, out / f"round{r + 1}" / "assets", rm)
        rows.append(row)
        print("   " + ", ".join(f"{k} {v:.3f}" for k, v in row.items() if k != "round"))
    return rows


def single_round_run(cfg: IteratedRLHFConfig, seed: int, shipped: Path, out: Path) -> dict:
    """The baseline: one round of the whole budget against the shipped reward model."""
    print(f"== seed {seed}, single round")
    task = make_task(cfg.ppo.task, shipped)
    tokenizer = load_tokenizer(shipped)
    rm = RewardModel.load(shipped, "reward").requires_grad_(False)
    run_cfg = replace(cfg.ppo, seed=seed, assets_dir=str(shipped), run_dir=str(out / "run"),
                      total_env_steps=cfg.rounds * cfg.env_steps_per_round)
    result = train(run_cfg)
    return measure(result, rm, result["agent"].lm, tokenizer, task, cfg,
                   seed + 1000 * cfg.rounds)


# What the single-round baseline's numbers depend on (the iterated runs: every setting but
# out_dir, seeds and single_round).
SINGLE_ROUND_SETTINGS = ("rounds", "env_steps_per_round", "k", "eval_rankings",
                         "labeler_temperature", "ppo")


def settings_key(cfg: IteratedRLHFConfig, single_round: bool) -> dict:
    """The settings a seed's iterated (or single-round) numbers depend on."""
    settings = asdict(cfg)
    if single_round:
        settings = {k: settings[k] for k in SINGLE_ROUND_SETTINGS}
    else:
        del settings["out_dir"], settings["seeds"], settings["single_round"]
    return json.loads(json.dumps(settings, default=str))  # tuples -> lists, as read back


def kept(path: Path, settings: dict, compute, *args):
    """`compute(*args)`'s numbers, kept in `path` and reused while `settings` stay the same."""
    if path.is_file():
        saved = read_json(path, "kept iterated-RLHF numbers")
        if saved.get("settings") != settings:
            changed = sorted(k for k in settings | saved.get("settings", {})
                             if settings.get(k) != saved.get("settings", {}).get(k))
            raise ValueError(f"{path} holds numbers made with other settings (differing: "
                             f"{', '.join(changed)}); use another --out-dir, or delete it")
        print(f"== reusing {path}")
        return saved["numbers"]
    numbers = compute(*args)
    write_json(path, {"settings": settings, "numbers": numbers})
    return numbers


def _mean_se(values: list[float]) -> str:
    mean, se = mean_and_se(np.asarray(values, dtype=np.float64))
    return f"{mean:.3f} ± {se:.3f}" if np.isfinite(se) else f"{mean:.3f}"


def markdown(iterated: dict[int, list[dict]], single: dict[int, dict],
             cfg: IteratedRLHFConfig) -> str:
    """Per round: mean ± standard error over seeds."""
    keys = ("env_steps", "learned_reward", "gold", "test_gold", "kl", "rm_accuracy_on_policy")
    lines = [f"Seeds {', '.join(map(str, cfg.seeds))}; mean ± standard error over seeds. "
             "Learned reward: the reward model the run trained against. RM accuracy: against "
             "gold, on rankings of the policy's own eval-prompt samples.", "",
             "| run | env steps | learned reward | gold (eval) | gold (test) | KL | "
             "RM accuracy on policy samples |", "|---|---|---|---|---|---|---|"]
    for r in range(cfg.rounds):
        rows = [iterated[s][r] for s in cfg.seeds]
        lines.append(f"| iterated, round {r + 1} | " + " | ".join(
            f"{rows[0][k]:.0f}" if k == "env_steps" else _mean_se([x[k] for x in rows])
            for k in keys) + " |")
    if single:
        rows = [single[s] for s in cfg.seeds]
        lines.append("| single round | " + " | ".join(
            f"{rows[0][k]:.0f}" if k == "env_steps" else _mean_se([x[k] for x in rows])
            for k in keys) + " |")
    retrained = [[iterated[s][r]["retrained_rm_accuracy_on_policy"] for s in cfg.seeds]
                 for r in range(cfg.rounds - 1)]
    if retrained:
        lines += ["", "RM accuracy on the same policy samples after retraining: " + ", ".join(
            f"round {r + 1} {_mean_se(v)}" for r, v in enumerate(retrained)) + "."]
    return "\n".join(lines)


def main(cfg: IteratedRLHFConfig) -> dict:
    """`textenv iterated-rlhf`: every seed's iterated and single-round runs, then the table."""
    if cfg.rounds < 1 or cfg.env_steps_per_round < 1:
        raise ValueError(f"rounds and env_steps_per_round must be >= 1, got {cfg.rounds} and "
                         f"{cfg.env_steps_per_round}")
    torch.set_num_threads(cfg.ppo.threads)
    out = Path(cfg.out_dir)
    shipped = resolve_assets_dir(cfg.ppo.assets_dir, cfg.ppo.task)
    iterated, single = {}, {}
    for s in cfg.seeds:
        seed_dir = out / f"seed{s}"
        iterated[s] = kept(seed_dir / "iterated" / "rows.json", settings_key(cfg, False),
                           iterated_run, cfg, s, shipped, seed_dir / "iterated")
        if cfg.single_round:
            single[s] = kept(seed_dir / "single" / "row.json", settings_key(cfg, True),
                             single_round_run, cfg, s, shipped, seed_dir / "single")
    table = markdown(iterated, single, cfg)
    results = {"iterated": {str(s): rows for s, rows in iterated.items()},
               "single_round": {str(s): row for s, row in single.items()},
               "config": {"rounds": cfg.rounds, "env_steps_per_round": cfg.env_steps_per_round,
                          "seeds": list(cfg.seeds), "rankings_per_round": cfg.rankings_per_round,
                          "k": cfg.k, "task": cfg.ppo.task}}
    write_json(out / "results.json", results)
    atomic_write(out / "results.md", table + "\n")
    print(table)
    return results
