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

`OneHotObservation` (and `VectorOneHotObservation`) needs no reference: it turns the token
ids into one-hot floats, the observation a generic agent's MLP can read (SB3's
`PPO("MlpPolicy")` from scratch on `TextGen-Sequences-v0`).
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
from textenv.rewards import as_scores

ACTION_MASK_MODES = ("top_k", "top_p")


class ReferenceTracker:
    """log pi_ref(. | row's tokens so far) (N, V) for the rows of an `EpisodeBatch`.

    `sync()` brings it up to date with whatever the env did since the last call, looking
    only at the env's public arrays: a row whose episode changed is prefilled; a row one
    token longer feeds that token (in a multi-turn dialogue, a row that also got the
    user's reply feeds those tokens too: the dialogue so far is not recomputed, and the
    agent's next action is scored against the reply); a row unchanged, or whose episode
    is over, feeds a masked pad, which the model does not compute (its log-probs are
    meaningless until the row's next episode). Anything else (e.g. several steps without
    a sync) re-prefills every row, which is always correct. The KV cache and its slots
    are `textenv.decoding.IncrementalDecoder`'s: under continuous autoresets the cache
    fills after about max_new_tokens steps, and the batch is then re-prefilled from its
    current tokens.
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
        if core.multi_turn:  # (N,) int: an action, plus the user's reply if the turn ended
            grew = np.where(~new_episode & (total > self._total), total - self._total, 0)
        same = ~new_episode & (total == self._total)  # (N,) nothing happened
        if self.next_logp is not None and not new_episode.any() and same.all():
            return self.next_logp  # nothing changed since the last sync
        self._episode, self._total = core.episode_id.copy(), total
        if not (~core.done).any():
            return self.next_logp  # every row is over: nothing will be stepped before a reset
        expected = ((grew > 0) | same | new_episode).all()  # else (missed steps) re-prefill
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
    reference = reference if reference is not None else load_reference(core.assets_dir,
                                                                      core.device)
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


# ---- observations for generic agents -----------------------------------------------------------
def _one_hot_space(env_space: gym.Space, vocab_size: int, flatten: bool) -> gym.spaces.Box:
    if not (isinstance(env_space, gym.spaces.Box) and np.issubdtype(env_space.dtype, np.integer)
            and len(env_space.shape) == 1):
        raise TypeError(f"one-hot observations need the env's token-id Box observation "
                        f"(observation_mode='box'), got {env_space}")
    shape = (env_space.shape[0] * vocab_size,) if flatten else (env_space.shape[0], vocab_size)
    return gym.spaces.Box(0.0, 1.0, shape=shape, dtype=np.float32)


class OneHotObservation(gym.ObservationWrapper, gym.utils.RecordConstructorArgs):
    """Token ids -> one-hot floats, the observation a generic agent (an MLP) can read.

    The env's observation is (L,) int64 token ids; a plain `MlpPolicy` would read them as
    magnitudes (token 12 "bigger" than token 3). This wrapper gives a float32 `Box` in {0, 1}
    of shape (L * vocab_size,) (or (L, vocab_size) with `flatten=False`): row i is the one-hot
    of the token at position i, padding included (`<pad>` has its own column). The position
    of every token is where its row sits, so the layout is the position encoding.

        env = OneHotObservation(gym.make("TextGen-Sequences-v0", reward="gold"))
        model = stable_baselines3.PPO("MlpPolicy", env)

    Meant for small vocabularies (the `sequences` task: 16 tokens, L = 11 -> 176 floats);
    LM-sized observations are better read by an embedding (`agents.sb3.lm_policy_kwargs`).
    """

    def __init__(self, env: gym.Env, flatten: bool = True):
        gym.utils.RecordConstructorArgs.__init__(self, flatten=flatten)
        super().__init__(env)
        vocab = _core_of(env).vocab_size
        self.observation_space = _one_hot_space(env.observation_space, vocab, flatten)
        self.flatten = flatten
        self._eye = np.eye(vocab, dtype=np.float32)  # row t = one-hot of token t

    def observation(self, observation: np.ndarray) -> np.ndarray:
        one_hot = self._eye[observation]  # (L, V)
        return one_hot.reshape(-1) if self.flatten else one_hot


class VectorOneHotObservation(gym.vector.VectorObservationWrapper):
    """`OneHotObservation` for the vector env: (N, L) ids -> (N, L * vocab_size) floats
    (or (N, L, vocab_size) with `flatten=False`)."""

    def __init__(self, env: VectorEnv, flatten: bool = True):
        super().__init__(env)
        vocab = _core_of(env).vocab_size
        self.single_observation_space = _one_hot_space(env.single_observation_space, vocab,
                                                       flatten)
        self.observation_space = gym.vector.utils.batch_space(self.single_observation_space,
                                                              env.num_envs)
        self.flatten = flatten
        self._eye = np.eye(vocab, dtype=np.float32)

    def observations(self, observations: np.ndarray) -> np.ndarray:
        one_hot = self._eye[observations]  # (N, L, V)
        return one_hot.reshape(len(one_hot), -1) if self.flatten else one_hot


# ---- whole turns as text actions ---------------------------------------------------------------
class TextActions(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """The action is a whole response (single-turn tasks) or a whole agent turn (multi-turn
    tasks) as text: a `gymnasium.spaces.Text` over the characters of the task's words, so
    that an external language model or a scripted agent plays against the same episodes,
    rewards and gold as a token-level agent.

        env = TextActions(gym.make("TextGen-Dialogue-v0", reward="gold"))
        obs, info = env.reset(seed=0)
        obs, reward, terminated, truncated, info = env.step("which size ?")

    `step(text)` feeds the text's tokens to the env one by one (so token-level wrappers
    below, e.g. `KLPenalty`, see every token) and then `<eos>`, stopping where the env ends
    the turn or the episode (an `<eos>` in the text, or the length limit: the rest of the
    text is dropped). A word the tokenizer does not know becomes `<unk>` (every action in
    the space is accepted; the gold scorer marks such text ungrammatical). The reward is the
    sum over the tokens; info is the last token's, plus `tokens` (how many were fed).
    Observations are the wrapped env's. stable-baselines3 has no Text action spaces: its
    agents use the token-level env.
    """

    def __init__(self, env: gym.Env):
        gym.utils.RecordConstructorArgs.__init__(self)
        super().__init__(env)
        core = _core_of(env)
        self.core = core
        words = list(core.task.vocabulary()) + ["<eos>"]
        charset = sorted(set("".join(words)) | {" "})
        per_action = core.task.max_turn_tokens if core.multi_turn else core.max_new_tokens
        self.action_space = gym.spaces.Text(
            max_length=per_action * (max(map(len, words)) + 1), charset="".join(charset))

    def _ids(self, text: str) -> list[int]:
        tokenizer, unk = self.core.tokenizer, getattr(self.core.tokenizer, "unk_id", 3)
        ids = []
        for word in text.split():
            try:
                ids += tokenizer.encode(word)
            except ValueError:
                ids.append(unk)
        return ids + [self.core.eos_id]

    def step(self, action):
        if not isinstance(action, str) or not self.action_space.contains(action):
            raise ValueError(f"action {action!r} is outside the action space: expected a str of "
                             f"at most {self.action_space.max_length} characters of the task's "
                             f"words")
        total, fed = 0.0, 0
        for token in self._ids(action):
            obs, reward, terminated, truncated, info = self.env.step(token)
            total, fed = total + float(reward), fed + 1
            turn_ended = self.core.multi_turn and self.core.turn_len[0] == 0
            if terminated or truncated or turn_ended or token == self.core.eos_id:
                break
        return obs, total, terminated, truncated, {**info, "tokens": fed}


# ---- per-turn rewards of multi-turn tasks ------------------------------------------------------
def _dialogue_scores(core: EpisodeBatch, rows: np.ndarray) -> np.ndarray:
    """The env's reward function on the dialogues so far of `rows`, in one call. (R,)"""
    if hasattr(core.reward_fn, "score_ids"):
        ids, mask = core.sequences(rows)
        values = core.reward_fn.score_ids(torch.from_numpy(ids), torch.from_numpy(mask))
    else:
        values = core.reward_fn([core.prompts[i] for i in rows],
                                [core.tokenizer.decode(core.response_ids(i)) for i in rows])
    return as_scores(values, len(rows))


def _check_multi_turn(env) -> EpisodeBatch:
    core = _core_of(env)
    if not core.multi_turn:
        raise ValueError(f"per-turn rewards need a multi-turn task (e.g. task='dialogue'), "
                         f"not {core.task.name!r}")
    return core


class TurnRewards(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Per-turn rewards for a multi-turn task: when the user replies, the reward gets the
    change of the env's reward function (learned, gold or a callable) over the dialogue so
    far, and the last step gets the final score minus the last turn's. A potential-based
    shaping: an episode's rewards still sum to its final score, but each turn's progress is
    credited when it happens. `info["turn_score"]` holds the score after each reply."""

    def __init__(self, env: gym.Env):
        gym.utils.RecordConstructorArgs.__init__(self)
        super().__init__(env)
        self.core = _check_multi_turn(env)
        self._last = 0.0  # the score of the dialogue after the last reply

    def reset(self, **kwargs):
        self._last = 0.0
        return self.env.reset(**kwargs)

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        if terminated:
            reward, self._last = float(reward) - self._last, 0.0
        elif "user_reply" in info:
            score = float(_dialogue_scores(self.core, np.array([0]))[0])
            reward, self._last = float(reward) + score - self._last, score
            info = {**info, "turn_score": score}
        return obs, reward, terminated, truncated, info


class VectorTurnRewards(VectorWrapper):
    """`TurnRewards` for the vector env: the dialogues the user replied to on a step are
    scored in one call."""

    def __init__(self, env: VectorEnv):
        super().__init__(env)
        self.core = _check_multi_turn(env)
        self._last = np.zeros(self.core.n)  # (N,)

    def reset(self, **kwargs):
        self._last[:] = 0.0
        return self.env.reset(**kwargs)

    def step(self, actions):
        obs, rewards, terminated, truncated, infos = self.env.step(actions)
        rewards = rewards - np.where(terminated, self._last, 0.0)  # (N,)
        self._last[terminated] = 0.0
        rows = np.flatnonzero(infos.get("_user_reply", np.zeros(self.core.n, bool)) & ~terminated)
        if len(rows):
            scores = _dialogue_scores(self.core, rows)  # (R,)
            rewards[rows] += scores - self._last[rows]
            self._last[rows] = scores
            turn_score = np.zeros(self.core.n)
            turn_score[rows] = scores
            has = np.zeros(self.core.n, dtype=bool)
            has[rows] = True
            infos = {**infos, "turn_score": turn_score, "_turn_score": has}
        return obs, rewards, terminated, truncated, infos
