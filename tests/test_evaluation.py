"""The evaluation protocol: the fixed evaluation, best-of-n under the budget, the statistics
of a comparison, the comparison harness with a user's agent, and KV-cache decoding from
observations (the public API such an agent uses)."""

import json
import math
import sys
from dataclasses import replace
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

import textenv
from agents import analysis
from agents.best_of_n import BestOfNConfig, analytic_kl
from agents.best_of_n import train as best_of_n
from agents.compare import CompareConfig, entries
from agents.compare import main as compare
from agents.evaluation import EvalSet, Evaluator, win_rate
from agents.training import shared_evaluator
from textenv.assets import ASSETS_DIR, load_reference

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def evaluator():
    return shared_evaluator(str(ASSETS_DIR.resolve()), "reviews", 24, 1.0)


def test_eval_set_is_every_prompt_of_the_split_k_times():
    task = textenv.TextGenEnv(reward="gold").task
    slots = EvalSet("test", 3).slots(task)
    assert len(slots) == 3 * len(task.prompts("test"))
    assert slots[:3] == [task.prompts("test")[0]] * 3


def test_fixed_evaluation_is_the_same_for_every_run(evaluator):
    """Same slots, same sampling seed: two evaluators give identical samples, and the
    reference against itself wins exactly half the time (every slot a tie)."""
    ref = evaluator.reference
    a = evaluator(ref, EvalSet("eval", 1))
    other = Evaluator(load_reference(ASSETS_DIR), max_new_tokens=24)
    b = other(other.reference, EvalSet("eval", 1))
    assert a["samples"] == b["samples"]
    assert a["eval/win_rate"] == 0.5 and a["eval/samples"] == len(a["samples"])
    for key in ("gold", "reward", "kl", "response_length", "eos_rate"):
        assert math.isfinite(a[f"eval/{key}_se"]) and a[f"eval/{key}_se"] >= 0
    assert abs(a["eval/kl"]) < 1e-4  # the reference against itself


def test_evaluation_reports_the_ensemble_when_the_assets_hold_only_an_ensemble(tmp_path,
                                                                               evaluator):
    """An assets directory with a reward ensemble and no single reward model: eval/reward
    is the ensemble's score, not gold. Two copies of the shipped model in mean mode score
    exactly as the shipped model does."""
    import shutil

    from textenv.rewards import RewardEnsemble, RewardModel

    for name in ("tokenizer.json", "sft.json", "sft.safetensors"):
        shutil.copy(ASSETS_DIR / name, tmp_path / name)
    rm = RewardModel.load(ASSETS_DIR, "reward")
    RewardEnsemble([rm, rm], mode="mean").save(tmp_path)
    ens = Evaluator(load_reference(tmp_path), assets_dir=tmp_path, max_new_tokens=24)
    a = ens(ens.reference, EvalSet("test", 1), win_rate=False)
    b = evaluator(evaluator.reference, EvalSet("test", 1), win_rate=False)
    assert a["samples"] == b["samples"] and a["test/gold_mean"] == b["test/gold_mean"]
    assert a["test/reward_mean"] != a["test/gold_mean"]
    assert a["test/reward_mean"] == pytest.approx(b["test/reward_mean"], abs=1e-4)


def test_win_rate_by_hand():
    rate, low, high = win_rate(np.array([1.0, 0.5, 0.2, 0.2]), np.array([0.0, 0.5, 0.9, 0.2]))
    assert rate == pytest.approx((1 + 0.5 + 0 + 0.5) / 4) and low <= rate <= high


def test_win_rate_without_gold_is_nan_not_a_loss():
    assert all(np.isnan(win_rate(np.array([np.nan, np.nan]), np.array([0.2, 0.3]))))


def test_evaluation_reports_the_learned_reward_when_training_on_gold(tmp_path):
    from agents.reinforce import ReinforceConfig, train

    cfg = replace(ReinforceConfig(), run_dir=str(tmp_path), reward="gold", num_envs=8,
                  max_new_tokens=24, total_env_steps=200, eval_samples=1, threads=1,
                  progress=False, tensorboard=False)
    final = train(cfg)["final"]
    for split in ("eval", "test"):
        assert 0 <= final[f"{split}/gold_mean"] <= 1
        assert final[f"{split}/reward_mean"] != final[f"{split}/gold_mean"]  # the learned one
        assert 0 <= final[f"{split}/win_rate_ci_low"] <= final[f"{split}/win_rate"] <= 1
    assert final["charts/gradient_steps"] >= 1


def test_best_of_n_spends_the_budget_and_no_more(tmp_path):
    cfg = replace(BestOfNConfig(), run_dir=str(tmp_path), n=16, total_env_steps=3000,
                  eval_samples=1, max_new_tokens=24, threads=1)
    result = best_of_n(cfg)
    final, curve = result["final"], result["curve"]
    n = int(final["eval/best_of_n"])
    assert 1 < n < 16  # the budget, not n, stopped it
    per_round = final["charts/env_steps"] / (n - 1)  # the extra rounds are what it spends
    assert final["charts/env_steps"] <= cfg.total_env_steps + per_round * 0.5
    assert final["eval/kl"] == pytest.approx(analytic_kl(n))
    assert [p["n"] for p in curve] == list(range(1, n + 1))
    assert curve[-1]["gold"] == pytest.approx(final["eval/gold_mean"])


# ---- statistics ------------------------------------------------------------------------------
def test_gold_at_kl_and_frontier_by_hand():
    curve = [(0.0, 0.3), (1.0, 0.5), (3.0, 0.6), (2.0, 0.4)]
    assert analysis.gold_at_kl(curve, 0.5) == pytest.approx(0.4)
    assert analysis.gold_at_kl(curve, 2.0) == pytest.approx(0.55)  # the first crossing
    assert math.isnan(analysis.gold_at_kl(curve, 4.0))  # never reached
    # frontier: 0.3 on [0, 1), 0.5 on [1, 3), 0.6 on [3, 4]
    assert analysis.frontier_auc(curve, 4.0, points=4001) == pytest.approx(
        (0.3 * 1 + 0.5 * 2 + 0.6 * 1) / 4, abs=1e-3)


def test_gao_fits_recover_known_coefficients():
    d = np.linspace(0.1, 3.0, 30)
    bon = [np.stack([d, d * (0.8 - 0.1 * d)], 1)]
    rl = [np.stack([d, d * (0.5 - 0.2 * np.log(d))], 1)]
    assert analysis.fit_bon(*bon[0].T) == pytest.approx((0.8, 0.1))
    assert analysis.fit_rl(*rl[0].T) == pytest.approx((0.5, 0.2))
    fit = analysis.fit_with_ci(bon * 3, "bon", reps=50)
    assert fit["alpha_ci_low"] <= fit["alpha"] <= fit["alpha_ci_high"]


def test_rliable_aggregates_and_probability_of_improvement():
    rng = np.random.default_rng(0)
    scores = {"good": rng.normal(0.7, 0.02, (10, 1)), "bad": rng.normal(0.5, 0.02, (10, 1))}
    agg = analysis.aggregate(scores, reps=500)
    assert agg["good"]["iqm_ci_low"] <= agg["good"]["iqm"] <= agg["good"]["iqm_ci_high"]
    assert agg["good"]["iqm_ci_low"] > agg["bad"]["iqm_ci_high"]
    assert agg["good"]["std"] == pytest.approx(scores["good"].std(ddof=1))
    poi = {(p["x"], p["y"]): p for p in analysis.probability_of_improvement(scores, reps=500)}
    assert poi["good", "bad"]["p"] == 1.0 and poi["bad", "good"]["p"] == 0.0


# ---- the harness -----------------------------------------------------------------------------
def test_overrides_and_algorithm_names_are_checked():
    with pytest.raises(ValueError, match="unknown algorithm 'ppo2'"):
        entries(CompareConfig(algos=("ppo2",), set=()))
    with pytest.raises(ValueError, match="has no field 'lr'"):
        entries(CompareConfig(algos=("ppo",), set=("ppo.lr=1",)))
    (e,) = entries(CompareConfig(algos=("fast=ppo",), set=("fast.learning_rate=3e-4",
                                                           "fast.adaptive_kl=false")))
    assert e.overrides == {"learning_rate": 3e-4, "adaptive_kl": False}
    (e,) = entries(CompareConfig(algos=("ppo-beta0.1=ppo",), set=("ppo-beta0.1.init_kl_coef=0.1",)))
    assert e.label == "ppo-beta0.1" and e.overrides == {"init_kl_coef": 0.1}
    # The default overrides make ppo-no-kl; without it among the algorithms they are dropped,
    # while any other override of a label that is not selected is still an error.
    (e,) = entries(CompareConfig(algos=("ppo",)))
    assert e.label == "ppo" and e.overrides == {}
    (e,) = entries(CompareConfig(algos=("ppo", "ppo-no-kl=ppo")))[1:]
    assert e.overrides == {"init_kl_coef": 0.0, "adaptive_kl": False}
    with pytest.raises(ValueError, match="LABEL one of ppo"):
        entries(CompareConfig(algos=("ppo",), set=("ppo-nokl.init_kl_coef=0",)))


def test_comparison_with_a_user_agent_writes_the_report(tmp_path):
    agent = str(ROOT / "examples" / "reinforce_minimal.py")
    cfg = CompareConfig(algos=("reinforce", "best-of-n", agent), set=(), seeds=2,
                        total_env_steps=600, eval_samples=1, eval_every=1, threads=1,
                        bootstrap_reps=200, gao_n=4,
                        out_dir=str(tmp_path / "runs"), results_dir=str(tmp_path / "results"))
    compare(cfg)
    report = json.loads((tmp_path / "results" / "comparison.json").read_text())
    rows = report["tasks"]["reviews"]["algorithms"]
    assert set(rows) == {"reinforce", "best-of-n", "reinforce_minimal"}
    for row in rows.values():
        assert row["iqm_ci_low"] <= row["iqm"] <= row["iqm_ci_high"]
        assert set(row["gold_at_kl"]) == {"0.5", "1", "2", "4"} and row["seeds"] == [1, 2]
    pairs = report["tasks"]["reviews"]["probability_of_improvement"]
    assert len(pairs) == 6 and all(0 <= p["ci_low"] <= p["p"] <= p["ci_high"] <= 1
                                   for p in pairs)
    for name in ("comparison.md", "runs.csv", "learning_curves.png", "frontier.png",
                 "performance_profiles.png", "probability_of_improvement.png",
                 "overoptimization.png"):
        assert (tmp_path / "results" / name).stat().st_size > 0


# ---- decoding from observations ----------------------------------------------------------------
def test_policy_decoder_matches_the_full_forward_across_autoresets():
    envs = gym.make_vec("TextGen-v0", num_envs=3, reward="gold", max_new_tokens=5,
                        observation_mode="dict", vectorization_mode="vector_entry_point")
    policy = textenv.load_policy()
    decoder = textenv.PolicyDecoder(policy, num_envs=3)
    obs, _ = envs.reset(seed=0)
    rng = np.random.default_rng(0)
    resets = 0
    for _ in range(30):
        logits = decoder.next_logits(obs)  # (3, V)
        ids = torch.as_tensor(obs["input_ids"])
        mask = torch.as_tensor(obs["attention_mask"]).bool()
        with torch.no_grad():
            full = policy(ids, mask)  # (3, L, V)
        last = mask.sum(1) - 1
        want = full[torch.arange(3), last]
        want[:, [0, 1, 3]] = float("-inf")  # <pad>, <bos>, <unk> are never emitted
        torch.testing.assert_close(logits, want, atol=1e-4, rtol=0)
        assert decoder.next_logits(obs) is not None  # a second call changes nothing
        actions = rng.integers(4, envs.single_action_space.n, 3)
        actions[rng.random(3) < 0.3] = envs.unwrapped.tokenizer.eos_id
        obs, _, terminated, _, _ = envs.step(actions)
        resets += int(terminated.sum())
    assert resets >= 5


# ---- scripts/learning_results.py: the summary and the targets ----------------------------------
def _learning_results_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "learning_results", ROOT / "scripts" / "learning_results.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _fake_run(curve, final, seconds=100.0):
    history = [{"eval/gold_mean": g, "charts/env_steps": 1000.0 * (i + 1)}
               for i, g in enumerate(curve)]
    return {"history": history, "final": {
        "eval/gold_mean": final, "test/gold_mean": final - 0.05, "eval/kl": 2.0,
        "eval/reward_mean": 1.0, "charts/wall_clock": seconds, "charts/env_steps": 5000.0}}


def test_learning_results_summary_and_targets():
    lr = _learning_results_module()
    # Two seeds: the seed-averaged curve peaks at 0.6, the final gold averages 0.55.
    row = lr.summarise([_fake_run([0.4, 0.6, 0.5], 0.5), _fake_run([0.4, 0.6, 0.6], 0.6)])
    assert row["gold"]["mean"] == pytest.approx(0.55)
    assert row["gold"]["se"] == pytest.approx(0.05)
    assert row["peak_gold"] == pytest.approx(0.6) and row["gold_drop"] == pytest.approx(0.05)
    bo16 = lr.summarise([_fake_run([], 0.5)])
    results = {"gold": {"ppo": lr.summarise([_fake_run([0.9], 0.95)]), "best-of-n": bo16},
               "learned": {"ppo": row, "best-of-n": bo16}}
    fast = {"ppo": {"seconds": {"mean": 200.0}}}
    slow = {"ppo": {"seconds": {"mean": 400.0}}}
    gold_target, learned_target = lr.targets(results, fast)
    assert gold_target["met"] and not lr.targets(results, slow)[0]["met"]
    # 0.55 >= 0.5 + 0.05, but the drop from the peak (0.05) exceeds 0.02.
    assert not learned_target["met"] and learned_target["gold_drop"] == pytest.approx(0.05)


def test_learning_results_keeps_a_half_only_with_its_settings(tmp_path):
    lr = _learning_results_module()
    args = lr.Args(out=tmp_path / "learning.json")
    assert lr.kept_half(args, "gold") is None  # no earlier report
    gold = {"ppo": {"gold": {"mean": 0.97}}}
    report = {"date": "2026-01-02", "settings": {"gold": lr.half_settings(args, "gold")},
              "results": {"gold": gold}, "timed_alone": {"ppo": {"seconds": {"mean": 190.0}}}}
    args.out.write_text(json.dumps(report))
    kept = lr.kept_half(args, "gold")
    assert kept["results"] == gold and kept["date"] == "2026-01-02"
    assert kept["timed_alone"]["ppo"]["seconds"]["mean"] == 190.0
    # Another budget, or a half the report does not hold: nothing is kept.
    assert lr.kept_half(lr.Args(out=args.out, gold_env_steps=1000), "gold") is None
    assert lr.kept_half(args, "learned") is None
