"""`TextGenVectorEnv`: N TextGen episodes stepped together, natively batched.

`gym.make_vec("TextGen-v0", num_envs=N, ...)` builds this class. It behaves exactly like
`gymnasium.vector.SyncVectorEnv` over N `TextGenEnv`s seeded s, s+1, ..., s+N-1, but the
per-token bookkeeping is numpy arrays over the batch (no Python loop over envs per step),
and every episode that finishes on a step is scored in ONE reward-function call. The
vector wrappers of `textenv.wrappers` add KL shaping and action masks from ONE batched
forward of the reference policy per step, on a KV cache.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from gymnasium import spaces
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from textenv.env import (
    RENDER_MODES,
    EpisodeBatch,
    check_prompt_split,
    check_render_mode,
    text_to_rgb,
)
from textenv.rewards import RewardFn
from textenv.tasks import Task
from textenv.tokenizer import Tokenizer


class TextGenVectorEnv(VectorEnv):
    """`num_envs` TextGen episodes in lockstep. Keyword arguments: `num_envs` plus the same
    ones as `textenv.env.TextGenEnv` (task, reward, max_new_tokens, observation_mode,
    render_mode, prompt_split, assets_dir, device), with the same meaning.

    Spaces: observations are the single env's batched, (N, L) int64 (or a dict of two such
    arrays); actions are `MultiDiscrete([vocab_size] * N)`.

    Autoreset: `AutoresetMode.NEXT_STEP` (Gymnasium's default; `metadata["autoreset_mode"]`).
    The step on which env i terminates returns its final observation, final reward and
    final info; on the NEXT step env i is reset (its action is ignored, though it must
    still be in the action space): that step returns the new prompt's observation,
    reward 0, terminated False and info `prompt` (the new prompt).

    Infos follow the Gymnasium vector convention: a dict of arrays of length N, each key
    `k` with a bool mask `_k` saying which envs have it. Final infos (`response`,
    `reward_model_score`, `gold_score`, `length`, `eos`, and `prompt`) are set for the envs
    that terminated on this step; note that `prompt` is also set for envs reset on this
    step, so select final infos with `terminated` (or `_eos`). With a multi-turn task, `turn`
    is set for the envs that took their action and `user_reply` for those the user replied
    to on this step; envs in different turns coexist (see `textenv.env.TextGenEnv`).

    Seeding: `reset(seed=s)` seeds env i with s + i (or pass a list of N seeds), so this
    env equals N `TextGenEnv`s reset with those seeds and fed the same actions.
    Options: `reset(options={"prompts": [N prompts]})` sets each env's prompt (e.g. GRPO
    groups), `options={"prompt": p}` gives all envs prompt p. Autoresets sample prompts.

    If a step raises (e.g. the reward function fails), the envs must be reset before the
    next step: their episodes are in an unknown state.
    """

    metadata = {"render_modes": list(RENDER_MODES), "render_fps": 4,
                "autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(self, num_envs: int = 1, *, task: str | Task = "reviews",
                 reward: str | RewardFn = "learned", max_new_tokens: int | None = None,
                 observation_mode: str = "box", render_mode: str | None = None,
                 prompt_split: str = "train", assets_dir: str | Path | None = None,
                 device: str = "cpu"):
        if int(num_envs) < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        check_render_mode(render_mode)
        check_prompt_split(prompt_split)
        self.num_envs = int(num_envs)
        self.core = EpisodeBatch(self.num_envs, task=task, reward=reward,
                                 max_new_tokens=max_new_tokens, assets_dir=assets_dir,
                                 device=device)
        self.observation_mode = observation_mode
        self.single_observation_space = self.core.observation_space(observation_mode)
        self.single_action_space = spaces.Discrete(self.core.vocab_size)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self.render_mode = render_mode
        self.prompt_split = prompt_split
        self._rngs: list[np.random.Generator] | None = None  # one per env, like N single envs
        self._autoreset = np.zeros(self.num_envs, dtype=bool)  # (N,) reset on the next step
        self._started = False

    @property
    def task(self) -> Task:
        return self.core.task

    @property
    def tokenizer(self) -> Tokenizer:
        return self.core.tokenizer

    @property
    def max_new_tokens(self) -> int:
        return self.core.max_new_tokens

    @property
    def prompt_lengths(self) -> np.ndarray:
        """(N,) int64: tokens of [bos] + prompt per env, so the response in the last
        observation is obs[i, prompt_lengths[i]:prompt_lengths[i] + response_lengths[i]]."""
        return self.core.prompt_len.copy()

    @property
    def response_lengths(self) -> np.ndarray:
        """(N,) int64: response tokens so far per env (after a terminating step: the final
        length, until that env's autoreset on the next step)."""
        return self.core.resp_len.copy()

    @property
    def autoreset_rows(self) -> np.ndarray:
        """(N,) bool: envs whose episode ended on the last step; the next step resets them
        and ignores their action."""
        return self._autoreset.copy()

    def reset(self, *, seed: int | Sequence[int] | None = None,
              options: dict[str, Any] | None = None):
        """Reset all envs. seed: int s (env i gets s + i) or a list of N seeds."""
        n = self.num_envs
        if seed is None:
            seeds = [None] * n
        elif isinstance(seed, (int, np.integer)):
            seeds = [int(seed) + i for i in range(n)]
        else:
            seeds = list(seed)
            if len(seeds) != n:
                raise ValueError(f"reset got {len(seeds)} seeds for {n} envs")
        super().reset(seed=seeds[0])
        if self._rngs is None:
            self._rngs = [seeding.np_random(s)[0] for s in seeds]
        else:  # like Env.reset: a None seed keeps the env's current generator
            self._rngs = [seeding.np_random(s)[0] if s is not None else rng
                          for s, rng in zip(seeds, self._rngs)]

        prompts = self._prompts_from_options(options)
        if prompts is None:
            prompts = [self._sample_prompt(i) for i in range(n)]
        self.core.start(range(n), prompts, self._rngs, self.prompt_split)
        self._autoreset[:] = False
        self._started = True
        if self.render_mode == "human":
            self.render()
        infos = {"prompt": np.array(prompts, dtype=object), "_prompt": np.ones(n, dtype=bool)}
        return self.core.observations(self.observation_mode), infos

    def _prompts_from_options(self, options: dict[str, Any] | None) -> list[str] | None:
        options = dict(options or {})
        unknown = set(options) - {"prompt", "prompts"}
        if unknown:
            raise ValueError(f"unknown reset options {sorted(unknown)}; valid: 'prompt', "
                             f"'prompts'")
        if "prompt" in options and "prompts" in options:
            raise ValueError("pass either options['prompt'] or options['prompts'], not both")
        if "prompt" in options:
            prompts = [options["prompt"]] * self.num_envs
        elif "prompts" in options:
            prompts = list(options["prompts"])
            if len(prompts) != self.num_envs:
                raise ValueError(f"options['prompts'] has {len(prompts)} prompts for "
                                 f"{self.num_envs} envs")
        else:
            return None
        for p in set(prompts):
            self.core.check_prompt(p)
        return prompts

    def _sample_prompt(self, i: int) -> str:
        return self.core.task.sample_prompt(self._rngs[i], self.prompt_split)

    def step(self, actions):
        if not self._started:
            raise RuntimeError("step() called before reset(): call envs.reset() first "
                               "(or again, if the previous step raised)")
        actions = self._check_actions(actions)  # (N,) int64
        self._started = False  # until this step completes: a step that raises needs a reset
        n, core = self.num_envs, self.core
        resetting = self._autoreset.copy()  # (N,) envs that ended last step: reset now
        stepping = ~resetting  # (N,) envs that take their action

        finished = core.append(actions, stepping)  # (N,)
        rewards = np.zeros(n, dtype=np.float64)  # (N,)
        infos: dict[str, Any] = {}

        # Score every env that finished on this step in one reward-function call.
        done_rows = np.flatnonzero(finished)
        if len(done_rows):
            scores, finals = core.finish(done_rows)
            rewards[done_rows] += scores
            for key in finals[0]:
                values = [f[key] for f in finals]
                # Same dtypes as gymnasium's SyncVectorEnv: object arrays (None) for text.
                array = (np.full(n, None, dtype=object) if isinstance(values[0], (str, list))
                         else np.zeros(n, dtype=type(values[0])))
                array[done_rows] = values
                infos[key], infos[f"_{key}"] = array, finished.copy()

        if core.multi_turn:  # per-step infos of the envs that took their action
            rows = np.flatnonzero(stepping)
            step_infos = core.step_infos(rows)
            turn = np.zeros(n, dtype=np.int64)
            turn[rows] = [info["turn"] for info in step_infos]
            infos["turn"], infos["_turn"] = turn, stepping.copy()
            if core.replied.any():
                reply = np.full(n, None, dtype=object)
                for i, info in zip(rows, step_infos):
                    reply[i] = info.get("user_reply")
                infos["user_reply"], infos["_user_reply"] = reply, core.replied.copy()

        # NEXT_STEP autoreset: envs that ended on the previous step start a new episode.
        reset_rows = np.flatnonzero(resetting)
        if len(reset_rows):
            prompts = [self._sample_prompt(i) for i in reset_rows]
            core.start(reset_rows, prompts, [self._rngs[i] for i in reset_rows],
                       self.prompt_split)
            array = infos.get("prompt", np.full(n, None, dtype=object))
            array[reset_rows] = prompts
            infos["prompt"] = array
            infos["_prompt"] = finished | resetting

        self._autoreset = finished
        self._started = True
        if self.render_mode == "human":
            self.render()
        return (core.observations(self.observation_mode), rewards, finished.copy(),
                np.zeros(n, dtype=bool), infos)

    def _check_actions(self, actions) -> np.ndarray:
        a = np.asarray(actions)
        vocab = self.core.vocab_size
        if a.shape != (self.num_envs,) or not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"actions must be an integer array of shape ({self.num_envs},), "
                             f"got {a.dtype} array of shape {a.shape}")
        bad = (a < 0) | (a >= vocab)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"action {int(a[i])} of env {i} is outside the action space: "
                             f"token ids must be in [0, {vocab - 1}]")
        return a.astype(np.int64)

    def render(self) -> tuple | None:
        """"ansi": a tuple of each env's prompt and response so far; "human": print them;
        "rgb_array": a tuple of images of them."""
        if self.render_mode is None:
            return None
        texts = tuple(self.core.text(i) if self._started else ""
                      for i in range(self.num_envs))
        if self.render_mode == "ansi":
            return texts
        if self.render_mode == "rgb_array":
            return tuple(text_to_rgb(t) for t in texts)
        print("\n".join(f"[{i}] {t}" for i, t in enumerate(texts)))
        return None
