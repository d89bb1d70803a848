"""scripts/bench.py: every measurement runs at tiny sizes and reports every figure.

No assertion here is about speed (SPEC §8: speed is checked by the benchmark itself).
"""

import importlib.util
import json
import math
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch

from textenv.assets import ASSETS_DIR

ROOT = Path(__file__).resolve().parent.parent


def _load_bench():
    spec = importlib.util.spec_from_file_location("textenv_bench", ROOT / "scripts" / "bench.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses need the module registered
    spec.loader.exec_module(module)
    return module


bench = _load_bench()


def _assets_dir() -> Path:
    """The shipped assets when built; else a dev build (TEXTENV_TEST_ASSETS or /tmp/tiny_assets)."""
    if (ASSETS_DIR / "sft.safetensors").exists() and (ASSETS_DIR / "tokenizer.json").exists():
        return ASSETS_DIR
    return Path(os.environ.get("TEXTENV_TEST_ASSETS", "/tmp/tiny_assets"))


ASSETS = _assets_dir()
needs_assets = pytest.mark.skipif(not (ASSETS / "sft.safetensors").exists(),
                                  reason=f"no assets in {ASSETS}")

# Every size tiny: the point is that each measurement runs and reports, not its value.
TINY = dict(threads=1, num_envs=4, max_new_tokens=6, repeats=1, single_env_steps=20,
            vector_env_steps=3, kv_batch=4, kv_new_tokens=4, gen_batch=8, matmul_size=64,
            ppo_iterations=1, progress=False)


@pytest.fixture(autouse=True)
def restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _check_figures(result: dict, keys) -> None:
    figures = result["figures"]
    missing = [k for k in keys if k not in figures]
    assert not missing, f"missing figures: {missing}"
    for k in keys:
        v = figures[k]
        assert isinstance(v, (int, float)) and not isinstance(v, bool), (k, v)
        assert math.isfinite(v) and v > 0, (k, v)


@needs_assets
def test_quick_run_reports_every_figure(tmp_path, capsys):
    out = tmp_path / "bench.json"
    bench.main(bench.BenchConfig(quick=True, json=str(out), assets_dir=str(ASSETS), **TINY))
    result = json.loads(out.read_text())

    _check_figures(result, bench.FIGURE_KEYS)
    fractions = [result["figures"][f"ppo_{k}_fraction"]
                 for k in ("rollout_excl_scoring", "scoring", "reference", "old_logprobs",
                           "update")]
    assert sum(fractions) == pytest.approx(1.0)
    assert all(0 < f < 1 for f in fractions)
    assert result["figures"]["ref_plus_scoring_fraction"] == pytest.approx(
        fractions[1] + fractions[2])
    # Bare generation plus a scoring pass takes longer than bare generation alone.
    assert result["figures"]["generate_then_score_vs_bare_generation_ratio"] < 1
    machine = result["machine"]
    assert set(bench.MACHINE_KEYS) <= set(machine)
    assert machine["torch_threads"] == 1  # --threads is applied and reported
    assert machine["cores"] == os.cpu_count()
    assert machine["torch_version"] == torch.__version__
    d = result["details"]
    assert d["reward"] in ("learned", "gold")
    assert d["learned_reward_model_present"] == (d["reward"] == "learned")
    # Same seed, same model, same prompts: the rollout samples the bare loop's tokens.
    assert d["rollout_same_tokens_as_bare"] is True
    assert d["kv_vs_recompute_max_logit_diff"] < 1e-3  # the two decoding paths agree
    assert "quick" in result["skipped"]["ppo_to_target"]

    table = capsys.readouterr().out
    assert table.startswith("| # | figure | value |")
    for label in ("single env steps/s", "vector env tokens/s", "rollout vs bare generation",
                  "KV-cache speedup", "reference + scoring fraction", "LM-PPO to gold target",
                  "generation FLOP utilisation", "machine"):
        assert label in table, label


@needs_assets
def test_full_run_without_reward_model_skips_ppo_to_target(tmp_path):
    assets = tmp_path / "assets"
    shutil.copytree(ASSETS, assets, ignore=shutil.ignore_patterns("reward.*"))
    result = bench.run(bench.BenchConfig(quick=False, assets_dir=str(assets), **TINY))
    _check_figures(result, bench.FIGURE_KEYS)
    assert result["details"]["reward"] == "gold"
    assert "no learned reward model" in result["skipped"]["ppo_to_target"]
    assert "LM-PPO to gold target" in bench.markdown_table(result)


@needs_assets
def test_ppo_time_to_target_runs_train_in_a_subprocess():
    # Gold reward and a target any evaluation reaches: exercises the subprocess, the polling
    # of metrics.csv and the peak-RSS reading, not PPO's learning.
    figures, details = bench.ppo_time_to_target(
        str(ASSETS), target=-1.0, threads=1, eval_every=1, timeout=120,
        overrides={"reward": "gold", "num_envs": 4, "max_new_tokens": 6, "eval_prompts": 4,
                   "total_env_steps": 100})
    assert "ppo_to_target_skipped" not in details, details.get("ppo_to_target_skipped")
    result = {"figures": figures}
    _check_figures(result, bench.FULL_ONLY_KEYS)
    assert figures["ppo_to_target_iterations"] == 1
    assert figures["ppo_to_target_train_s"] <= figures["ppo_to_target_process_s"]
    shutil.rmtree(details["ppo_run_dir"], ignore_errors=True)


def test_unreachable_target_and_failed_run_are_reported():
    figures, details = bench.ppo_time_to_target(
        str(ASSETS), target=2.0, threads=1, eval_every=1, timeout=60,
        overrides={"num_envs": 0})  # PPO's setup rejects this: the run fails at once
    assert figures == {}
    assert "not reached" in details["ppo_to_target_skipped"]
    assert "failed" in details["ppo_to_target_skipped"]
    shutil.rmtree(details["ppo_run_dir"], ignore_errors=True)


def test_sizes_follow_quick_and_can_be_overridden():
    quick = bench.sizes(bench.BenchConfig(quick=True))
    full = bench.sizes(bench.BenchConfig())
    assert all(quick[k] <= full[k] for k in quick)
    assert bench.sizes(bench.BenchConfig(quick=True, repeats=9))["repeats"] == 9


def test_missing_assets_give_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="--assets-dir"):
        bench.run(bench.BenchConfig(quick=True, assets_dir=str(tmp_path), progress=False))
