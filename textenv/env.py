"""`TextGen-v0`: text generation as a Gymnasium environment.

Each step the agent emits one token (the action). The episode ends when it emits `<eos>`
or the response reaches `max_new_tokens`; the finished (prompt, response) pair is then
scored by a reward function (the learned reward model by default).

    env = gym.make("TextGen-v0", reward="gold")
    obs, info = env.reset(seed=0)               # info["prompt"] is the instruction
    obs, reward, terminated, truncated, info = env.step(env.action_space.sample())

This module holds the single env (`TextGenEnv`) and the bookkeeping both envs share
(`EpisodeBatch`: N episodes stepped in lockstep as numpy arrays).
`textenv.vector_env.TextGenVectorEnv` is the batched version. The env core owns tokens,
episodes and rewards only: KL shaping against the reference policy and reference action
masks are wrappers (`textenv.wrappers`).
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

from textenv.assets import load_tokenizer, resolve_assets_dir
from textenv.lm import encode_prompt
from textenv.model import resolve_device
from textenv.rewards import RewardFn, as_scores, make_reward_fn
from textenv.tasks import Task, check_task_name, make_task
from textenv.tokenizer import Tokenizer

OBSERVATION_MODES = ("box", "dict")
RENDER_MODES = ("ansi", "human", "rgb_array")
PROMPT_SPLITS = ("train", "eval", "test")


@lru_cache(maxsize=8)
def _tokenizer(assets_dir: Path) -> Tokenizer:
    return load_tokenizer(assets_dir)


# ---- shared bookkeeping --------------------------------------------------------------------
class EpisodeBatch:
    """N episodes stepped in lockstep: the state that `TextGenEnv` (N = 1) and
    `TextGenVectorEnv` share. Internal machinery; the envs own seeding and the Gymnasium API.

    Token layout, row i of `tokens` (N, L) with L = 1 + task.max_prompt_tokens + max_new_tokens:

        [bos, prompt ids ..., response ids ..., pad, pad, ...]
         <---- prompt_len[i] ----><- resp_len[i] ->

    `episode_id[i]` counts the episodes row i has started and `step_count` the calls of
    start()/append(): wrappers that follow the tokens (the reference policy's KV cache) read
    them to see what changed since they last looked.
    """

    def __init__(self, num_envs: int, *, task: str | Task, reward: str | RewardFn,
                 max_new_tokens: int | None, assets_dir: str | Path | None,
                 device: str = "cpu", tokenizer: Tokenizer | None = None):
        if isinstance(task, str):
            check_task_name(task)  # unknown names raise, listing the valid ones
        # A tokenizer passed in (the asset build, before any assets exist) needs no assets.
        self.assets_dir = (resolve_assets_dir(assets_dir, task)
                           if tokenizer is None or assets_dir is not None else None)
        self.task: Task = make_task(task, self.assets_dir)
        self.tokenizer: Tokenizer = tokenizer if tokenizer is not None else _tokenizer(
            self.assets_dir)
        self.device = str(resolve_device(device))  # the reward model's and the reference's
        self.reward_fn = make_reward_fn(reward, self.task, self.assets_dir, self.device)
        self.reward_is_gold = reward == "gold"  # then gold_score in info reuses the reward
        if max_new_tokens is None:
            max_new_tokens = self.task.max_response_tokens
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) \
                or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
        self.max_new_tokens = int(max_new_tokens)
        self.vocab_size = self.tokenizer.vocab_size
        self.special_ids = {self.tokenizer.pad_id, self.tokenizer.bos_id, self.tokenizer.eos_id}

        self.n = num_envs
        self.max_prompt_len = 1 + self.task.max_prompt_tokens  # bos + prompt
        self.seq_len = self.max_prompt_len + self.max_new_tokens  # L
        self.pad_id, self.eos_id = self.tokenizer.pad_id, self.tokenizer.eos_id
        reward_model = getattr(self.reward_fn, "reward_model", None)
        if reward_model is not None and reward_model.config.block_size < self.seq_len:
            # Fail now, not when the first long response ends mid-training.
            raise ValueError(
                f"the reward model's block_size {reward_model.config.block_size} is shorter than "
                f"1 + max_prompt_tokens + max_new_tokens = {self.seq_len}; lower max_new_tokens")
        self.tokens = np.full((self.n, self.seq_len), self.pad_id, dtype=np.int64)  # (N, L)
        self.prompt_len = np.zeros(self.n, dtype=np.int64)  # (N,) bos + prompt tokens
        self.resp_len = np.zeros(self.n, dtype=np.int64)  # (N,) response tokens so far
        self.done = np.zeros(self.n, dtype=bool)  # (N,) episode over (EOS or length limit)
        self.eos = np.zeros(self.n, dtype=bool)  # (N,) ended by EOS
        self.episode_id = np.zeros(self.n, dtype=np.int64)  # (N,) episodes started per row
        self.step_count = 0  # start() and append() calls so far
        self.prompts: list[str] = [""] * self.n

        # Multi-turn tasks (the task writes the user's replies): the agent's `<eos>` ends its
        # turn, the user's reply is appended, and the task says when the episode ends.
        self.multi_turn = hasattr(self.task, "user_reply")
        if self.multi_turn:
            need = self.task.max_turn_tokens + 1 + self.task.max_reply_tokens
            if self.max_new_tokens < need:
                raise ValueError(f"max_new_tokens={self.max_new_tokens} leaves no room for one "
                                 f"turn and reply of task {self.task.name!r} (needs {need})")
            self.agent_mask = np.zeros((self.n, self.seq_len), dtype=bool)  # (N, L) agent tokens
            self.turn = np.zeros(self.n, dtype=np.int64)  # (N,) agent turns completed
            self.turn_len = np.zeros(self.n, dtype=np.int64)  # (N,) tokens of the current turn
            self.replied = np.zeros(self.n, dtype=bool)  # (N,) the user replied on this step
            self.states: list[Any] = [None] * self.n  # the task's hidden state per row
            self.transcripts: list[list[tuple[str, str]]] = [[] for _ in range(self.n)]
            self.outcomes: list[str] = [""] * self.n

    # ---- episode starts ----
    def encode(self, prompt: str) -> list[int]:
        """[bos] + prompt ids; ValueError if longer than the task's max_prompt_tokens or if
        it holds special tokens (<pad>, <bos>, <eos>: a prompt is plain task text)."""
        if not isinstance(prompt, str):
            raise ValueError(f"a prompt must be a str, got {type(prompt).__name__}")
        ids = encode_prompt(self.tokenizer, prompt)
        if self.special_ids.intersection(ids[1:]):
            raise ValueError(f"a prompt may not contain special tokens (<pad>, <bos>, <eos>): "
                             f"{prompt!r}")
        if len(ids) > self.max_prompt_len:
            raise ValueError(f"prompt has {len(ids) - 1} tokens, more than the task's "
                             f"max_prompt_tokens={self.task.max_prompt_tokens}: {prompt!r}")
        return ids

    def check_prompt(self, prompt: str) -> None:
        """Fail at reset, not at the episode's end, if the task's gold scorer rejects it."""
        self.encode(prompt)
        if hasattr(self.task, "gold_score"):
            try:
                self.task.gold_score(prompt, "")
            except ValueError as e:
                raise ValueError(f"prompt not valid for task {self.task.name!r}: {e}") from e

    def start(self, rows: Sequence[int], prompts: Sequence[str],
              rngs: Sequence[np.random.Generator] = (), split: str = "train") -> None:
        """Begin new episodes in `rows` with `prompts`. A multi-turn task draws each row's
        hidden state with that row's generator in `rngs` (among the games of `split`)."""
        if self.multi_turn:
            for i, prompt, rng in zip(rows, prompts, rngs, strict=True):
                self.states[i] = self.task.new_dialogue(prompt, rng, split)
                self.transcripts[i] = []
                self.outcomes[i] = ""
            rows_ = np.asarray(rows, dtype=np.int64)
            self.agent_mask[rows_] = False
            self.turn[rows_] = 0
            self.turn_len[rows_] = 0
        for i, prompt in zip(rows, prompts):
            ids = self.encode(prompt)
            self.tokens[i] = self.pad_id
            self.tokens[i, :len(ids)] = ids
            self.prompt_len[i] = len(ids)
            self.prompts[i] = prompt
        rows = np.asarray(rows, dtype=np.int64)
        self.resp_len[rows] = 0
        self.done[rows] = False
        self.eos[rows] = False
        self.episode_id[rows] += 1
        self.step_count += 1

    # ---- one token per row ----
    def append(self, actions: np.ndarray, active: np.ndarray) -> np.ndarray:
        """Append actions[i] (N,) to every row with active[i] (N,) bool.
        Returns finished (N,) bool: the rows that ended on this token."""
        rows = np.flatnonzero(active)
        acts = actions[rows]
        self.tokens[rows, self.prompt_len[rows] + self.resp_len[rows]] = acts
        self.resp_len[rows] += 1
        finished = np.zeros(self.n, dtype=bool)
        self.eos[rows] = acts == self.eos_id
        finished[rows] = self.eos[rows] | (self.resp_len[rows] >= self.max_new_tokens)
        if self.multi_turn:  # an ended turn gets the user's reply; the task says if it is over
            self.agent_mask[rows, self.prompt_len[rows] + self.resp_len[rows] - 1] = True
            self.turn_len[rows] += 1
            self.replied[:] = False
            turn_over = finished[rows] | (self.turn_len[rows] >= self.task.max_turn_tokens)
            for i in rows[turn_over]:
                finished[i] = self._user_turn(i)
        self.done |= finished
        self.step_count += 1
        return finished

    def _user_turn(self, i: int) -> bool:
        """Row i's agent turn has ended: append the user's reply. True if the episode is over
        (success or failure, the task's turn limit, or no room left for a turn and reply)."""
        total = self.prompt_len[i] + self.resp_len[i]
        turn = self.tokenizer.decode(self.tokens[i, total - self.turn_len[i]:total])
        reply, outcome = self.task.user_reply(self.states[i], turn)
        self.turn[i] += 1
        self.turn_len[i] = 0
        self.transcripts[i].append(("agent", turn))
        ids = self.tokenizer.encode(reply)
        if self.tokens[i, total - 1] != self.eos_id:  # cut off: the env closes the turn
            ids = [self.eos_id] + ids  # so that the text tells where every turn ends
        if len(ids) > self.max_new_tokens - self.resp_len[i]:
            self.outcomes[i] = "length"  # the dialogue ran out of room: no reply
            return True
        self.tokens[i, total:total + len(ids)] = ids
        self.resp_len[i] += len(ids)
        self.transcripts[i].append(("user", reply))
        self.replied[i] = True
        room = self.max_new_tokens - self.resp_len[i]
        need = self.task.max_turn_tokens + 1 + self.task.max_reply_tokens
        if outcome is None and self.turn[i] >= self.task.max_turns:
            outcome = "turn_limit"
        elif outcome is None and room < need:
            outcome = "length"
        self.outcomes[i] = outcome or ""
        return outcome is not None

    def step_infos(self, rows: np.ndarray) -> list[dict[str, Any]]:
        """Per-step info of `rows` of a multi-turn task: `turn` (agent turns completed) and,
        when the user replied on this step, `user_reply`."""
        infos = []
        for i in rows:
            info: dict[str, Any] = {"turn": int(self.turn[i])}
            if self.replied[i]:
                info["user_reply"] = self.transcripts[i][-1][1]
            infos.append(info)
        return infos

    def finish(self, rows: np.ndarray) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """Score the finished `rows` in ONE reward-function call.
        Returns scores (len(rows),) and each row's final info."""
        prompts = [self.prompts[i] for i in rows]
        responses = [self.tokenizer.decode(self.response_ids(i)) for i in rows]
        if hasattr(self.reward_fn, "score_ids"):
            ids, mask = self.sequences(rows)
            values = self.reward_fn.score_ids(torch.from_numpy(ids), torch.from_numpy(mask))
        else:
            values = self.reward_fn(prompts, responses)
        scores = as_scores(values, len(rows))
        infos = []
        for j, i in enumerate(rows):
            info = {"prompt": prompts[j], "response": responses[j],
                    "reward_model_score": float(scores[j])}
            if self.reward_is_gold:
                info["gold_score"] = float(scores[j])
            elif hasattr(self.task, "gold_score"):
                info["gold_score"] = float(self.task.gold_score(prompts[j], responses[j]))
            info["length"] = int(self.resp_len[i])
            info["eos"] = bool(self.eos[i])
            if self.multi_turn:
                info["turns"] = int(self.turn[i])
                info["outcome"] = self.outcomes[i]
                info["transcript"] = list(self.transcripts[i])
            infos.append(info)
        return scores, infos

    def sequences(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """[bos] + prompt + response of `rows`, right-padded: ids (R, W) int64 and mask
        (R, W) bool, False on padding and on pad/bos tokens inside a response (which
        decoding drops), so the ids say exactly what the decoded text says."""
        total = self.prompt_len[rows] + self.resp_len[rows]  # (R,)
        width = int(total.max())
        ids = self.tokens[rows, :width]  # (R, W) rows are pad-filled past their end
        col = np.arange(width)[None, :]  # (1, W)
        in_response = col >= self.prompt_len[rows][:, None]  # (R, W)
        dropped = in_response & ((ids == self.pad_id) | (ids == self.tokenizer.bos_id))
        return ids, (col < total[:, None]) & ~dropped

    def response_ids(self, i: int) -> np.ndarray:
        start = self.prompt_len[i]
        return self.tokens[i, start:start + self.resp_len[i]]

    # ---- views ----
    def observations(self, mode: str) -> np.ndarray | dict[str, np.ndarray]:
        """Fresh copies: (N, L) int64 ids, or a dict adding attention_mask (1 on every real
        token: prompt and response, 0 on padding) and prompt_mask (1 on [bos] + prompt)."""
        ids = self.tokens.copy()
        if mode == "box":
            return ids
        col = np.arange(self.seq_len)[None, :]  # (1, L)
        real = col < (self.prompt_len + self.resp_len)[:, None]  # (N, L)
        prompt = col < self.prompt_len[:, None]  # (N, L)
        obs = {"input_ids": ids, "attention_mask": real.astype(np.int64),
               "prompt_mask": prompt.astype(np.int64)}
        if self.multi_turn:
            obs["agent_mask"] = self.agent_mask.astype(np.int64)
        return obs

    def text(self, i: int) -> str:
        response = self.tokenizer.decode(self.response_ids(i))
        return f"{self.prompts[i]} {response}".rstrip()

    def observation_space(self, mode: str) -> spaces.Space:
        ids = spaces.Box(0, self.vocab_size - 1, shape=(self.seq_len,), dtype=np.int64)
        if mode == "box":
            return ids
        if mode == "dict":
            mask = spaces.Box(0, 1, shape=(self.seq_len,), dtype=np.int64)
            keys = ["input_ids", "attention_mask", "prompt_mask"]
            if self.multi_turn:
                keys.append("agent_mask")  # 1 on the agent's tokens, 0 on the user's
            return spaces.Dict({k: ids if k == "input_ids" else mask for k in keys})
        raise ValueError(f"unknown observation_mode {mode!r}; valid: "
                         f"{', '.join(map(repr, OBSERVATION_MODES))}")


def check_render_mode(render_mode: str | None) -> None:
    if render_mode is not None and render_mode not in RENDER_MODES:
        raise ValueError(f"unknown render_mode {render_mode!r}; valid: None, "
                         f"{', '.join(map(repr, RENDER_MODES))}")


def check_prompt_split(split: str) -> None:
    if split not in PROMPT_SPLITS:
        raise ValueError(f"unknown prompt_split {split!r}; valid: "
                         f"{', '.join(map(repr, PROMPT_SPLITS))}")


# ---- the single env ------------------------------------------------------------------------
class TextGenEnv(gym.Env):
    """Generate a response to a task prompt, one token per step.

    Observation: int64 `Box` of shape (L,), L = 1 + task.max_prompt_tokens + max_new_tokens,
    holding `[bos] + prompt ids + response ids so far`, right-padded with the tokenizer's
    pad id (the response starts right after the prompt, so its offset varies with the
    prompt's length). With `observation_mode="dict"`: `{"input_ids": that array,
    "attention_mask": 1 for real tokens, 0 for padding, "prompt_mask": 1 for [bos] +
    prompt}`: the masks tell where the prompt ends and a `<pad>` action from padding.
    Decoded text is in `info` and `render()`.

    Action: `Discrete(vocab_size)`. Any token id is accepted (the env checkers sample at
    random), but a policy should never emit `<pad>`, `<bos>` or `<unk>`: `<bos>`/`<pad>`
    vanish from the decoded text and no task writes them (`textenv.decoding.PolicyDecoder`
    masks them out). Ids outside the space raise `ValueError`.

    Episode: ends with `terminated=True` when the agent emits `<eos>` or the response reaches
    `max_new_tokens` (`info["eos"]` tells which); `truncated` is always False (left to an
    outer time limit). Reward: 0 on intermediate steps, the reward function's score of
    (prompt, response) on the last one. KL shaping against the reference policy is the
    wrapper `textenv.wrappers.KLPenalty`; reference action masks are
    `textenv.wrappers.ReferenceActionMask`.

    Info: `reset` gives `{"prompt"}`. The last step gives `prompt`, `response` (decoded;
    ends with `"<eos>"` iff EOS), `reward_model_score` (the reward function's score),
    `gold_score` (the task's ground truth), `length` (response tokens incl. `<eos>`) and
    `eos`.

    Multi-turn tasks (those with `user_reply`, e.g. `task="dialogue"`): the agent's `<eos>`
    (or `task.max_turn_tokens` tokens) ends its turn, and the same step appends the simulated
    user's reply; the episode ends (terminated) on the task's success or failure, after
    `task.max_turns` turns, or when no room is left for a turn and a reply. The observation
    holds the whole dialogue (the dict observation adds `agent_mask`: 1 on the agent's
    tokens); every step's info has `turn` and, when the user replied, `user_reply`; the last
    adds `turns`, `outcome` and `transcript`, and `response` is the whole transcript.

    Keyword arguments:
        task: task name (`"reviews"`) or a `Task` object. Default `"reviews"`.
        reward: `"learned"` (the reward model in `assets_dir`, default), `"gold"` (the task's
            gold score), `"ensemble"` (the reward ensemble in `assets_dir`) or a callable
            `f(prompts: list[str], responses: list[str]) -> array-like (B,)` called once
            per batch of finished episodes.
        max_new_tokens: response length limit; default `task.max_response_tokens`.
        observation_mode: `"box"` (default) or `"dict"` (see Observation).
        render_mode: `None` (default), `"ansi"` (`render()` returns the text so far),
            `"human"` (`render()` prints it) or `"rgb_array"` (the text drawn on an image,
            for video recorders; SB3's `make_vec_env` asks for it by default).
        prompt_split: where sampled prompts come from: `"train"` (default), `"eval"` (held-out
            prompts whose instruction was seen in training) or `"test"` (instructions never
            seen by any training stage).
        assets_dir: directory with `tokenizer.json`, `sft.*` (the reference policy) and
            `reward.*` (the learned reward model). Default: the task's shipped assets,
            `textenv/assets/<task>/`.
        device: where the reward model (and the reference policy of the KL wrappers) run:
            `"cpu"` (default), `"cuda"`, `"cuda:N"` or `"auto"` (cuda if available).
            Observations, rewards and infos are numpy whatever the device.

    Prompts: `reset(options={"prompt": text})` fixes the prompt; otherwise it is sampled
    with `self.np_random` (same seed, same episode). A prompt longer than
    `task.max_prompt_tokens` raises `ValueError` (it is never truncated).
    """

    metadata = {"render_modes": list(RENDER_MODES), "render_fps": 4}

    def __init__(self, *, task: str | Task = "reviews", reward: str | RewardFn = "learned",
                 max_new_tokens: int | None = None, observation_mode: str = "box",
                 render_mode: str | None = None, prompt_split: str = "train",
                 assets_dir: str | Path | None = None, device: str = "cpu"):
        check_render_mode(render_mode)
        check_prompt_split(prompt_split)
        self.core = EpisodeBatch(1, task=task, reward=reward, max_new_tokens=max_new_tokens,
                                 assets_dir=assets_dir, device=device)
        self.observation_mode = observation_mode
        self.observation_space = self.core.observation_space(observation_mode)
        self.action_space = spaces.Discrete(self.core.vocab_size)
        self.render_mode = render_mode
        self.prompt_split = prompt_split
        self._started = False

    # Read-only conveniences for agents.
    @property
    def task(self) -> Task:
        return self.core.task

    @property
    def tokenizer(self) -> Tokenizer:
        return self.core.tokenizer

    @property
    def max_new_tokens(self) -> int:
        return self.core.max_new_tokens

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        options = dict(options or {})
        unknown = set(options) - {"prompt"}
        if unknown:
            raise ValueError(f"unknown reset options {sorted(unknown)}; valid: 'prompt'")
        if "prompt" in options:
            prompt = options["prompt"]
            self.core.check_prompt(prompt)
        else:
            prompt = self.task.sample_prompt(self.np_random, self.prompt_split)
        self.core.start([0], [prompt], [self.np_random], self.prompt_split)
        self._started = True
        warn_if_mlp_reads_token_ids(self)
        if self.render_mode == "human":
            self.render()
        return self._obs(), {"prompt": prompt}

    def step(self, action):
        if not self._started:
            raise RuntimeError("step() called before reset(): call env.reset() first")
        if self.core.done[0]:
            raise RuntimeError("step() called after the episode ended: call env.reset()")
        action = self._check_action(action)
        finished = self.core.append(np.array([action]), np.array([True]))
        reward, info = 0.0, {}
        if self.core.multi_turn:
            info.update(self.core.step_infos(np.array([0]))[0])
        if finished[0]:
            scores, (final,) = self.core.finish(np.array([0]))
            reward = float(scores[0])
            info.update(final)
        if self.render_mode == "human":
            self.render()
        return self._obs(), reward, bool(finished[0]), False, info

    def _check_action(self, action) -> int:
        a = np.asarray(action)
        if a.size == 1 and a.ndim <= 1 and (np.issubdtype(a.dtype, np.integer)):
            a = int(a.reshape(()))
            if 0 <= a < self.core.vocab_size:
                return a
        raise ValueError(f"action {action!r} is outside the action space: expected an integer "
                         f"token id in [0, {self.core.vocab_size - 1}]")

    def _obs(self):
        obs = self.core.observations(self.observation_mode)
        if self.observation_mode == "box":
            return obs[0]
        return {k: v[0] for k, v in obs.items()}

    def render(self) -> str | np.ndarray | None:
        """"ansi": the prompt and the response so far; "human": print them;
        "rgb_array": the same text drawn on an image (for video recorders)."""
        if self.render_mode is None:
            gym.logger.warn("render() called without a render_mode; pass render_mode='ansi', "
                            "'human' or 'rgb_array' when making the env")
            return None
        text = self.core.text(0) if self._started else ""
        if self.render_mode == "ansi":
            return text
        if self.render_mode == "rgb_array":
            return text_to_rgb(text)
        print(text)
        return None


def text_to_rgb(text: str, width: int = 640, height: int = 160) -> np.ndarray:
    """Draw `text` (wrapped) on a white (height, width, 3) uint8 image with matplotlib."""
    import textwrap

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width / 100, height / 100), dpi=100)
    canvas = FigureCanvasAgg(fig)
    fig.text(0.01, 0.95, textwrap.fill(text, 90), va="top", ha="left", family="monospace",
             fontsize=8)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()  # (H, W, 3)


# ---- a hint for generic agents -------------------------------------------------------------
RAW_IDS_WARNING = (
    "a stable-baselines3 policy that flattens its observation (\"MlpPolicy\" with no "
    "features extractor of its own) is reading TextGen's raw token ids, which an MLP takes "
    "as magnitudes. Wrap the env in textenv.wrappers.OneHotObservation (small vocabularies, "
    "e.g. TextGen-Sequences-v0), or embed the ids with agents.sb3.lm_policy_kwargs(); see "
    "docs/environment.md, section stable-baselines3.")
_raw_ids_warned = False  # once per process


def warn_if_mlp_reads_token_ids(env: TextGenEnv) -> None:
    """Warn once (UserWarning) when a stable-baselines3 algorithm whose policy flattens the
    observation reads this env's raw token ids.

    Called at every reset until it has seen the algorithm: SB3 resets its envs from methods
    of its algorithm (`learn`, `collect_rollouts`), so the algorithm is `self` in one of the
    calling frames. It warns when that algorithm's observation space is still the env's int
    Box (no encoding wrapper such as `OneHotObservation` in between) and its policy has no
    features extractor of its own (SB3's default flattens). Costs nothing while SB3 is not
    imported; envs reset by anything else (own agents, SB3's `check_env`) never warn.
    """
    global _raw_ids_warned
    base_class = sys.modules.get("stable_baselines3.common.base_class")
    if _raw_ids_warned or base_class is None or env.__dict__.get("_sb3_checked"):
        return
    frame, model = sys._getframe(1), None
    for _ in range(20):  # SB3 -> its VecEnv -> a few wrappers -> here
        if frame is None:
            break
        owner = frame.f_locals.get("self")
        if isinstance(owner, base_class.BaseAlgorithm):
            model = owner
            break
        frame = frame.f_back
    if model is None:
        return
    env._sb3_checked = True
    flatten = sys.modules["stable_baselines3.common.torch_layers"].FlattenExtractor
    space = model.observation_space
    raw_ids = isinstance(space, spaces.Box) and np.issubdtype(space.dtype, np.integer)
    extractor = (model.policy_kwargs or {}).get("features_extractor_class", flatten)
    if raw_ids and extractor is flatten:
        _raw_ids_warned = True
        warnings.warn(RAW_IDS_WARNING, UserWarning, stacklevel=2)
