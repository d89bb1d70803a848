"""textenv: text generation as a Gymnasium RL problem (tokens are actions).

Importing textenv registers `TextGen-v0` (idempotently) and loads no model:

    import gymnasium as gym
    import textenv  # noqa: F401  (or: gym.make("textenv:TextGen-v0") without this import)

    env = gym.make("TextGen-v0", reward="gold")
    envs = gym.make_vec("TextGen-v0", num_envs=8, reward="gold")  # natively batched

The public API for writing your own agent (each is imported on first use, so that
`import textenv` stays light):

    textenv.load_policy(name="sft", assets_dir=None)   a fresh, trainable copy of a shipped LM
    textenv.load_reference(assets_dir=None)            the frozen reference (SFT) policy, shared
    textenv.load_reward_model(assets_dir=None)         the learned reward model, frozen, shared
    textenv.load_tokenizer(assets_dir=None)            the task's tokenizer
    textenv.PolicyDecoder(model, num_envs)             KV-cache decoding from dict observations
    textenv.TextGenEnv, textenv.TextGenVectorEnv       the env classes
"""

import gymnasium as gym

if "TextGen-v0" not in gym.registry:
    gym.register(
        id="TextGen-v0",
        entry_point="textenv.env:TextGenEnv",
        vector_entry_point="textenv.vector_env:TextGenVectorEnv",
    )

# name -> (module, attribute): what `textenv.<name>` resolves to on first use.
_LAZY = {
    "TextGenEnv": ("textenv.env", "TextGenEnv"),
    "TextGenVectorEnv": ("textenv.vector_env", "TextGenVectorEnv"),
    "PolicyDecoder": ("textenv.decoding", "PolicyDecoder"),
    "load_tokenizer": ("textenv.assets", "load_tokenizer"),
    "load_reference": ("textenv.assets", "load_reference"),
}


def load_policy(name: str = "sft", assets_dir=None):
    """A fresh, trainable copy of a shipped LM (`"sft"`, the default, or `"base"`)."""
    from textenv.assets import ASSETS_DIR
    from textenv.assets import load_policy as load

    return load(name, assets_dir or ASSETS_DIR).requires_grad_(True)


def load_reward_model(assets_dir=None):
    """The learned reward model of the assets (frozen, shared): `.score(prompts, responses)`
    gives normalised rewards (SFT samples: mean 0, std 1)."""
    from pathlib import Path

    from textenv.assets import ASSETS_DIR
    from textenv.rewards import load_reward_model as load

    return load(Path(assets_dir or ASSETS_DIR).resolve())


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attribute = _LAZY[name]
        return getattr(importlib.import_module(module), attribute)
    raise AttributeError(f"module 'textenv' has no attribute {name!r}")


__all__ = ["PolicyDecoder", "TextGenEnv", "TextGenVectorEnv", "load_policy", "load_reference",
           "load_reward_model", "load_tokenizer"]
