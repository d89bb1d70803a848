"""The `textenv` command (agents/cli.py): its commands, their --help, and a real install.

The install test builds the project as a normal (non-editable) package into a temporary
directory and runs the console script from there, outside the source tree: the commands
must not need a source checkout.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tyro

from agents import ALGORITHMS
from agents.cli import COMMANDS, load_command, main, train_main

ROOT = Path(__file__).resolve().parent.parent


# ---- in process ------------------------------------------------------------------------------
def test_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert re.search(rf"^  {re.escape(name)} +\S", out, re.MULTILINE), name
    assert main([]) == 0  # no command: the same list


def test_unknown_command_exits_2_and_names_the_valid_ones(capsys):
    assert main(["trian"]) == 2
    err = capsys.readouterr().err
    assert "unknown command 'trian'" in err
    for name in COMMANDS:
        assert name in err


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_command_builds_its_help(name):
    if name == "bench" and importlib.util.find_spec("agents.bench") is None:
        pytest.skip("agents/bench.py has not landed yet")
    config, run = load_command(name)
    assert callable(run)
    with pytest.raises(SystemExit) as exit_info:
        tyro.cli(config, args=["--help"], prog=f"textenv {name}")
    assert exit_info.value.code == 0


@pytest.mark.parametrize("algo", list(ALGORITHMS))
def test_train_has_one_subcommand_per_algorithm(algo):
    assert algo in COMMANDS["train"][0]  # the one-line description names it
    config, run = load_command("train")
    assert run is train_main
    with pytest.raises(SystemExit) as exit_info:
        tyro.cli(config, args=[algo, "--help"], prog="textenv train")
    assert exit_info.value.code == 0
    cfg = tyro.cli(config, args=[algo, "--seed", "7"])
    assert type(cfg) is ALGORITHMS[algo][0] and cfg.seed == 7


def test_ppo_parses_the_flags_the_resume_test_uses():
    config, run = load_command("ppo")
    cfg = tyro.cli(config, args=["--run-dir=runs/x", "--num-envs=8", "--max-new-tokens=24",
                                 "--eval-every=0", "--no-progress", "--no-tensorboard",
                                 "--total-env-steps=576", "--task=reviews", "--resume"])
    assert (cfg.run_dir, cfg.num_envs, cfg.total_env_steps) == ("runs/x", 8, 576)
    assert cfg.resume and not cfg.progress and not cfg.tensorboard
    assert run is train_main


def test_scripts_are_wrappers_of_registered_commands():
    wrapped = {}
    for script in sorted((ROOT / "scripts").glob("*.py")):
        match = re.search(r'main\(\["([a-z0-9-]+)", \*sys\.argv\[1:\]\]\)', script.read_text())
        if match:
            wrapped[script.name] = match.group(1)
    assert wrapped["train_ppo.py"] == "ppo" and wrapped["build_assets.py"] == "build-assets"
    for script, name in wrapped.items():
        assert name in COMMANDS, (script, name)


# ---- a real, non-editable install ------------------------------------------------------------
def test_installed_console_script_runs_outside_the_source_tree(tmp_path):
    # Build from a copy, so the build leaves nothing in the shared source tree.
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("textenv", "agents", "reward_models"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    target = tmp_path / "site"
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "COLUMNS": "120"}
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--no-build-isolation", "--no-index", "--target", str(target), str(src)],
                   check=True, env=env, capture_output=True, timeout=300)
    shutil.rmtree(src)  # the installed copy must stand on its own

    env["PYTHONPATH"] = str(target)
    work = tmp_path / "elsewhere"
    work.mkdir()

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(list(args), cwd=work, env=env, capture_output=True, text=True,
                              timeout=120)

    textenv = str(target / "bin" / "textenv")
    top = run(textenv, "--help")
    assert top.returncode == 0, top.stderr[-2000:]
    assert "ppo" in top.stdout and "build-assets" in top.stdout
    ppo = run(textenv, "ppo", "--help")
    assert ppo.returncode == 0, ppo.stderr[-2000:]
    assert "--total-env-steps" in ppo.stdout and "--task" in ppo.stdout
    where = run(sys.executable, "-c", "import agents, reward_models, textenv; "
                "print(textenv.__file__, agents.__file__, reward_models.__file__)")
    assert where.returncode == 0, where.stderr[-2000:]
    for path in where.stdout.split():
        assert Path(path).resolve().is_relative_to(target.resolve()), path
