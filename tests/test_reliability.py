"""Nothing is lost silently and every refusal says what and where (docs/reliability.md).

Checkpoint sets, the run-directory lock, resume, the divergence guard, corrupt files, config
validation, and the small I/O guarantees (atomic files with the umask's permissions).
"""

import json
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

import textenv  # noqa: F401  (registers TextGen-v0)
from agents.ppo import PPOConfig, train
from agents.training import DivergenceError
from textenv.assets import ASSETS_DIR
from textenv.model import GPT, GPTConfig
from textenv.runlog import read_metrics_csv
from textenv.storage import Checkpoints, RunDirLock, RunDirLocked, atomic_write

TINY = {"num_envs": 8, "max_new_tokens": 24, "eval_samples": 1, "threads": 1,
        "progress": False, "tensorboard": False}


def tiny_ppo(run_dir, **kw) -> PPOConfig:
    return replace(PPOConfig(), run_dir=str(run_dir), **{**TINY, **kw})


def rows_by_iteration(run_dir) -> dict[int, dict]:
    return {int(r["iteration"]): r for r in read_metrics_csv(Path(run_dir) / "metrics.csv")}


def assert_same_rows(a: dict, b: dict, iterations):
    for it in iterations:
        assert set(a[it]) == set(b[it]), it
        for key, value in a[it].items():
            if key.startswith(("time/", "charts/wall_clock", "charts/tokens_per_second")):
                continue
            assert b[it][key] == pytest.approx(value, abs=1e-6, nan_ok=True), (it, key)


# ---- files --------------------------------------------------------------------------------
@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_atomic_files_get_the_umask_permissions(tmp_path, umask):
    old = os.umask(umask)
    try:
        atomic_write(tmp_path / "a.txt", "x")
        os.mkdir(tmp_path / "plain")
        Checkpoints(tmp_path).save(1, lambda d: atomic_write(d / "f", b"y"))
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o666 & ~umask
    ckpt = tmp_path / "checkpoints" / "iter_00000001"
    assert ckpt.stat().st_mode & 0o777 == (tmp_path / "plain").stat().st_mode & 0o777


def test_checkpoint_sets_keep_the_previous_until_the_new_is_complete(tmp_path):
    ckpts = Checkpoints(tmp_path, keep=2)
    for it in (1, 2, 3):
        ckpts.save(it, lambda d, it=it: atomic_write(d / "state.json", json.dumps(it)))
    assert [p.name for p in ckpts.complete()] == ["iter_00000002", "iter_00000003"]

    def dies_halfway(d):
        atomic_write(d / "model.safetensors", b"half")
        raise KeyboardInterrupt  # a crash while writing the set

    with pytest.raises(KeyboardInterrupt):
        ckpts.save(4, dies_halfway)
    assert ckpts.latest().name == "iter_00000003"  # the previous set is intact
    assert not list(ckpts.root.glob(".iter_*"))  # and the half-written one is gone


# ---- the run-directory lock -----------------------------------------------------------------
def test_second_run_on_a_locked_directory_is_refused(tmp_path):
    with RunDirLock(tmp_path):
        with pytest.raises(RunDirLocked, match=f"pid {os.getpid()}"):
            RunDirLock(tmp_path).acquire()
        with pytest.raises(RunDirLocked, match="in use"):
            train(tiny_ppo(tmp_path, total_env_steps=8 * 24))
        assert not (tmp_path / "metrics.csv").exists()  # nothing of the holder's was touched
    assert not (tmp_path / ".lock").exists()


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path, capsys):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    (tmp_path / ".lock").write_text(json.dumps({"pid": int(dead), "host": os.uname().nodename,
                                                "started": "earlier"}))
    with RunDirLock(tmp_path) as lock:
        assert lock.held and json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
    assert "stale lock" in capsys.readouterr().out


# ---- resume ---------------------------------------------------------------------------------
def test_resume_from_an_earlier_checkpoint_with_sparse_evaluations(tmp_path):
    """Evaluations every 2nd iteration leave empty cells in metrics.csv; the newest set is
    lost. Resume takes the newest complete one and repeats the run from there exactly."""
    full = tmp_path / "full"
    cfg = tiny_ppo(full, total_env_steps=5 * 8 * 24, eval_every=2, checkpoint_every=2)
    train(cfg)
    rows = rows_by_iteration(full)
    assert "eval/gold_mean" in rows[2] and "eval/gold_mean" not in rows[1]
    cut = tmp_path / "cut"
    shutil.copytree(full, cut)
    sets = Checkpoints(cut).complete()
    shutil.rmtree(sets[-1])  # the newest set is gone: the previous one is complete
    resumed_from = int(sets[-2].name.split("_")[1])
    train(replace(cfg, run_dir=str(cut), resume=True))
    again = rows_by_iteration(cut)
    assert sorted(again) == sorted(rows)
    assert_same_rows(rows, again, [it for it in rows if it > resumed_from])


DRIVER = """
import sys, time
import agents.training as training
from agents.ppo import PPOConfig, train
import tyro

real = training.save_tensors

def slow_save(*args, **kwargs):  # widen the window in which a kill lands mid-checkpoint
    time.sleep(0.05)
    real(*args, **kwargs)
    time.sleep(0.05)

training.save_tensors = slow_save
train(tyro.cli(PPOConfig))
"""


def _driver_args(run_dir, resume=False):
    args = [f"--run-dir={run_dir}", "--num-envs=8", "--max-new-tokens=16", "--eval-every=3",
            "--eval-samples=1", "--threads=1", "--no-progress", "--no-tensorboard",
            "--checkpoint-every=1", f"--total-env-steps={40 * 8 * 16}"]
    return [sys.executable, "-c", DRIVER, *args, *(["--resume"] if resume else [])]


def test_sigkill_during_checkpointing_never_loses_a_complete_iteration(tmp_path):
    """SIGKILL a training process at random moments around its checkpoints, 20 times,
    resuming after each kill: every resume starts from a complete checkpoint, and the
    metrics equal those of an uninterrupted run."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    full = tmp_path / "full"
    subprocess.run(_driver_args(full), check=True, env=env, capture_output=True, timeout=300)
    expected = rows_by_iteration(full)
    run_dir, rng, resumes = tmp_path / "killed", random.Random(0), []
    ckpts = Checkpoints(run_dir)
    for kill in range(20):
        before = ckpts.latest()
        proc = subprocess.Popen(_driver_args(run_dir, resume=before is not None), env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # Let it write at least one checkpoint of its own, then kill it a random moment
        # later: mid-iteration, mid-checkpoint (writes are slowed to widen that window), or
        # between the rename and the clean-up.
        deadline = time.time() + 120
        while proc.poll() is None and ckpts.latest() == before and time.time() < deadline:
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.3))
        assert proc.poll() is None, f"the run ended before kill {kill}: {proc.stderr.read()}"
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate()
        resumes += [line for line in out.splitlines() if line.startswith("resuming from")]
        assert ckpts.latest() is not None
    done = subprocess.run(_driver_args(run_dir, resume=True), env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    got = rows_by_iteration(run_dir)
    assert sorted(got) == sorted(expected)
    assert_same_rows(expected, got, sorted(expected))
    assert len(resumes) == 19  # every start after the first resumed from a complete set


# ---- divergence -----------------------------------------------------------------------------
def test_divergence_stops_naming_the_iteration_and_keeps_the_last_good_checkpoint(tmp_path):
    cfg = tiny_ppo(tmp_path, total_env_steps=8 * 8 * 24, eval_every=0, checkpoint_every=1)
    train(replace(cfg, total_env_steps=2 * 8 * 24))  # a few good iterations, checkpointed
    good = Checkpoints(tmp_path).latest()
    done = json.loads((good / "state.json").read_text())["iteration"]
    weights = (good / "model.safetensors").read_bytes()
    absurd = replace(cfg, resume=True, learning_rate=1e3, num_minibatches=1, anneal_lr=False,
                     target_kl=None)
    with pytest.raises(DivergenceError, match=f"iteration {done + 1}"):
        train(absurd)
    assert Checkpoints(tmp_path).latest() == good
    assert (good / "model.safetensors").read_bytes() == weights


def test_a_reward_function_returning_nan_names_the_iteration(tmp_path):
    def nan_reward(prompts, responses):
        return [float("nan")] * len(prompts)

    cfg = tiny_ppo(tmp_path, total_env_steps=3 * 8 * 24, eval_every=0, reward=nan_reward)
    with pytest.raises(ValueError, match="non-finite") as info:  # measuring its scale
        train(cfg)
    assert any("normalize_reward" in note for note in info.value.__notes__)
    with pytest.raises(ValueError, match="non-finite") as info:  # in the first iteration
        train(replace(cfg, normalize_reward=False))
    assert any("iteration 1" in note for note in info.value.__notes__)


# ---- corrupt and invalid files --------------------------------------------------------------
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("ckpt")
    train(tiny_ppo(run_dir, total_env_steps=8 * 24, eval_every=0))
    return run_dir


def _corrupt(run_dir: Path, tmp_path: Path, how) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    (copy / ".lock").unlink(missing_ok=True)
    how(Checkpoints(copy).latest())
    return copy


@pytest.mark.parametrize("what, how, message", [
    ("random bytes in the weights",
     lambda d: (d / "model.safetensors").write_bytes(os.urandom(4096)), "model.safetensors"),
    ("malformed state JSON", lambda d: (d / "state.json").write_text("{iteration: 3"),
     "state.json"),
    ("truncated optimizer state",
     lambda d: (d / "optimizer.pt").write_bytes((d / "optimizer.pt").read_bytes()[:200]),
     "optimizer.pt"),
])
def test_corrupt_checkpoint_files_name_the_path(checkpoint, tmp_path, what, how, message):
    run_dir = _corrupt(checkpoint, tmp_path, how)
    with pytest.raises(ValueError, match=message):
        train(tiny_ppo(run_dir, total_env_steps=2 * 8 * 24, eval_every=0, resume=True))


def test_missing_rng_tensor_names_the_path(checkpoint, tmp_path):
    from safetensors.torch import load_file, save_file

    def drop_rng(d):
        tensors = load_file(str(d / "model.safetensors"))
        del tensors["rng.torch_generator"]
        save_file(tensors, str(d / "model.safetensors"))

    run_dir = _corrupt(checkpoint, tmp_path, drop_rng)
    with pytest.raises(ValueError, match="model.safetensors.*RNG"):
        train(tiny_ppo(run_dir, total_env_steps=2 * 8 * 24, eval_every=0, resume=True))


def _saved_tiny_gpt(tmp_path: Path, **config) -> Path:
    GPT(GPTConfig(vocab_size=16, block_size=8, n_layer=1, n_head=2, n_embd=8)).save(tmp_path, "m")
    path = tmp_path / "m.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **config}))
    return path


@pytest.mark.parametrize("field, value", [
    ("n_layer", 10**9), ("n_head", 0), ("vocab_size", -1), ("n_embd", 8.5),
    ("dropout", 5), ("block_size", 10**12), ("bias", "yes"), ("n_head", 3),
])
def test_model_configs_are_validated_before_allocation(tmp_path, field, value):
    _saved_tiny_gpt(tmp_path, **{field: value})
    with pytest.raises(ValueError, match=rf"m\.json.*{field}"):
        GPT.load(tmp_path, "m")


def test_parameter_ceiling(tmp_path):
    _saved_tiny_gpt(tmp_path, n_layer=1000, n_embd=8192, n_head=8)
    with pytest.raises(ValueError, match="m.json.*parameters"):
        GPT.load(tmp_path, "m")


def test_weights_of_the_wrong_dtype_or_with_nan_are_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    _saved_tiny_gpt(tmp_path)
    w = tmp_path / "m.safetensors"
    good = load_file(str(w))
    save_file({k: v.double() for k, v in good.items()}, str(w))
    with pytest.raises(ValueError, match="m.safetensors.*dtype"):
        GPT.load(tmp_path, "m")
    poisoned = dict(good)
    poisoned["tok_emb.weight"] = good["tok_emb.weight"].clone()
    poisoned["tok_emb.weight"][0, 0] = float("nan")
    save_file(poisoned, str(w))
    with pytest.raises(ValueError, match="m.safetensors.*NaN"):
        GPT.load(tmp_path, "m")


def test_reference_with_nan_weights_is_refused_at_load(tmp_path):
    from safetensors.torch import load_file, save_file

    from textenv.assets import load_reference

    for name in ("tokenizer.json", "sft.json", "sft.safetensors"):
        shutil.copy(ASSETS_DIR / name, tmp_path / name)
    tensors = load_file(str(tmp_path / "sft.safetensors"))
    tensors["blocks.0.attn.qkv.weight"] = tensors["blocks.0.attn.qkv.weight"] * float("nan")
    save_file(tensors, str(tmp_path / "sft.safetensors"))
    with pytest.raises(ValueError, match="sft.safetensors.*NaN"):
        load_reference(tmp_path)


def test_envs_pickle():
    for reward in ("gold", "learned"):
        env = gym.make("TextGen-v0", reward=reward, max_new_tokens=4)
        clone = pickle.loads(pickle.dumps(env))
        obs, _ = clone.reset(seed=0)
        np.testing.assert_array_equal(obs, env.reset(seed=0)[0])


def test_ensemble_member_names_cannot_leave_their_directory(tmp_path):
    from textenv.rewards import RewardEnsemble

    shutil.copy(ASSETS_DIR / "tokenizer.json", tmp_path / "tokenizer.json")
    (tmp_path / "reward_ensemble.json").write_text(json.dumps(
        {"format": "textenv-reward-ensemble", "version": 1, "mode": "mean", "k": 1.0,
         "members": ["../../etc/reward"]}))
    with pytest.raises(ValueError, match="plain file name"):
        RewardEnsemble.load(tmp_path)


def test_torch_is_only_loaded_with_weights_only():
    root = Path(__file__).resolve().parent.parent
    for path in [*root.glob("textenv/**/*.py"), *root.glob("agents/**/*.py"),
                 *root.glob("reward_models/**/*.py")]:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if "torch" + ".load(" in line:  # (split so that this line is not a match)
                assert "weights_only=True" in line, f"{path}:{n}"
    assert torch.__version__  # torch itself is importable


@pytest.mark.parametrize("name", ["../outside", "/etc/passwd", "a/b", ".hidden", ""])
def test_model_names_cannot_leave_their_directory(tmp_path, name):
    from textenv.rewards import RewardModel

    gpt = GPT(GPTConfig(vocab_size=16, block_size=8, n_layer=1, n_head=2, n_embd=8))
    with pytest.raises(ValueError, match="plain file name"):
        gpt.save(tmp_path, name)
    with pytest.raises(ValueError, match="plain file name"):
        RewardModel.load(tmp_path, name)
    assert list(tmp_path.parent.glob("outside*")) == []
