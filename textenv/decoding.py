"""KV-cache decoding over the rows of a vector env: each step costs one 1-token forward.

    envs = gym.make_vec("TextGen-v0", num_envs=64, observation_mode="dict")
    policy = textenv.load_policy()                   # the shipped SFT policy, trainable
    decoder = PolicyDecoder(policy, num_envs=64)
    obs, _ = envs.reset(seed=0)
    for _ in range(200):
        logits = decoder.next_logits(obs)            # (64, V); never-emit tokens at -inf
        actions = torch.distributions.Categorical(logits=logits).sample()
        obs, reward, terminated, truncated, info = envs.step(actions.numpy())

An agent written against the Gym API would otherwise run the whole sequence through the
model at every step (quadratic in its length). `PolicyDecoder` keeps a KV cache per row and
reads from the observations what changed since its last call: a row one token longer feeds
that token (a dialogue's row that also got the user's reply feeds those tokens too); a row
holding a fresh prompt (after a reset or an autoreset) is prefilled on its own; anything
else re-prefills every row, which is always correct.

`IncrementalDecoder` is the machinery, fed with token arrays and the change of each row;
`PolicyDecoder` derives the changes from dict observations, and the reference wrappers
(`textenv.wrappers.ReferenceTracker`) from the env core.
"""

from __future__ import annotations

import numpy as np
import torch

from textenv.model import GPT, KVCache


class IncrementalDecoder:
    """Next-token logits (N, V) of `model` for N growing token rows, on one KV cache.
    The model and its cache live on the model's device; the logits come back on the CPU,
    beside the env's numpy arrays.

    All rows share the cache's positions. A row that starts again writes its tokens into
    the cache's last slots, with its old slots masked out; when the cache is full (or a
    new row would not fit) every row is re-prefilled from its current tokens, which also
    compacts the cache.
    """

    def __init__(self, model: GPT, num_rows: int, max_len: int):
        self.model = model
        self.n = num_rows
        param = next(model.parameters())
        self.device = param.device
        self.cache = KVCache(model.config, num_rows, max_len, dtype=param.dtype,
                             device=self.device)
        self.logits: torch.Tensor | None = None  # (N, V) after the last advance

    @torch.no_grad()
    def advance(self, tokens: np.ndarray, total: np.ndarray, restart: np.ndarray,
                grew: np.ndarray, live: np.ndarray, pad_id: int) -> torch.Tensor:
        """Bring the logits up to date with the rows' tokens.

        tokens (N, L) right-padded ids; total (N,) real tokens per row; restart (N,) rows
        that hold a new sequence; grew (N,) rows one token longer than last time (their
        last token is fed), or (N,) int: how many tokens each row gained (a dialogue's user
        reply: its last grew[i] tokens are prefilled, the rest of the row is not
        recomputed); live (N,) rows whose next token matters (others feed a masked pad).
        Any other change must be passed as restart for every row (a full prefill).
        -> logits (N, V) float32 for the next token of every row.
        """
        cache, dev = self.cache, self.device
        width = int(total[restart].max()) if restart.any() else 0
        new = np.where(live, grew, 0)  # (N,) tokens to feed per row
        k = max(1, int(new.max()))
        if (self.logits is None or restart.all() or cache.length + k > cache.max_len
                or cache.length + k < width):
            ids, mask = left_padded(tokens, total, np.arange(self.n), pad_id)  # (N, W)
            cache.reset()
            logits = self.model(torch.from_numpy(ids).to(dev), torch.from_numpy(mask).to(dev),
                                kv_cache=cache)[:, -1]  # (N, V) the last column is real
            self.logits = logits.float().cpu()
            return self.logits
        rows = np.arange(self.n)
        if k == 1:
            feed = new > 0  # (N,) a finished row's last token is never looked at
            last = np.where(feed, tokens[rows, np.maximum(total - 1, 0)], pad_id)  # (N,)
            logits = self.model(torch.from_numpy(last)[:, None].to(dev),
                                torch.from_numpy(feed)[:, None].to(dev),
                                kv_cache=cache)[:, -1]  # (N, V)
        else:  # some rows gained several tokens: feed each row's last new[i], left-padded
            src = total[:, None] - k + np.arange(k)[None, :]  # (N, K) columns to read
            mask = np.arange(k)[None, :] >= (k - new)[:, None]  # (N, K)
            ids = np.where(mask, np.take_along_axis(tokens, np.maximum(src, 0), 1), pad_id)
            logits = self.model(torch.from_numpy(ids).to(dev), torch.from_numpy(mask).to(dev),
                                kv_cache=cache)[:, -1]  # (N, V)
        if restart.any():
            r = np.flatnonzero(restart)
            rt = torch.from_numpy(r).to(dev)
            ids, mask = left_padded(tokens, total, r, pad_id)  # (R, P) the new rows' tokens
            fresh = KVCache(self.model.config, len(r), ids.shape[1], dtype=cache.k.dtype,
                            device=dev)
            logits[rt] = self.model(torch.from_numpy(ids).to(dev), torch.from_numpy(mask).to(dev),
                                    kv_cache=fresh)[:, -1]  # (R, V)
            # The new tokens take the cache's last P slots (their causal order is kept); the
            # old slots are masked out. Positions restart from the row's length.
            P, L = ids.shape[1], cache.length
            cache.k[:, rt, :, L - P:L] = fresh.k  # (n_layer, R, H, P, D)
            cache.v[:, rt, :, L - P:L] = fresh.v
            cache.key_mask[rt] = False
            cache.key_mask[rt, L - P:L] = fresh.key_mask
            cache.next_pos[rt] = fresh.next_pos
        self.logits = logits.float().cpu()
        return self.logits


def left_padded(tokens: np.ndarray, total: np.ndarray, rows: np.ndarray, pad_id: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """The first total[i] tokens of `rows`, LEFT-padded: ids (R, W) int64, mask (R, W) bool."""
    length = total[rows]  # (R,)
    width = int(length.max())
    # Without a Python loop: column j of row i reads tokens[i, j - offset_i].
    src = np.arange(width)[None, :] - (width - length)[:, None]  # (R, W)
    mask = src >= 0  # (R, W)
    ids = np.where(mask, np.take_along_axis(tokens[rows], np.maximum(src, 0), 1), pad_id)
    return ids, mask


class PolicyDecoder:
    """Next-token logits for the envs of a TextGen vector env, from its dict observations
    (`observation_mode="dict"`), with a KV cache. See the module docstring.

    banned_ids: token ids set to -inf (default: `<pad>`, `<bos>`, `<unk>` of the default
    tokenizer, ids 0, 1 and 3: a policy must never emit them).
    """

    def __init__(self, model: GPT, num_envs: int, max_len: int | None = None,
                 pad_id: int = 0, banned_ids: tuple[int, ...] = (0, 1, 3)):
        self.decoder = IncrementalDecoder(model, num_envs, max_len or model.config.block_size
                                          + model.config.block_size // 2)
        self.pad_id, self.banned = pad_id, list(banned_ids)
        self._ids: np.ndarray | None = None  # (N, L) the observation of the last call
        self._total: np.ndarray | None = None  # (N,)

    def reset(self) -> None:
        """Forget the cache: the next call prefills every row (call it after the model's
        weights change, or after `envs.reset()`)."""
        self._ids = self._total = None

    def next_logits(self, obs: dict) -> torch.Tensor:
        """(N, V) float32 logits of the next token of every env."""
        ids = np.asarray(obs["input_ids"])  # (N, L)
        total = np.asarray(obs["attention_mask"]).sum(1)  # (N,) prompt + response tokens
        prompt = np.asarray(obs["prompt_mask"]).sum(1)  # (N,)
        if self._ids is None:
            restart = np.ones(len(ids), dtype=bool)
            grew = np.zeros(len(ids), dtype=bool)
        else:
            same = (ids == self._ids).all(1) & (total == self._total)  # (N,)
            # A row that kept its tokens and gained some (one action, or in a dialogue an
            # action and the user's reply) feeds just the new ones.
            kept = ((ids == self._ids) | (np.arange(ids.shape[1]) >= self._total[:, None])).all(1)
            grew = np.where(~same & kept & (total > self._total) & (total > prompt),
                            total - self._total, 0)  # (N,) tokens gained
            restart = ~same & (grew == 0)
        self._ids, self._total = ids.copy(), total
        logits = self.decoder.advance(ids, total, restart, grew,
                                      live=np.ones(len(ids), dtype=bool), pad_id=self.pad_id)
        logits = logits.clone()
        logits[:, self.banned] = float("-inf")
        return logits
