"""The task registry: every built-in task has shipped assets, an id of its own, and errors
that list the valid names."""

import gymnasium as gym
import pytest

import textenv
from textenv.assets import ASSETS_ROOT, resolve_assets_dir, task_assets_dir
from textenv.tasks import TASKS, make_task

# Built-in tasks ship assets; a task built from the user's files (jsonl) has none.
BUILT_IN = sorted(n for n, cls in TASKS.items() if not getattr(cls, "needs_assets_dir", False))


def test_every_task_has_an_id_of_its_own():
    assert set(textenv.TASK_IDS) == set(BUILT_IN)
    for name, env_id in textenv.TASK_IDS.items():
        assert gym.spec(env_id).kwargs["task"] == name


@pytest.mark.parametrize("name", BUILT_IN)
def test_every_task_ships_assets_with_quality(name):
    directory = task_assets_dir(name)
    for file in ("tokenizer.json", "sft.json", "sft.safetensors", "quality.json"):
        assert (directory / file).is_file(), f"{directory / file} missing"


def test_shipped_assets_fit_the_size_budget():
    total = sum(f.stat().st_size for f in ASSETS_ROOT.rglob("*") if f.is_file())
    assert total <= 40 * 2**20, f"shipped assets are {total / 2**20:.1f} MB (budget 40 MB)"


def test_task_id_makes_the_task_with_its_own_assets():
    env = gym.make(textenv.TASK_IDS["reviews"], reward="gold")
    assert env.unwrapped.task.name == "reviews"
    assert env.unwrapped.core.assets_dir == task_assets_dir("reviews")


def test_unknown_task_lists_the_valid_ones():
    with pytest.raises(ValueError, match="valid tasks: .*reviews"):
        make_task("nope")
    with pytest.raises(ValueError, match="valid tasks"):
        gym.make("TextGen-v0", task="nope")


def test_assets_dir_for_a_task_without_shipped_assets_says_how_to_build_them():
    with pytest.raises(FileNotFoundError, match="build-assets --task nope"):
        resolve_assets_dir(None, "nope")
