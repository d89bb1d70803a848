"""agents.bench: every measurement runs at tiny sizes and reports every figure.

No assertion here is about speed (the benchmark itself reports speed); only that each
figure is computed, finite and consistent with the run's own timings.
"""

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from agents import bench
from textenv import fused_decode
from textenv.assets import ASSETS_DIR
from textenv.rewards import GoldReward
from textenv.tasks import make_task


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
            ppo_iterations=1, update_compile=False, progress=False)


@pytest.fixture(autouse=True)
def restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _check_figures(figures: dict, keys) -> None:
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
    f, d = result["figures"], result["details"]

    _check_figures(f, bench.FIGURE_KEYS)
    _check_figures(f, [k for k in bench.OPTIONAL_KEYS if k in f])
    assert all(0 <= f[k] < 1 for k in bench.FRACTION_KEYS)
    assert ("ppo_scoring_flop_utilisation_real_tokens" in f) == (d["reward"] == "learned")
    # The PPO phases split the whole iteration.
    parts = ("rollout_excl_scoring", "scoring", "reference", "old_logprobs", "advantages",
             "update")
    fractions = [f[f"ppo_{k}_fraction"] for k in parts]
    assert sum(fractions) == pytest.approx(1.0)
    assert all(0 < x < 1 for x in fractions)
    assert sum(f[f"ppo_{k}_s"] for k in parts) == pytest.approx(f["ppo_iteration_s"])
    assert f["ppo_rollout_s"] == pytest.approx(f["ppo_rollout_excl_scoring_s"]
                                               + f["ppo_scoring_s"])
    assert f["ref_plus_scoring_fraction"] == pytest.approx(fractions[1] + fractions[2])
    assert f["ppo_iteration_s"] <= d["ppo_iteration_wall_s"]
    assert 0 < d["ppo_minibatch_updates"] <= d["ppo_minibatch_updates_max"]
    assert d["ppo_reward_calls_per_rollout"] >= 1  # the timed reward sat in the env
    # Figure 10: the update's variants; trimming never computes more row-steps.
    _check_figures(f, bench.UPDATE_KEYS)
    assert ("update_bf16_s" in f) == bench.bf16_supported(torch.device("cpu"))
    _check_figures(f, [k for k in bench.UPDATE_OPTIONAL_KEYS if k in f])
    assert "update_compile_s" not in f and "--quick" in result["skipped"]["update_compile"]
    steps = d["update_row_steps"]
    assert steps["bucket"] <= steps["trim"] <= steps["baseline"]
    assert f["update_trim_speedup"] == pytest.approx(f["update_baseline_s"] / f["update_trim_s"])

    # Figure 3's ratios, formed from the run's own seconds per token.
    bare, gen_score = d["bare_generation_s_per_token"], d["generate_then_score_s_per_token"]
    rollout, rollout_ex = d["rollout_s_per_token"], d["rollout_excl_scoring_s_per_token"]
    assert f["rollout_vs_bare_generation_ratio"] == pytest.approx(bare / rollout)
    assert f["rollout_vs_bare_generation_ratio_excl_scoring"] == pytest.approx(bare / rollout_ex)
    assert f["rollout_vs_generate_then_score_ratio"] == pytest.approx(gen_score / rollout)
    # Bare generation plus a scoring pass takes longer than bare generation alone.
    assert f["generate_then_score_vs_bare_generation_ratio"] == pytest.approx(bare / gen_score)
    assert f["generate_then_score_vs_bare_generation_ratio"] < 1
    assert rollout_ex < rollout
    assert d["rollout_reward_calls"] >= 1
    # Same seed, same model, same prompts: the rollout samples the bare loop's tokens.
    assert d["rollout_same_tokens_as_bare"] is True

    assert f["kv_cache_speedup"] == pytest.approx(f["no_cache_decode_s"]
                                                  / f["kv_cache_decode_s"])
    assert d["kv_vs_recompute_max_logit_diff"] < 1e-3  # the two decoding paths agree
    assert f["vector_vs_single_speedup"] == pytest.approx(f["vector_env_tokens_per_s_n64"]
                                                          / f["single_env_steps_per_s"])
    assert 0 < f["generation_flop_utilization"] < 1
    # FLOP utilisation: against the matmul rate at the same thread count; counting all
    # row-steps (padding, finished rows) never gives less than counting real tokens.
    for key in (k for k in f if k.endswith("_flop_utilisation_real_tokens")):
        rows = key.replace("real_tokens", "all_row_steps")
        assert 0 < f[key] <= f.get(rows, f[key]) + 1e-12, key
    for t in ("1t", "2t"):
        assert (f[f"decode_flop_utilisation_all_row_steps_b256_{t}"]
                >= f[f"decode_flop_utilisation_real_tokens_b256_{t}"])
    assert f["decode_flop_utilisation_real_tokens_b256"] == \
        f["decode_flop_utilisation_real_tokens_b256_1t"]  # --threads 1: the headline figure
    # The decode bound: per step the longer of its matmuls and its KV-cache read.
    for t in ("_1t", "_2t"):
        bound, matmul, read = (d[f"decode_{k}{t}"] for k in ("bound_s", "matmul_s_at_rate",
                                                                "kv_read_s"))
        assert max(matmul, read) <= bound <= matmul + read
        assert f[f"decode_bound_flop_utilisation_real_tokens_b256{t}"] == \
            pytest.approx(matmul / bound)
        assert f[f"decode_vs_bound_ratio_b256{t}"] > 0
    # The fused decode step, timed beside the same steps in PyTorch ops where it applies.
    with torch.no_grad():
        fused = fused_decode.usable(bench.load_reference(ASSETS))
    if fused:
        assert d["fused_decode"] == f"on, {fused_decode.library().simd_width()}-float vectors"
        for t in ("_1t", "_2t"):
            assert f[f"decode_fused_vs_pytorch_ratio{t}"] > 0 and d[f"decode_pytorch_s{t}"] > 0
    else:
        assert d["fused_decode"].startswith("off: ")
        assert "decode_fused_vs_pytorch_ratio" not in f
    if bench.hf_copy(bench.load_reference(ASSETS)) is None:
        assert "decode_vs_hf_generate_ratio" not in f
        assert d["hf_generate"].startswith("skipped: transformers")
    else:
        assert f["decode_vs_hf_generate_ratio"] > 0 and d["hf_max_logit_diff"] < 1e-4

    machine = result["machine"]
    assert set(bench.MACHINE_KEYS) <= set(machine)
    assert machine["torch_threads"] == 1  # --threads is applied and reported
    assert machine["cores"] == os.cpu_count()
    assert machine["torch_version"] == torch.__version__
    assert machine["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert d["reward"] in ("learned", "gold")
    assert d["learned_reward_model_present"] == (d["reward"] == "learned")
    assert "quick" in result["skipped"]["ppo_to_target"]

    table = capsys.readouterr().out
    assert table.startswith("| # | figure | value |")
    for label in ("single env steps/s", "vector env tokens/s", "VectorKLPenalty",
                  "rollout vs bare generation", "KV-cache speedup",
                  "reference + scoring fraction", "LM-PPO to gold target",
                  "generation FLOP utilisation", "machine", "design goal >= 0.9",
                  "design goal >= 5", "decode FLOP utilisation", "prefill FLOP utilisation",
                  "dead-row fraction", "Hugging Face generate", "(all row-steps)",
                  "LM-PPO update (s), whole padded width", "length-bucketed"):
        assert label in table, label
    assert "NOT met" not in table and "(met)" not in table  # states goals, no verdicts


@needs_assets
def test_full_run_without_reward_model_skips_ppo_to_target(tmp_path):
    assets = tmp_path / "assets"
    shutil.copytree(ASSETS, assets, ignore=shutil.ignore_patterns("reward.*"))
    result = bench.run(bench.BenchConfig(quick=False, assets_dir=str(assets), **TINY))
    _check_figures(result["figures"], bench.FIGURE_KEYS)
    assert result["details"]["reward"] == "gold"
    assert "no learned reward model" in result["skipped"]["ppo_to_target"]
    assert "LM-PPO to gold target" in bench.markdown_table(result)


def test_hf_generated_tokens_counts_up_to_each_eos():
    new = torch.tensor([[5, 6, 2, 0, 0], [5, 5, 5, 5, 5], [2, 0, 0, 0, 0]])  # eos = 2
    assert bench.hf_generated_tokens(new, eos_id=2) == 3 + 5 + 1


def test_hf_copy_computes_the_same_logits():
    pytest.importorskip("transformers")
    from textenv.model import GPT, GPTConfig

    torch.manual_seed(0)
    for bias in (True, False):
        model = GPT(GPTConfig(vocab_size=17, block_size=16, n_layer=2, n_head=2, n_embd=16,
                              bias=bias)).eval()
        hf = bench.hf_copy(model)
        ids = torch.randint(1, 17, (3, 6))
        mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1] * 6, [0, 0, 0, 0, 0, 1]], dtype=torch.bool)
        pos = (mask.long().cumsum(1) - 1).clamp(min=0)
        with torch.no_grad():
            ours = model(ids, mask)
            theirs = hf(input_ids=ids, attention_mask=mask.long(), position_ids=pos).logits
        assert (ours - theirs)[mask].abs().max() < 1e-5


def test_timed_reward_forwards_and_times():
    task = make_task("reviews")
    gold = GoldReward(task)
    timed = bench.TimedReward(gold)
    assert not hasattr(timed, "score_ids")  # the env must take the text path, as with gold
    rng = np.random.default_rng(0)
    prompts = [task.sample_prompt(rng, "train") for _ in range(3)]
    responses = ["good <eos>", "bad", ""]
    assert list(timed(prompts, responses)) == list(gold(prompts, responses))
    assert timed.calls == 1 and timed.seconds > 0
    lengths = [1 + len(p.split()) + len(r.split()) for p, r in zip(prompts, responses)]
    assert timed.token_counts() == (3, sum(lengths), max(lengths))  # [bos] + prompt + response
    assert timed.rescore_in_one_batch() >= 0
    timed.reset()
    assert timed.calls == 0 and timed.seconds == 0

    class WithIds:
        def __call__(self, prompts, responses):
            return [0.0] * len(prompts)

        def score_ids(self, ids, mask):  # (B, T) -> (B,)
            return (ids * mask).sum(1).float()

    timed = bench.TimedReward(WithIds())
    ids, mask = torch.ones(2, 3, dtype=torch.long), torch.ones(2, 3, dtype=torch.bool)
    assert timed.score_ids(ids, mask).tolist() == [3.0, 3.0]
    timed.score_ids(torch.ones(1, 5, dtype=torch.long), torch.ones(1, 5, dtype=torch.bool))
    assert timed.calls == 2
    assert timed.token_counts() == (3, 3 + 3 + 5, 5)
    assert timed.rescore_in_one_batch() >= 0  # pads the two batches to one width


@needs_assets
def test_ppo_time_to_target_runs_train_in_a_subprocess():
    # Gold reward and a target any evaluation reaches: exercises the subprocess, the polling
    # of metrics.csv and the peak-RSS reading, not PPO's learning.
    figures, details = bench.ppo_time_to_target(
        str(ASSETS), target=-1.0, threads=1, eval_every=1, timeout=120,
        overrides={"reward": "gold", "num_envs": 4, "max_new_tokens": 6, "eval_samples": 1,
                   "total_env_steps": 100})
    assert "ppo_to_target_skipped" not in details, details.get("ppo_to_target_skipped")
    _check_figures(figures, bench.FULL_ONLY_KEYS)
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


@needs_assets
@pytest.mark.slow  # compiles the actor-critic (~20-60 s)
def test_update_options_time_the_compiled_update_apart():
    cfg = bench.BenchConfig(assets_dir=str(ASSETS), **{**TINY, "num_envs": 8})
    figures, details = bench.update_options(cfg, "gold", 1, ("trim", "compile"))
    _check_figures(figures, ["update_trim_s", "update_compile_s", "update_compile_speedup",
                             "update_compile_warmup_s",
                             "update_compile_flop_utilisation_real_tokens"])
    assert figures["update_compile_speedup"] == pytest.approx(
        figures["update_trim_s"] / figures["update_compile_s"])
    assert details["update_row_steps"]["compile"] == details["update_row_steps"]["trim"]
    losses = details["update_mean_pg_loss"]  # same start, same minibatches
    assert losses["compile"] == pytest.approx(losses["trim"], abs=1e-4)
