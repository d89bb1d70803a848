"""textenv: text generation as a Gymnasium RL problem (tokens are actions).

Importing textenv registers `TextGen-v0` (idempotently) and loads no model:

    import gymnasium as gym
    import textenv  # noqa: F401  (or: gym.make("textenv:TextGen-v0") without this import)

    env = gym.make("TextGen-v0", reward="gold")
    envs = gym.make_vec("TextGen-v0", num_envs=8, reward="gold")  # natively batched

`textenv.TextGenEnv` and `textenv.TextGenVectorEnv` are imported on first use.
"""

import gymnasium as gym

if "TextGen-v0" not in gym.registry:
    gym.register(
        id="TextGen-v0",
        entry_point="textenv.env:TextGenEnv",
        vector_entry_point="textenv.vector_env:TextGenVectorEnv",
    )


def __getattr__(name: str):
    # Lazy, so that `import textenv` stays light (no torch import until an env is built).
    if name == "TextGenEnv":
        from textenv.env import TextGenEnv
        return TextGenEnv
    if name == "TextGenVectorEnv":
        from textenv.vector_env import TextGenVectorEnv
        return TextGenVectorEnv
    raise AttributeError(f"module 'textenv' has no attribute {name!r}")


__all__ = ["TextGenEnv", "TextGenVectorEnv"]
