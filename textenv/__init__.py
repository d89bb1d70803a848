"""textenv: text generation as a Gymnasium RL problem (tokens are actions).

Importing textenv registers `TextGen-v0` (idempotently) and loads no model:

    import gymnasium as gym
    import textenv  # noqa: F401  (or: gym.make("textenv:TextGen-v0") without this import)

    env = gym.make("TextGen-v0", reward="gold")
    envs = gym.make_vec("TextGen-v0", num_envs=8, reward="gold")  # natively batched

The public API for writing your own agent (each is imported on first use, so that
`import textenv` stays light):

    textenv.load_policy("sft", task="reviews")   a fresh, trainable copy of a shipped LM
    textenv.load_reference(task="reviews")       the frozen reference (SFT) policy, shared
    textenv.load_reward_model(task="reviews")    the learned reward model, frozen, shared
    textenv.load_tokenizer(task="reviews")       the task's tokenizer
    (each also takes assets_dir=DIR: assets built by `textenv build-assets --out-dir DIR`)
    textenv.PolicyDecoder(model, num_envs)             KV-cache decoding from dict observations
    textenv.TextGenEnv, textenv.TextGenVectorEnv       the env classes
"""

import gymnasium as gym

# Every built-in task also has an id of its own: gym.make("TextGen-Arithmetic-v0") is
# gym.make("TextGen-v0", task="arithmetic"). tests/test_tasks.py checks this list against
# textenv.tasks.TASKS (kept literal here so that importing textenv imports no task code).
TASK_IDS = {"reviews": "TextGen-Reviews-v0", "arithmetic": "TextGen-Arithmetic-v0",
            "dialogue": "TextGen-Dialogue-v0", "sequences": "TextGen-Sequences-v0"}

if "TextGen-v0" not in gym.registry:
    gym.register(
        id="TextGen-v0",
        entry_point="textenv.env:TextGenEnv",
        vector_entry_point="textenv.vector_env:TextGenVectorEnv",
    )
for _task, _env_id in TASK_IDS.items():
    if _env_id not in gym.registry:
        gym.register(
            id=_env_id,
            entry_point="textenv.env:TextGenEnv",
            vector_entry_point="textenv.vector_env:TextGenVectorEnv",
            kwargs={"task": _task},
        )

# name -> (module, attribute): what `textenv.<name>` resolves to on first use.
_LAZY = {
    "TextGenEnv": ("textenv.env", "TextGenEnv"),
    "TextGenVectorEnv": ("textenv.vector_env", "TextGenVectorEnv"),
    "PolicyDecoder": ("textenv.decoding", "PolicyDecoder"),
}


def _assets(assets_dir, task):
    from textenv.assets import resolve_assets_dir

    return resolve_assets_dir(assets_dir, task)


def load_policy(name: str = "sft", assets_dir=None, task: str = "reviews"):
    """A fresh, trainable copy of a shipped LM (`"sft"`, the default, or `"base"`)."""
    from textenv.assets import load_policy as load

    return load(name, _assets(assets_dir, task)).requires_grad_(True)


def load_reference(assets_dir=None, task: str = "reviews"):
    """The frozen reference (SFT) policy of the assets, loaded once and shared read-only."""
    from textenv.assets import load_reference as load

    return load(_assets(assets_dir, task))


def load_reward_model(assets_dir=None, task: str = "reviews"):
    """The learned reward model of the assets (frozen, shared): `.score(prompts, responses)`
    gives normalised rewards (SFT samples: mean 0, std 1)."""
    from textenv.rewards import load_reward_model as load

    return load(_assets(assets_dir, task))


def load_tokenizer(assets_dir=None, task: str = "reviews"):
    """The tokenizer of the assets."""
    from textenv.assets import load_tokenizer as load

    return load(_assets(assets_dir, task))


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attribute = _LAZY[name]
        return getattr(importlib.import_module(module), attribute)
    raise AttributeError(f"module 'textenv' has no attribute {name!r}")


__all__ = ["PolicyDecoder", "TextGenEnv", "TextGenVectorEnv", "load_policy", "load_reference",
           "load_reward_model", "load_tokenizer"]
