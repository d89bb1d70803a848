"""`TextGen-v0`: text generation as a Gymnasium environment.

Each step the agent emits one token (the action). The episode ends when it emits `<eos>`
or the response reaches `max_new_tokens`; the finished (prompt, response) pair is then
scored by a reward function (the learned reward model by default). See SPEC §5.

    env = gym.make("TextGen-v0", reward="gold")
    obs, info = env.reset(seed=0)               # info["prompt"] is the instruction
    obs, reward, terminated, truncated, info = env.step(env.action_space.sample())

This module holds the single env (`TextGenEnv`) and the bookkeeping both envs share
(`EpisodeBatch`: N episodes stepped in lockstep as numpy arrays, plus the optional reference
policy with its KV cache). `textenv.vector_env.TextGenVectorEnv` is the batched version.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from gymnasium import spaces

from textenv.assets import ASSETS_DIR, cached_default, check_vocab, load_policy, load_tokenizer
from textenv.lm import encode_prompt
from textenv.model import GPT, KVCache
from textenv.tasks import Task, make_task
from textenv.tokenizer import Tokenizer

RewardFn = Callable[[list[str], list[str]], Any]
"""f(prompts, responses) -> array-like (B,) of float scores, one per pair.

A reward function may also have a method `score_ids(input_ids, attention_mask)` taking the
finished episodes as token ids, (B, T) int64 laid out [bos] + prompt + response and
right-padded, with a bool mask (B, T) that is False on padding and on pad/bos tokens inside
a response (the tokenizer drops those when decoding, so both views agree). The envs then
call it instead of `f`, which skips decoding each response and encoding it again; the
learned reward model does this."""

REWARD_PRESETS = ("learned", "gold")
ACTION_MASKS = (None, "top_k", "top_p")
OBSERVATION_MODES = ("box", "dict")
RENDER_MODES = ("ansi", "human", "rgb_array")
PROMPT_SPLITS = ("train", "eval")


# ---- loading (cached, so many envs share one read-only copy) ---------------------------------
@lru_cache(maxsize=8)
def _tokenizer(assets_dir: Path) -> Tokenizer:
    return load_tokenizer(assets_dir)


@lru_cache(maxsize=8)
def _reference(assets_dir: Path) -> GPT:
    """The SFT policy of `assets_dir`, loaded once per directory and never trained."""
    if assets_dir == ASSETS_DIR:
        return cached_default("sft")  # share the copy the rest of textenv uses
    model = load_policy("sft", assets_dir)
    model.requires_grad_(False)
    return model


@lru_cache(maxsize=8)
def _reward_model(assets_dir: Path):
    for name in ("reward.json", "reward.safetensors"):
        if not (assets_dir / name).is_file():
            raise FileNotFoundError(
                f"reward model file not found: {assets_dir / name} (reward='learned' needs it; "
                f"build it with `python scripts/build_assets.py`, or use reward='gold' or a "
                f"callable)")
    # Imported here, not at module level: reward_models depends on textenv, not the reverse.
    from reward_models.model import RewardModel
    return RewardModel.load(assets_dir, "reward")


class LearnedReward:
    """reward="learned": the reward model's normalised score, from text or from token ids."""

    def __init__(self, reward_model):
        self.reward_model = reward_model

    def __call__(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        return self.reward_model.score(prompts, responses)  # (B,)

    def score_ids(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.reward_model.score_ids(input_ids, attention_mask)  # (B,)


def make_reward_fn(reward: str | RewardFn, task: Task, assets_dir: str | Path = ASSETS_DIR
                   ) -> RewardFn:
    """Resolve the `reward` argument of the envs into a batched scoring function."""
    if callable(reward):
        return reward
    if reward == "learned":
        return LearnedReward(_reward_model(Path(assets_dir).resolve()))
    if reward == "gold":
        if not hasattr(task, "gold_score"):
            raise ValueError(f"reward='gold' needs a task with gold_score; {task!r} has none")
        return lambda prompts, responses: [task.gold_score(p, r)
                                           for p, r in zip(prompts, responses)]
    raise ValueError(f"unknown reward {reward!r}; valid: {', '.join(map(repr, REWARD_PRESETS))} "
                     f"or a callable f(prompts, responses) -> scores")


def _as_scores(values, n: int) -> np.ndarray:
    """Reward-function output (list, numpy array or torch tensor) -> float64 array (n,)."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    scores = np.asarray(values, dtype=np.float64).reshape(-1)
    if scores.shape != (n,):
        raise ValueError(f"reward function returned shape {scores.shape}, expected ({n},)")
    if not np.isfinite(scores).all():
        raise ValueError(f"reward function returned non-finite scores: {scores}")
    return scores


# ---- shared bookkeeping --------------------------------------------------------------------
class EpisodeBatch:
    """N episodes stepped in lockstep: the state that `TextGenEnv` (N = 1) and
    `TextGenVectorEnv` share. Internal machinery; the envs own seeding and the Gymnasium API.

    Token layout, row i of `tokens` (N, L) with L = 1 + task.max_prompt_tokens + max_new_tokens:

        [bos, prompt ids ..., response ids ..., pad, pad, ...]
         <---- prompt_len[i] ----><- resp_len[i] ->

    When the reference policy is needed (kl_coef > 0 or an action mask), `next_logp` (N, V)
    holds log pi_ref(. | row's tokens so far), kept up to date with a KV cache: one prefill
    at reset, then one 1-token forward per step for the whole batch (plus a prefill of the
    new prompts on a step where some rows reset).
    """

    def __init__(self, num_envs: int, *, task: str | Task, reward: str | RewardFn,
                 max_new_tokens: int | None, kl_coef: float, action_mask: str | None,
                 action_mask_k: int, action_mask_p: float, assets_dir: str | Path,
                 reference: GPT | None):
        self.task: Task = make_task(task)  # unknown names raise, listing the valid ones
        self.assets_dir = Path(assets_dir).resolve()
        self.tokenizer: Tokenizer = _tokenizer(self.assets_dir)
        self.reward_fn = make_reward_fn(reward, self.task, self.assets_dir)
        self.reward_is_gold = reward == "gold"  # then gold_score in info reuses the reward
        self.max_new_tokens = int(self.task.max_response_tokens if max_new_tokens is None
                                  else max_new_tokens)
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if not (np.isfinite(kl_coef) and kl_coef >= 0):
            raise ValueError(f"kl_coef must be a finite number >= 0, got {kl_coef}")
        self.kl_coef = float(kl_coef)
        if action_mask not in ACTION_MASKS:
            raise ValueError(f"unknown action_mask {action_mask!r}; valid: "
                             f"{', '.join(map(repr, ACTION_MASKS))}")
        self.action_mask = action_mask
        self.vocab_size = self.tokenizer.vocab_size
        if not 1 <= action_mask_k <= self.vocab_size:
            raise ValueError(f"action_mask_k must be in [1, {self.vocab_size}], "
                             f"got {action_mask_k}")
        if not 0 < action_mask_p <= 1:
            raise ValueError(f"action_mask_p must be in (0, 1], got {action_mask_p}")
        self.action_mask_k, self.action_mask_p = int(action_mask_k), float(action_mask_p)

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
        self.prompts: list[str] = [""] * self.n

        # The reference policy is only loaded and run when something needs it, so that plain
        # rollouts (kl_coef = 0, no mask) cost no model forward at all.
        self._reference, self._reference_checked = reference, False
        self.uses_reference = self.kl_coef > 0 or self.action_mask is not None
        self.next_logp: torch.Tensor | None = None  # (N, V) when uses_reference
        self._cache: KVCache | None = None
        if self.uses_reference:
            ref = self.reference
            if ref.config.block_size < self.seq_len:
                raise ValueError(
                    f"the reference policy's block_size {ref.config.block_size} is shorter than "
                    f"1 + max_prompt_tokens + max_new_tokens = {self.seq_len}; lower "
                    f"max_new_tokens")
            dtype = next(ref.parameters()).dtype
            # A full prefill takes <= L slots and every step adds one; a partial reset reuses
            # the last slots. When a step would overflow, refresh_reference re-prefills the
            # batch from slot 0 (with vector-env autoresets: about every max_new_tokens steps).
            self._cache = KVCache(ref.config, self.n, self.seq_len + self.max_new_tokens,
                                  dtype=dtype)

    @property
    def reference(self) -> GPT:
        """The frozen reference policy (loaded from assets_dir on first use)."""
        if self._reference is None:
            self._reference = _reference(self.assets_dir)
        if not self._reference_checked:
            check_vocab(self._reference.config.vocab_size, self.tokenizer, "the reference policy")
            self._reference_checked = True
        return self._reference

    # ---- episode starts ----
    def encode(self, prompt: str) -> list[int]:
        """[bos] + prompt ids; ValueError if longer than the task's max_prompt_tokens."""
        if not isinstance(prompt, str):
            raise ValueError(f"a prompt must be a str, got {type(prompt).__name__}")
        ids = encode_prompt(self.tokenizer, prompt)
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

    def start(self, rows: Sequence[int], prompts: Sequence[str]) -> None:
        """Begin new episodes in `rows` with `prompts`. Call refresh_reference(full=True)
        afterwards (the envs do) to bring the reference policy up to date."""
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

    # ---- one token per row ----
    def append(self, actions: np.ndarray, active: np.ndarray
               ) -> tuple[np.ndarray | None, np.ndarray]:
        """Append actions[i] (N,) to every row with active[i] (N,) bool.

        Returns ref_logprob (N,) float64 (log pi_ref(a_i | s_i), 0 for inactive rows; None
        when the reference is not run) and finished (N,) bool (rows that ended on this token).
        """
        rows = np.flatnonzero(active)
        acts = actions[rows]
        ref_logprob = None
        if self.uses_reference:
            ref_logprob = np.zeros(self.n, dtype=np.float64)
            ref_logprob[rows] = self.next_logp[torch.as_tensor(rows), torch.as_tensor(acts)].numpy()
        self.tokens[rows, self.prompt_len[rows] + self.resp_len[rows]] = acts
        self.resp_len[rows] += 1
        finished = np.zeros(self.n, dtype=bool)
        self.eos[rows] = acts == self.eos_id
        finished[rows] = self.eos[rows] | (self.resp_len[rows] >= self.max_new_tokens)
        self.done |= finished
        return ref_logprob, finished

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
        scores = _as_scores(values, len(rows))
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

    # ---- reference policy ----
    @torch.no_grad()
    def refresh_reference(self, full: bool = False, reset_rows: np.ndarray | None = None
                          ) -> None:
        """Bring next_logp up to date after start() and/or append().

        full: prefill the KV cache with every row's tokens so far (one forward over (N, up to
        L) tokens): after a reset of all rows, or when the cache is full.
        Otherwise: feed each still-running row its last token (one forward over (N, 1));
        finished rows feed a masked pad. Rows in `reset_rows` (just start()ed) feed a masked
        pad too, then their new prompts are prefilled on their own (one forward over
        (R, prompt width)) and copied into the cache's last slots, with their old keys
        masked out: a partial reset costs its own rows, not a re-prefill of the batch.
        """
        if not self.uses_reference:
            return
        running = ~self.done  # (N,)
        if not running.any():
            return  # nothing will be stepped before the next start()
        cache = self._cache
        resetting = np.zeros(self.n, dtype=bool)  # (N,)
        if reset_rows is not None:
            resetting[reset_rows] = True
        prompt_width = int(self.prompt_len[resetting].max()) if resetting.any() else 0
        if full or cache.length + 1 > cache.max_len or cache.length + 1 < prompt_width:
            ids, mask = self._left_padded(np.arange(self.n))  # (N, W)
            cache.reset()
            logits = self.reference(torch.from_numpy(ids), torch.from_numpy(mask),
                                    kv_cache=cache)[:, -1]  # (N, V) last column is real
            self.next_logp = F.log_softmax(logits.float(), dim=-1)  # (N, V)
            return
        stepping = running & ~resetting  # (N,)
        rows = np.arange(self.n)
        last = self.tokens[rows, np.maximum(self.prompt_len + self.resp_len - 1, 0)]  # (N,)
        last = np.where(stepping, last, self.pad_id)
        logits = self.reference(torch.from_numpy(last)[:, None],
                                torch.from_numpy(stepping)[:, None], kv_cache=cache)[:, -1]
        if resetting.any():
            r = np.flatnonzero(resetting)
            rt = torch.from_numpy(r)
            ids, mask = self._left_padded(r)  # (R, P) the new prompts
            fresh = KVCache(self.reference.config, len(r), ids.shape[1], dtype=cache.k.dtype)
            logits[rt] = self.reference(torch.from_numpy(ids), torch.from_numpy(mask),
                                        kv_cache=fresh)[:, -1]  # (R, V)
            # The prompt takes the cache's last P slots (its causal order is kept); the old
            # episode's slots are masked out. Positions restart from the prompt's length.
            P, L = ids.shape[1], cache.length
            cache.k[:, rt, :, L - P:L] = fresh.k  # (n_layer, R, H, P, D)
            cache.v[:, rt, :, L - P:L] = fresh.v
            cache.key_mask[rt] = False
            cache.key_mask[rt, L - P:L] = fresh.key_mask
            cache.next_pos[rt] = fresh.next_pos
        self.next_logp = F.log_softmax(logits.float(), dim=-1)  # (N, V)

    def _left_padded(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The tokens so far of `rows`, LEFT-padded: ids (R, W) int64 and mask (R, W) bool."""
        total = self.prompt_len[rows] + self.resp_len[rows]  # (R,) real tokens per row
        width = int(total.max())
        # Without a Python loop: column j of row i reads tokens[i, j - offset_i].
        src = np.arange(width)[None, :] - (width - total)[:, None]  # (R, W)
        mask = src >= 0  # (R, W)
        ids = np.where(mask, np.take_along_axis(self.tokens[rows], np.maximum(src, 0), 1),
                       self.pad_id)  # (R, W)
        return ids, mask

    def action_masks(self) -> np.ndarray:
        """(N, V) bool: the reference's top-k / top-p tokens per row; all True when masks are
        off and for finished rows."""
        masks = np.ones((self.n, self.vocab_size), dtype=bool)
        if self.action_mask is None:
            return masks
        logp = self.next_logp  # (N, V)
        if self.action_mask == "top_k":
            top = torch.topk(logp, self.action_mask_k, dim=-1).indices  # (N, k), exactly k
            keep = torch.zeros_like(logp, dtype=torch.bool).scatter_(-1, top, True)
        else:  # top_p: the smallest set of most likely tokens whose mass reaches p
            sorted_logp, order = logp.sort(dim=-1, descending=True)  # (N, V)
            probs = sorted_logp.exp()
            keep_sorted = (probs.cumsum(-1) - probs) < self.action_mask_p  # top token always
            keep = torch.zeros_like(keep_sorted).scatter_(-1, order, keep_sorted)
        masks[~self.done] = keep.numpy()[~self.done]
        return masks

    # ---- views ----
    def observations(self, mode: str) -> np.ndarray | dict[str, np.ndarray]:
        """Fresh copies: (N, L) int64 ids, or a dict adding attention_mask (N, L) int64."""
        ids = self.tokens.copy()
        if mode == "box":
            return ids
        real = np.arange(self.seq_len)[None, :] < (self.prompt_len + self.resp_len)[:, None]
        return {"input_ids": ids, "attention_mask": real.astype(np.int64)}

    def text(self, i: int) -> str:
        response = self.tokenizer.decode(self.response_ids(i))
        return f"{self.prompts[i]} {response}".rstrip()

    def observation_space(self, mode: str) -> spaces.Space:
        ids = spaces.Box(0, self.vocab_size - 1, shape=(self.seq_len,), dtype=np.int64)
        if mode == "box":
            return ids
        if mode == "dict":
            return spaces.Dict({"input_ids": ids, "attention_mask": spaces.Box(
                0, 1, shape=(self.seq_len,), dtype=np.int64)})
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
    "attention_mask": 1 for real tokens, 0 for padding}` (the mask also tells a `<pad>`
    action apart from padding). Decoded text is in `info` and `render()`.

    Action: `Discrete(vocab_size)`. Any token id is accepted (including special tokens;
    `<bos>`/`<pad>` vanish from the decoded text); ids outside raise `ValueError`.

    Episode: ends with `terminated=True` when the agent emits `<eos>` or the response reaches
    `max_new_tokens` (`info["eos"]` tells which); `truncated` is always False (left to an
    outer time limit). Reward: 0 on intermediate steps, the reward function's score of
    (prompt, response) on the last one, plus `kl_coef * log pi_ref(a_t | s_t)` on every
    step when `kl_coef > 0`.

    Info: `reset` gives `{"prompt"}`. Every step gives `ref_logprob` when the reference
    policy is run (`kl_coef > 0` or an action mask; otherwise it is never run). The last
    step adds `prompt`, `response` (decoded; ends with `"<eos>"` iff EOS), `reward_model_score`
    (the reward function's score), `gold_score` (the task's ground truth), `length`
    (response tokens incl. `<eos>`) and `eos`.

    Keyword arguments:
        task: task name (`"reviews"`) or a `Task` object. Default `"reviews"`.
        reward: `"learned"` (the reward model in `assets_dir`, default), `"gold"` (the task's
            gold score) or a callable `f(prompts: list[str], responses: list[str]) ->
            array-like (B,)` called once per batch of finished episodes.
        max_new_tokens: response length limit; default `task.max_response_tokens`.
        kl_coef: if > 0, each step's reward adds `kl_coef * log pi_ref(a_t | s_t)` (the
            reference policy's log-prob of the action). Default 0.0.
        action_mask: `None` (default), `"top_k"` or `"top_p"`: `action_masks()` allows only
            the reference policy's top-k tokens / smallest top-p nucleus (NLPO-style), for
            sb3-contrib's `MaskablePPO`. The env itself still accepts any action.
        action_mask_k: k for `"top_k"`. Default 20.
        action_mask_p: p for `"top_p"`. Default 0.95.
        observation_mode: `"box"` (default) or `"dict"` (see Observation).
        render_mode: `None` (default), `"ansi"` (`render()` returns the text so far),
            `"human"` (`render()` prints it) or `"rgb_array"` (the text drawn on an image,
            for video recorders; SB3's `make_vec_env` asks for it by default).
        prompt_split: `"train"` (default) or `"eval"` (held-out prompts) for sampled prompts.
        assets_dir: directory with `tokenizer.json`, `sft.*` (the reference policy) and
            `reward.*` (the learned reward model). Default: the shipped `textenv/assets/`.
        reference: a `GPT` to use as reference policy instead of `assets_dir`'s SFT policy
            (which is loaded once per directory and shared read-only between envs).

    Prompts: `reset(options={"prompt": text})` fixes the prompt; otherwise it is sampled
    with `self.np_random` (same seed, same episode). A prompt longer than
    `task.max_prompt_tokens` raises `ValueError` (it is never truncated).
    """

    metadata = {"render_modes": list(RENDER_MODES), "render_fps": 4}

    def __init__(self, *, task: str | Task = "reviews", reward: str | RewardFn = "learned",
                 max_new_tokens: int | None = None, kl_coef: float = 0.0,
                 action_mask: str | None = None, action_mask_k: int = 20,
                 action_mask_p: float = 0.95, observation_mode: str = "box",
                 render_mode: str | None = None, prompt_split: str = "train",
                 assets_dir: str | Path = ASSETS_DIR, reference: GPT | None = None):
        check_render_mode(render_mode)
        check_prompt_split(prompt_split)
        self.core = EpisodeBatch(
            1, task=task, reward=reward, max_new_tokens=max_new_tokens, kl_coef=kl_coef,
            action_mask=action_mask, action_mask_k=action_mask_k, action_mask_p=action_mask_p,
            assets_dir=assets_dir, reference=reference)
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
    def reference(self) -> GPT:
        """The frozen reference policy (the SFT policy of assets_dir unless given)."""
        return self.core.reference

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
        self.core.start([0], [prompt])
        self.core.refresh_reference(full=True)
        self._started = True
        if self.render_mode == "human":
            self.render()
        return self._obs(), {"prompt": prompt}

    def step(self, action):
        if not self._started:
            raise RuntimeError("step() called before reset(): call env.reset() first")
        if self.core.done[0]:
            raise RuntimeError("step() called after the episode ended: call env.reset()")
        action = self._check_action(action)
        ref_logprob, finished = self.core.append(np.array([action]), np.array([True]))
        reward, info = 0.0, {}
        if ref_logprob is not None:
            info["ref_logprob"] = float(ref_logprob[0])
            reward += self.core.kl_coef * info["ref_logprob"]
        if finished[0]:
            scores, (final,) = self.core.finish(np.array([0]))
            reward += float(scores[0])
            info.update(final)
        else:
            self.core.refresh_reference(full=False)
        if self.render_mode == "human":
            self.render()
        return self._obs(), float(reward), bool(finished[0]), False, info

    def _check_action(self, action) -> int:
        a = np.asarray(action)
        if a.size == 1 and a.ndim <= 1 and (np.issubdtype(a.dtype, np.integer)):
            a = int(a.reshape(()))
            if 0 <= a < self.core.vocab_size:
                return a
        raise ValueError(f"action {action!r} is outside the action space: expected an integer "
                         f"token id in [0, {self.core.vocab_size - 1}]")

    def action_masks(self) -> np.ndarray:
        """(vocab_size,) bool: allowed tokens (all True when action_mask is None)."""
        if not self._started:
            raise RuntimeError("action_masks() called before reset(): call env.reset() first")
        return self.core.action_masks()[0]

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
