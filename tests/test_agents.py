"""Agents: the algorithm-specific math, a tiny-budget run of every algorithm, and resume."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from agents import ALGORITHMS
from agents.best_of_n import analytic_kl
from agents.core import kl_k1, sequence_policy_gradient_loss
from agents.grpo import group_advantages
from agents.ppo import ActorCritic, per_token_rewards
from agents.rloo import leave_one_out_advantages
from textenv.model import GPT, GPTConfig
from textenv.storage import Checkpoints

ROOT = Path(__file__).resolve().parent.parent
TINY = {"num_envs": 8, "max_new_tokens": 24, "eval_samples": 1, "eval_every": 1,
        "threads": 1, "progress": False, "tensorboard": False, "total_env_steps": 2 * 8 * 24}


def test_per_token_rewards_put_score_on_last_real_token():
    logp = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -1.0, 0.0]])
    logp_ref = torch.tensor([[-1.5, -2.0, -2.0], [-2.0, -1.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    scores = torch.tensor([2.0, -1.0])
    rewards, kl = per_token_rewards(scores, logp, logp_ref, mask, beta=0.1, estimator="k1")
    expected = torch.tensor([[-0.05, 0.0, 0.1 + 2.0], [-0.1, -1.0, 0.0]])
    assert torch.allclose(rewards, expected)
    assert torch.allclose(kl, kl_k1(logp, logp_ref) * mask)


def test_leave_one_out_and_group_advantages_by_hand():
    r = torch.tensor([1.0, 2.0, 3.0, 0.0, 0.0, 4.0])  # two groups of 3
    # group 1: 1 - (2+3)/2 = -1.5, 2 - 2 = 0, 3 - 1.5 = 1.5 ; group 2: -2, -2, 4
    assert torch.allclose(leave_one_out_advantages(r, 3),
                          torch.tensor([-1.5, 0.0, 1.5, -2.0, -2.0, 4.0]))
    g = group_advantages(torch.tensor([1.0, 3.0, 5.0, 5.0]), 2)
    s = torch.tensor([1.0, 3.0]).std().item()  # sample std of a pair differing by 2
    assert torch.allclose(g, torch.tensor([-1 / s, 1 / s, 0.0, 0.0]), atol=1e-3)


def test_sequence_policy_gradient_loss_is_minus_advantage_times_logprob():
    logp = torch.tensor([[-1.0, -2.0], [-0.5, -9.0]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    loss = sequence_policy_gradient_loss(logp, torch.tensor([2.0, -1.0]), mask)
    assert loss.item() == pytest.approx(-(2.0 * -3.0 + -1.0 * -0.5) / 2)
    loss.backward()
    assert torch.allclose(logp.grad, torch.tensor([[-1.0, -1.0], [0.5, 0.0]]))


def test_best_of_n_analytic_kl():
    assert analytic_kl(1) == 0.0
    assert analytic_kl(16) == pytest.approx(math.log(16) - 15 / 16)


def test_actor_critic_value_head_starts_at_zero_and_policy_equals_sft():
    torch.manual_seed(0)
    sft = GPT(GPTConfig(vocab_size=20, block_size=16, n_layer=1, n_head=2, n_embd=16))
    ac = ActorCritic(sft, separate_critic=True)
    ids = torch.randint(0, 20, (3, 7))
    logits, values = ac(ids, torch.ones_like(ids, dtype=torch.bool))
    assert torch.equal(values, torch.zeros(3, 7))
    assert torch.allclose(logits, sft(ids))
    action, logp, ent, value = ac.get_action_and_value(ids, torch.ones_like(ids))
    assert action.shape == logp.shape == ent.shape == value.shape == (3,)


@pytest.mark.parametrize("algo", list(ALGORITHMS))
def test_every_algorithm_runs_on_a_tiny_budget(algo, tmp_path):
    cls, train = ALGORITHMS[algo]
    extra = {"n": 4} if algo == "best-of-n" else {}
    if algo == "sb3-ppo":
        extra = {"n_envs": 2, "n_steps": 16, "batch_size": 16, "n_epochs": 1,
                 "total_env_steps": 64}
    cfg = replace(cls(), run_dir=str(tmp_path / algo), **{**TINY, **extra})
    result = train(cfg)
    final = result["final"]
    assert 0.0 <= final["eval/gold_mean"] <= 1.0
    assert math.isfinite(final["eval/reward_mean"]) and math.isfinite(final["eval/kl"])
    assert (tmp_path / algo / "final_eval.json").exists()
    if algo == "sb3-ppo":  # 2 rollouts of 16 steps: every env ends an episode (<= 24 tokens)
        rows = _metrics(tmp_path / algo)
        assert len(rows) == len(result["history"]) >= 1
        assert float(rows[1]["env/gold_mean"]) == result["history"][0]["env/gold_mean"]
    if algo not in ("best-of-n", "sb3-ppo"):
        steps = [row["charts/env_steps"] for row in result["history"]]
        assert steps[-1] >= cfg.total_env_steps > (steps[-2] if len(steps) > 1 else 0)
        assert (tmp_path / algo / "metrics.csv").exists()
        latest = Checkpoints(tmp_path / algo).latest()
        assert (latest / "model.safetensors").exists() and (latest / "state.json").exists()


def _ppo_cmd(run_dir, extra=()):
    args = [f"--run-dir={run_dir}", "--num-envs=8", "--max-new-tokens=24", "--eval-every=0",
            "--eval-samples=1", "--threads=1", "--no-progress", "--no-tensorboard",
            "--checkpoint-every=1", f"--total-env-steps={3 * 8 * 24}", *extra]
    return [sys.executable, str(ROOT / "scripts" / "train_ppo.py"), *args]


def _metrics(run_dir):
    import csv

    with open(Path(run_dir) / "metrics.csv") as f:
        return {int(float(r["iteration"])): r for r in csv.DictReader(f)}


def test_ctrl_c_saves_and_resume_gives_the_same_next_iteration(tmp_path):
    """Uninterrupted run vs. a run stopped by SIGINT and resumed: same metrics after."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    full = tmp_path / "full"
    subprocess.run(_ppo_cmd(full), check=True, env=env, capture_output=True, timeout=300)

    cut = tmp_path / "cut"
    proc = subprocess.Popen(_ppo_cmd(cut), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not (cut / "metrics.csv").exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-2000:]
    state = json.loads((Checkpoints(cut).latest() / "state.json").read_text())
    stopped = state["iteration"]
    assert "interrupted: checkpoint saved" in out or stopped == max(_metrics(full))
    subprocess.run(_ppo_cmd(cut, ["--resume"]), check=True, env=env, capture_output=True,
                   timeout=300)
    a, b = _metrics(full), _metrics(cut)
    assert sorted(b) == sorted(a) and len(a) >= 3
    for it in sorted(a):
        for key in ("env/gold_mean", "env/reward_mean", "objective/kl", "losses/policy_loss",
                    "losses/value_loss", "objective/kl_coef"):
            assert float(a[it][key]) == pytest.approx(float(b[it][key]), abs=1e-6), (it, key)


def test_non_finite_loss_stops_and_names_the_iteration(tmp_path, monkeypatch):
    import agents.ppo as ppo

    real = ppo.policy_loss_clipped

    def poisoned(*args, **kwargs):
        loss, stats = real(*args, **kwargs)
        return loss * float("nan"), stats

    monkeypatch.setattr(ppo, "policy_loss_clipped", poisoned)
    cfg = replace(ppo.PPOConfig(), run_dir=str(tmp_path / "nan"), **TINY)
    with pytest.raises(RuntimeError, match="iteration 1"):
        ppo.train(cfg)
    assert Checkpoints(tmp_path / "nan").latest() is None


def test_learning_rate_anneals_over_anneal_env_steps(tmp_path):
    """With anneal_env_steps set beyond the budget (iterated RLHF's rounds), the rate falls
    on that longer schedule; below the budget it is refused."""
    from agents import ppo

    horizon = 4 * TINY["total_env_steps"]
    cfg = replace(ppo.PPOConfig(), run_dir=str(tmp_path / "run"), anneal_env_steps=horizon,
                  **TINY)
    ppo.train(cfg)
    rows = _metrics(cfg.run_dir)
    steps_before = {it: float(rows[it - 1]["charts/env_steps"]) if it > 1 else 0.0
                    for it in rows}
    assert len(rows) >= 2
    for it, row in rows.items():
        expected = (1.0 - steps_before[it] / horizon) * cfg.learning_rate
        assert float(row["charts/learning_rate"]) == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="anneal_env_steps"):
        ppo.PPO(replace(cfg, anneal_env_steps=TINY["total_env_steps"] - 1))


SB3_TINY = ["--num-envs=8", "--max-new-tokens=24", "--eval-samples=1", "--threads=1",
            "--no-progress", "--no-tensorboard", "--n-envs=2", "--n-steps=16",
            "--batch-size=16", "--n-epochs=1", "--checkpoint-every=1"]


def _sb3_cmd(run_dir, total, extra=()):
    return [sys.executable, str(ROOT / "scripts" / "train.py"), "sb3-ppo",
            f"--run-dir={run_dir}", f"--total-env-steps={total}", *SB3_TINY, *extra]


def test_sb3_runner_checkpoints_resumes_and_saves_on_ctrl_c(tmp_path):
    """The SB3 runner keeps the same promises as textenv's own loop: checkpoint sets every
    `checkpoint_every` rollouts, --resume continues from the newest one, Ctrl-C saves."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run_dir = tmp_path / "sb3"
    proc = subprocess.Popen(_sb3_cmd(run_dir, 10_000), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while Checkpoints(run_dir).latest() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-2000:]
    assert "interrupted: checkpoint saved" in out
    state = json.loads((Checkpoints(run_dir).latest() / "state.json").read_text())
    assert 0 < state["num_timesteps"] < 10_000 and state["rollouts"] >= 1
    total = state["num_timesteps"] + 64  # two more rollouts of 2 envs x 16 steps
    done = subprocess.run(_sb3_cmd(run_dir, total, ["--resume"]), env=env, capture_output=True,
                          text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"rollout {state['rollouts']}, {state['num_timesteps']} env steps" in done.stdout
    final = json.loads((run_dir / "final_eval.json").read_text())
    assert final["charts/env_steps"] == total
    rows = _metrics(run_dir)
    assert max(rows) == state["rollouts"] + 2


def test_reward_scale_makes_beta_mean_the_same_for_every_reward():
    """The env reward is divided by its std over SFT samples: about 1 for the calibrated
    learned reward, about 3 for gold (std about 0.3)."""
    from agents.ppo import PPOConfig
    from agents.training import setup

    scales = {}
    for reward in ("learned", "gold"):
        cfg = replace(PPOConfig(), reward=reward, num_envs=32, threads=1)
        scales[reward] = setup(cfg).reward_scale
    assert 0.7 < scales["learned"] < 1.4 and 2.0 < scales["gold"] < 6.0
    off = setup(replace(PPOConfig(), normalize_reward=False, num_envs=8, threads=1))
    assert off.reward_scale == 1.0


def test_dr_grpo_and_reinforce_pp_math_by_hand():
    from agents.core import aggregate_tokens
    from agents.reinforce_pp import token_advantages

    g = group_advantages(torch.tensor([1.0, 3.0, 5.0, 5.0]), 2, scale=False)
    assert torch.allclose(g, torch.tensor([-1.0, 1.0, 0.0, 0.0]))  # no std division
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    m = torch.tensor([[True, True, True], [True, False, False]])
    assert aggregate_tokens(x, m, "token_mean").item() == pytest.approx(10 / 4)
    assert aggregate_tokens(x, m, "sequence_mean").item() == pytest.approx((2 + 4) / 2)
    assert aggregate_tokens(x, m, "constant", max_len=5).item() == pytest.approx(10 / 10)
    # REINFORCE++: returns-to-go of -beta*KL per token + score at the end, then whitened
    logp = torch.tensor([[-1.0, -1.0, -1.0], [-2.0, 0.0, 0.0]])
    ref = torch.tensor([[-1.5, -1.0, -2.0], [-1.0, 0.0, 0.0]])
    adv, kl = token_advantages(torch.tensor([1.0, 0.0]), logp, ref, m.float(), beta=0.1)
    rtg = torch.tensor([[-0.05 + 0 + 0.9, 0 + 0.9, 0.9], [0.1, 0, 0]])  # rewards summed
    want = (rtg - rtg[m].mean()) / rtg[m].std()
    assert torch.allclose(adv[m], want[m], atol=1e-4) and (adv[~m] == 0).all()
