"""Wrappers that bring the frozen reference policy into the env: KL shaping and action masks.

    env = KLPenalty(gym.make("TextGen-v0"), kl_coef=0.05)          # reward += 0.05 * log pi_ref
    env = ReferenceActionMask(env, mode="top_k", k=20)              # env.action_masks()
    envs = VectorKLPenalty(gym.make_vec("TextGen-v0", num_envs=64), kl_coef=0.05)

`KLPenalty` adds `kl_coef * log pi_ref(a_t | s_t)` to every step's reward and puts the
reference log-prob in `info["ref_logprob"]`. With an entropy bonus of the same coefficient
(SB3's `ent_coef`) this is the KL-regularised objective E[r] - kl_coef * KL(pi || pi_ref) in
expectation, which lets any generic algorithm optimise it. Exact per-token KL shaping, which
needs the agent's own log-probs, lives in the LM agents (they use no wrapper).

`ReferenceActionMask` gives `action_masks()`: the reference's top-k tokens, or its smallest
top-p nucleus (NLPO-style), for sb3-contrib's `MaskablePPO`. The env itself still accepts
any action.

Both read one `ReferenceTracker`: log pi_ref(. | tokens so far) for every row, kept up to date
with a KV cache (a prefill at reset, then ONE batched 1-token forward per step, plus a
prefill of just the new prompts on a step where some rows autoreset). Stacked wrappers
share one tracker, so the reference runs once per step whatever the stack.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from gymnasium.vector import VectorEnv, VectorWrapper

from textenv.assets import check_vocab, load_reference
from textenv.decoding import IncrementalDecoder
from textenv.env import EpisodeBatch
from textenv.model import GPT

ACTION_MASK_MODES = ("top_k", "top_p")


class ReferenceTracker:
    """log pi_ref(. | row's tokens so far) (N, V) for the rows of an `EpisodeBatch`.

    `sync()` brings it up to date with whatever the env did since the last call, looking
    only at the env's public arrays: a row whose episode changed is prefilled; a row one
    token longer feeds that token; a row unchanged, or whose episode is over, feeds a masked
    pad, which the model does not compute (its log-probs are meaningless until the row's
    next episode). Anything else (e.g. several steps without a sync) re-prefills every row,
    which is always correct. The KV cache and its slots are `textenv.decoding.
    IncrementalDecoder`'s: under continuous autoresets the cache fills after about
    max_new_tokens steps, and the batch is then re-prefilled from its current tokens.
    """

    def __init__(self, core: EpisodeBatch, reference: GPT):
        check_vocab(reference.config.vocab_size, core.tokenizer, "the reference policy")
        if reference.config.block_size < core.seq_len:
            raise ValueError(
                f"the reference policy's block_size {reference.config.block_size} is shorter "
                f"than 1 + max_prompt_tokens + max_new_tokens = {core.seq_len}; lower "
                f"max_new_tokens")
        self.core, self.reference = core, reference
        # A full prefill takes <= L slots and every step adds one; a partial reset reuses
        # the last slots; past L + max_new_tokens the batch is re-prefilled.
        self.decoder = IncrementalDecoder(reference, core.n, core.seq_len + core.max_new_tokens)
        self.next_logp: torch.Tensor | None = None  # (N, V)
        self._episode = np.zeros(core.n, dtype=np.int64)  # (N,) episode_id at the last sync
        self._total = np.zeros(core.n, dtype=np.int64)  # (N,) tokens per row at the last sync

    @property
    def cache(self):
        return self.decoder.cache

    @torch.no_grad()
    def sync(self) -> torch.Tensor:
        """log pi_ref of the next token for every row, (N, V) float32."""
        core = self.core
        total = core.prompt_len + core.resp_len  # (N,)
        new_episode = core.episode_id != self._episode  # (N,)
        grew = ~new_episode & (total == self._total + 1)  # (N,) one token appended
        same = ~new_episode & (total == self._total)  # (N,) nothing happened
        if self.next_logp is not None and not new_episode.any() and same.all():
            return self.next_logp  # nothing changed since the last sync
        self._episode, self._total = core.episode_id.copy(), total
        if not (~core.done).any():
            return self.next_logp  # every row is over: nothing will be stepped before a reset
        expected = (grew | same | new_episode).all()  # else (missed steps) re-prefill all
        restart = new_episode if expected else np.ones(core.n, dtype=bool)
        logits = self.decoder.advance(core.tokens, total, restart, grew, live=~core.done,
                                      pad_id=core.pad_id)  # (N, V)
        self.next_logp = F.log_softmax(logits, dim=-1)
        return self.next_logp


def _core_of(env) -> EpisodeBatch:
    core = getattr(env.unwrapped, "core", None)
    if not isinstance(core, EpisodeBatch):
        raise TypeError(f"this wrapper needs a TextGen env (TextGen-v0), got {env.unwrapped!r}")
    return core


def _shared_tracker(env, reference: GPT | None) -> ReferenceTracker:
    """The tracker of a reference wrapper already in `env`'s stack (same reference), or a
    new one: stacked wrappers then run the reference once per step."""
    core = _core_of(env)
    reference = reference if reference is not None else load_reference(core.assets_dir)
    layer = env
    while layer is not None:
        tracker = layer.__dict__.get("reference_tracker")
        if isinstance(tracker, ReferenceTracker) and tracker.reference is reference:
            return tracker
        layer = getattr(layer, "env", None)
    return ReferenceTracker(core, reference)


def _check_kl_coef(kl_coef: float) -> float:
    if isinstance(kl_coef, bool) or not isinstance(kl_coef, (int, float)) \
            or not (np.isfinite(kl_coef) and kl_coef >= 0):
        raise ValueError(f"kl_coef must be a finite number >= 0, got {kl_coef!r}")
    return float(kl_coef)


def _started(core: EpisodeBatch, what: str) -> None:
    if not core.episode_id.all():
        raise RuntimeError(f"{what} called before reset(): call reset() first")


# ---- KL shaping ------------------------------------------------------------------------------
class KLPenalty(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Each step: reward += kl_coef * log pi_ref(a_t | s_t); info["ref_logprob"] holds it.

    reference: the frozen reference policy; default the SFT policy of the env's assets_dir
    (loaded once per directory and shared read-only).
    """

    def __init__(self, env: gym.Env, kl_coef: float = 0.05, reference: GPT | None = None):
        gym.utils.RecordConstructorArgs.__init__(self, kl_coef=kl_coef, reference=reference)
        super().__init__(env)
        self.kl_coef = _check_kl_coef(kl_coef)
        self.reference_tracker = _shared_tracker(env, reference)

    def step(self, action):
        _started(self.reference_tracker.core, "step()")
        logp = self.reference_tracker.sync()  # (1, V) before the action
        obs, reward, terminated, truncated, info = self.env.step(action)  # checks the action
        ref_logprob = float(logp[0, int(np.asarray(action))])
        info = {**info, "ref_logprob": ref_logprob}
        return obs, float(reward) + self.kl_coef * ref_logprob, terminated, truncated, info


class VectorKLPenalty(VectorWrapper):
    """`KLPenalty` for the natively batched vector env: one batched reference forward per
    step. `ref_logprob` is set in infos for every env that took its action (not for envs
    being autoreset on this step, whose action is ignored)."""

    def __init__(self, env: VectorEnv, kl_coef: float = 0.05, reference: GPT | None = None):
        super().__init__(env)
        self.kl_coef = _check_kl_coef(kl_coef)
        self.reference_tracker = _shared_tracker(env, reference)

    def step(self, actions):
        core = self.reference_tracker.core
        _started(core, "step()")
        logp = self.reference_tracker.sync()  # (N, V) before the actions
        stepping = ~self.env.unwrapped.autoreset_rows  # (N,) envs that take their action
        obs, rewards, terminated, truncated, infos = self.env.step(actions)  # checks actions
        rows = np.flatnonzero(stepping)
        acts = torch.as_tensor(np.asarray(actions)[rows])
        ref_logprob = np.zeros(core.n, dtype=np.float64)  # (N,)
        ref_logprob[rows] = logp[torch.from_numpy(rows), acts].numpy()
        rewards = rewards + self.kl_coef * ref_logprob
        if stepping.any():  # as in gymnasium's vector infos: no key when no env has it
            infos = {**infos, "ref_logprob": ref_logprob, "_ref_logprob": stepping}
        return obs, rewards, terminated, truncated, infos


# ---- action masks ----------------------------------------------------------------------------
def reference_action_masks(logp: torch.Tensor, mode: str, k: int, p: float) -> np.ndarray:
    """(N, V) log-probs -> (N, V) bool: the top-k tokens, or the smallest set of most likely
    tokens whose probability mass reaches p (the top token is always in it)."""
    if mode == "top_k":
        top = torch.topk(logp, k, dim=-1).indices  # (N, k), exactly k
        keep = torch.zeros_like(logp, dtype=torch.bool).scatter_(-1, top, True)
    else:
        sorted_logp, order = logp.sort(dim=-1, descending=True)  # (N, V)
        probs = sorted_logp.exp()
        keep_sorted = (probs.cumsum(-1) - probs) < p  # (N, V)
        keep = torch.zeros_like(keep_sorted).scatter_(-1, order, keep_sorted)
    return keep.numpy()


class _MaskSettings:
    def __init__(self, env, mode: str, k: int, p: float):
        if mode not in ACTION_MASK_MODES:
            raise ValueError(f"unknown action mask mode {mode!r}; valid: "
                             f"{', '.join(map(repr, ACTION_MASK_MODES))}")
        vocab = _core_of(env).vocab_size
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= vocab:
            raise ValueError(f"k must be an integer in [1, {vocab}], got {k!r}")
        if not (isinstance(p, (int, float)) and 0 < p <= 1):
            raise ValueError(f"p must be in (0, 1], got {p!r}")
        self.mode, self.k, self.p = mode, int(k), float(p)


class ReferenceActionMask(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """`action_masks()` -> (vocab_size,) bool: the reference policy's top-k tokens
    (`mode="top_k"`) or top-p nucleus (`mode="top_p"`) at the current state; all True once
    the episode has ended. For sb3-contrib's `MaskablePPO` (it finds the method through the
    wrapper stack)."""

    def __init__(self, env: gym.Env, mode: str = "top_k", k: int = 20, p: float = 0.95,
                 reference: GPT | None = None):
        gym.utils.RecordConstructorArgs.__init__(self, mode=mode, k=k, p=p, reference=reference)
        super().__init__(env)
        self.settings = _MaskSettings(env, mode, k, p)
        self.reference_tracker = _shared_tracker(env, reference)

    def action_masks(self) -> np.ndarray:
        core = self.reference_tracker.core
        _started(core, "action_masks()")
        if core.done[0]:
            return np.ones(core.vocab_size, dtype=bool)
        s = self.settings
        return reference_action_masks(self.reference_tracker.sync(), s.mode, s.k, s.p)[0]


class VectorReferenceActionMask(VectorWrapper):
    """`ReferenceActionMask` for the vector env: `action_masks()` -> (num_envs, vocab_size);
    all True for envs about to autoreset (their action is ignored)."""

    def __init__(self, env: VectorEnv, mode: str = "top_k", k: int = 20, p: float = 0.95,
                 reference: GPT | None = None):
        super().__init__(env)
        self.settings = _MaskSettings(env, mode, k, p)
        self.reference_tracker = _shared_tracker(env, reference)

    def action_masks(self) -> np.ndarray:
        core = self.reference_tracker.core
        _started(core, "action_masks()")
        s = self.settings
        masks = reference_action_masks(self.reference_tracker.sync(), s.mode, s.k, s.p)
        masks[core.done] = True
        return masks
