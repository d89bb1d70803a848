"""Rollouts: the policy writes one response per env of a TextGen-v0 vector env.

The policy decodes on its own pre-allocated KV cache (one 1-token forward per step, see
`textenv.model.Decoder`); the env appends the tokens, ends episodes on EOS or the length
limit, and scores every finished response with the reward model in one batch. A rollout is
one episode per env: a row whose episode ended leaves the policy's batch, and the env gets
pad for it until all rows are done (the vector env's next-step autoreset of those rows is
ignored; the next rollout resets all).

After the rollout, `sequence_batch` lays each (prompt, response) out as one row, prompt
left-padded and response right-padded, so one forward gives every response token's
log-prob and value (never one forward per position).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F

import textenv  # noqa: F401  (registers TextGen-v0)
from textenv.decoding import IncrementalDecoder
from textenv.lm import pad_left
from textenv.model import GPT, Decoder, sample_from_logits


@dataclass
class Rollout:
    prompt_ids: torch.Tensor  # (N, Tp) left-padded, starting with bos
    prompt_mask: torch.Tensor  # (N, Tp) bool
    response_ids: torch.Tensor  # (N, Tr) right-padded with pad
    response_mask: torch.Tensor  # (N, Tr) bool, True on real tokens (incl. eos)
    sample_logprobs: torch.Tensor  # (N, Tr) log-probs under the sampling temperature
    scores: torch.Tensor  # (N,) terminal reward from the env (learned reward model score)
    gold: torch.Tensor  # (N,) gold score of each response
    eos: torch.Tensor  # (N,) bool, the response ended with EOS
    prompts: list[str]
    responses: list[str]
    seconds: float  # wall-clock of the rollout (decoding + env + scoring)
    agent_mask: torch.Tensor | None = None
    """(N, Tr) bool, True on the agent's tokens, in a multi-turn dialogue (whose response is
    the whole transcript: the user's replies are context, not actions); None when every
    response token is the agent's."""

    @property
    def action_mask(self) -> torch.Tensor:
        """(N, Tr) bool: the tokens the policy chose (its actions), the ones every loss,
        KL and value covers: the response tokens, or in a dialogue the agent's tokens."""
        return self.response_mask if self.agent_mask is None else self.agent_mask

    @property
    def num_tokens(self) -> int:
        return int(self.action_mask.sum())


def make_envs(num_envs: int, *, task: str = "reviews", reward="learned",
              max_new_tokens: int | None = None, assets_dir=None, device: str = "cpu"):
    """The natively batched TextGen-v0 vector env, unwrapped: LM agents shape the KL
    themselves, from their own log-probs. `device`: where its reward model runs."""
    return gym.make_vec("TextGen-v0", num_envs=num_envs, vectorization_mode="vector_entry_point",
                        task=task, reward=reward, max_new_tokens=max_new_tokens,
                        assets_dir=assets_dir, device=device)


def prompt_ids_from_obs(obs: np.ndarray, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The env's right-padded observations (N, L) -> left-padded prompts (N, Tp) and mask."""
    rows = [row[row != pad_id].tolist() for row in obs]
    return pad_left(rows, pad_id)


@torch.no_grad()
def collect_rollout(envs, policy: GPT, prompts: list[str], *, max_new_tokens: int,
                    temperature: float, generator: torch.Generator, pad_id: int) -> Rollout:
    """One response per env for `prompts` (len == envs.num_envs). The rollout's tensors
    live on the policy's device; the env gets numpy actions."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if envs.unwrapped.core.multi_turn:
        return collect_dialogue_rollout(envs, policy, prompts, temperature=temperature,
                                        generator=generator, pad_id=pad_id)
    t0 = time.perf_counter()
    policy.eval()
    obs, _ = envs.reset(options={"prompts": list(prompts)})
    dev = next(policy.parameters()).device
    prompt_ids, prompt_mask = (t.to(dev) for t in prompt_ids_from_obs(obs, pad_id))  # (N, Tp)
    n = prompt_ids.shape[0]
    dec = Decoder(policy, prompt_ids, prompt_mask, max_new_tokens, pad_id=pad_id,
                  temperature=temperature, generator=generator)  # prefills the prompts

    # Per-step bookkeeping in numpy: the env's arrays are numpy, and small numpy ops cost
    # a fraction of small torch ops.
    done = np.zeros(n, dtype=bool)
    scores, gold = np.zeros(n, dtype=np.float32), np.zeros(n, dtype=np.float32)
    eos = np.zeros(n, dtype=bool)
    responses = [""] * n
    steps = []  # (tokens (N,), log-probs (N,), alive (N,)) per step
    for _ in range(max_new_tokens):
        tokens, logp = dec.sample()  # (N,) pad and 0 on rows whose episode ended
        steps.append((tokens, logp, torch.from_numpy(~done).to(dev)))
        _, reward, terminated, _, infos = envs.step(tokens.cpu().numpy())
        finished = terminated & ~done  # (N,) rows whose episode ended now
        if finished.any():
            idx = np.flatnonzero(finished)
            scores[idx] = np.asarray(reward, dtype=np.float32)[idx]
            gold[idx] = np.asarray(infos["gold_score"], dtype=np.float32)[idx]
            eos[idx] = np.asarray(infos["eos"], dtype=bool)[idx]
            for i in idx:
                responses[i] = infos["response"][i]
        done |= finished
        if not dec.advance(tokens, torch.from_numpy(finished).to(dev)):  # live rows only
            break
    # (N, T) each, T = the steps taken (the longest response)
    tokens_out, logp_out, mask_out = (torch.stack(column, 1) for column in zip(*steps))
    return Rollout(prompt_ids, prompt_mask, tokens_out, mask_out, logp_out,
                   torch.from_numpy(scores).to(dev), torch.from_numpy(gold).to(dev),
                   torch.from_numpy(eos).to(dev), list(prompts), responses,
                   time.perf_counter() - t0)


@torch.no_grad()
def collect_dialogue_rollout(envs, policy: GPT, prompts: list[str], *, temperature: float,
                             generator: torch.Generator, pad_id: int) -> Rollout:
    """One whole dialogue per env of a multi-turn task: the policy writes the agent's
    turns, the env appends the user's replies. The policy decodes on an `IncrementalDecoder`
    that reads the env's tokens, so a reply is prefilled into its KV cache, not recomputed.
    The Rollout's response is the transcript; `agent_mask` marks the agent's tokens. Rows
    whose dialogue ended feed pad until every row is done (their autoreset is ignored)."""
    t0 = time.perf_counter()
    policy.eval()
    obs, _ = envs.reset(options={"prompts": list(prompts)})
    core = envs.unwrapped.core
    dev = next(policy.parameters()).device
    prompt_ids, prompt_mask = (t.to(dev) for t in prompt_ids_from_obs(obs, pad_id))  # (N, Tp)
    n = len(prompts)
    prompt_len = core.prompt_len.copy()  # (N,)
    decoder = IncrementalDecoder(policy, n, 2 * core.seq_len)
    done = np.zeros(n, dtype=bool)
    scores, gold = np.zeros(n, dtype=np.float32), np.zeros(n, dtype=np.float32)
    eos = np.zeros(n, dtype=bool)
    responses = [""] * n
    final_tokens = np.full((n, core.seq_len), pad_id, dtype=np.int64)  # (N, L)
    final_agent = np.zeros((n, core.seq_len), dtype=bool)  # (N, L)
    final_len = np.zeros(n, dtype=np.int64)  # (N,) transcript tokens
    logp_at = np.zeros((n, core.seq_len), dtype=np.float32)  # (N, L) log-prob of each action
    total = prompt_len.copy()  # (N,) tokens per row, as the decoder last saw them
    logits = decoder.advance(core.tokens, total, np.ones(n, dtype=bool),
                             np.zeros(n, dtype=np.int64), ~done, pad_id)  # (N, V)
    while not done.all():
        tokens, logp = sample_from_logits(logits, temperature, generator=generator)  # (N,)
        tokens, logp = tokens.numpy(), logp.numpy()
        tokens[done] = pad_id
        rows = np.flatnonzero(~done)
        logp_at[rows, total[rows]] = logp[rows]  # the action lands at column total[i]
        _, reward, terminated, _, infos = envs.step(tokens)
        finished = terminated & ~done  # (N,) rows whose dialogue ended now
        for i in np.flatnonzero(finished):
            scores[i], gold[i] = reward[i], infos["gold_score"][i]
            eos[i], responses[i] = infos["eos"][i], infos["response"][i]
            final_len[i] = core.resp_len[i]
            final_tokens[i], final_agent[i] = core.tokens[i], core.agent_mask[i]
        done |= finished
        new_total = core.prompt_len + core.resp_len  # (N,)
        grew = np.where(done, 0, new_total - total)  # (N,) the action, plus any reply
        total = np.where(done, total, new_total)
        if not done.all():
            logits = decoder.advance(core.tokens, total, np.zeros(n, dtype=bool), grew, ~done,
                                     pad_id)
    # The transcripts, right-padded: (N, Tr), Tr = the longest.
    width = int(final_len.max())
    cols = prompt_len[:, None] + np.arange(width)[None, :]  # (N, Tr) columns in the env rows
    cols = np.minimum(cols, core.seq_len - 1)
    real = np.arange(width)[None, :] < final_len[:, None]  # (N, Tr)
    take = lambda a, fill: np.where(real, np.take_along_axis(a, cols, 1), fill)  # noqa: E731
    response_ids = torch.from_numpy(take(final_tokens, pad_id)).to(dev)
    agent_mask = torch.from_numpy(take(final_agent, False)).to(dev)
    logps = torch.from_numpy(take(logp_at, 0.0)).to(dev) * agent_mask
    return Rollout(prompt_ids, prompt_mask, response_ids, torch.from_numpy(real).to(dev), logps,
                   torch.from_numpy(scores).to(dev), torch.from_numpy(gold).to(dev),
                   torch.from_numpy(eos).to(dev), list(prompts), responses,
                   time.perf_counter() - t0, agent_mask=agent_mask)


def sequence_batch(prompt_ids, prompt_mask, response_ids, response_mask):
    """Concatenate left-padded prompts and right-padded responses: (N, Tp + Tr) ids and mask."""
    return (torch.cat([prompt_ids, response_ids], 1),
            torch.cat([prompt_mask, response_mask], 1))


def response_logits(logits: torch.Tensor, prompt_width: int, response_width: int) -> torch.Tensor:
    """Slice full-sequence outputs (N, Tp+Tr, ...) to the positions that predict the
    response tokens: position Tp-1+j predicts response token j. -> (N, Tr, ...)."""
    return logits[:, prompt_width - 1: prompt_width - 1 + response_width]


def logprobs_of(logits: torch.Tensor, tokens: torch.Tensor, temperature: float) -> torch.Tensor:
    """log softmax(logits / temperature) at `tokens`: (N, T, V), (N, T) -> (N, T)."""
    logp = F.log_softmax(logits.float() / temperature, dim=-1)
    return logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def trimmed_columns(prompt_mask: torch.Tensor, response_mask: torch.Tensor) -> tuple[int, int]:
    """The columns a batch of rows needs: (first prompt column, response width). Leading
    prompt columns and trailing response columns that are padding in every row are left
    out; at least the last prompt column (it predicts the first response token) and one
    response column stay. prompt_mask (b, Tp), response_mask (b, Tr)."""
    real_p = prompt_mask.any(0).nonzero()  # (k, 1) prompt columns with a real token
    real_r = response_mask.any(0).nonzero()  # (k, 1) response columns with a real token
    tp = prompt_mask.shape[1]
    first = min(int(real_p[0, 0]), tp - 1) if len(real_p) else tp - 1
    width = int(real_r[-1, 0]) + 1 if len(real_r) else 1
    return first, width


def forward_responses(model, rollout: Rollout, rows: torch.Tensor | None = None, *,
                      trim: bool = True, bf16: bool = False):
    """One forward of `model` over (prompt + response) rows -> the model's outputs at the
    positions predicting each response token. A GPT gives logits (b, Tr, V); an
    actor-critic gives (logits (b, Tr, V), values (b, Tr)). Keeps gradients.

    trim: run only the columns these rows need (`trimmed_columns`): the same outputs on
    real positions, since positions count real tokens and pads are never attended to; the
    trimmed response positions come back as zeros (every loss masks them).
    bf16: run the forward under bfloat16 autocast; the outputs come back as float32, so
    log-probs and losses are computed in float32."""
    rows = torch.arange(rollout.response_ids.shape[0]) if rows is None else rows
    prompt_mask, response_mask = rollout.prompt_mask[rows], rollout.response_mask[rows]
    tp, tr = prompt_mask.shape[1], response_mask.shape[1]
    first, width = trimmed_columns(prompt_mask, response_mask) if trim else (0, tr)
    ids, mask = sequence_batch(rollout.prompt_ids[rows, first:], prompt_mask[:, first:],
                               rollout.response_ids[rows, :width], response_mask[:, :width])
    with torch.autocast(ids.device.type, dtype=torch.bfloat16, enabled=bf16):
        out = model(ids, mask)  # (b, Tp - first + width, ...)
    outs = []
    for o in (out if isinstance(out, tuple) else (out,)):
        o = response_logits(o, tp - first, width).float()  # (b, width, ...)
        if width < tr:  # zeros on the trimmed positions: (b, Tr, ...)
            o = F.pad(o, [0, 0] * (o.dim() - 2) + [0, tr - width])
        outs.append(o)
    return tuple(outs) if isinstance(out, tuple) else outs[0]


@torch.no_grad()
def response_logprobs(model: GPT, rollout: Rollout, temperature: float,
                      batch_size: int = 256) -> torch.Tensor:
    """Log-probs of the rollout's response tokens under `model` (e.g. the frozen
    reference), one forward per chunk of rows -> (N, Tr), 0 where masked."""
    n = rollout.response_ids.shape[0]
    out = [logprobs_of(forward_responses(model, rollout, rows), rollout.response_ids[rows],
                       temperature)
           for rows in torch.arange(n).split(batch_size)]
    return torch.cat(out) * rollout.action_mask


def rollout_metrics(rollout: Rollout, seq_kl: torch.Tensor) -> dict:
    """Metrics every algorithm logs about its rollout (CleanRL/TRL-style names)."""
    return {
        "env/reward_mean": rollout.scores.mean().item(),
        "env/gold_mean": rollout.gold.mean().item(),
        "env/eos_rate": rollout.eos.float().mean().item(),
        "env/response_length": rollout.response_mask.sum(1).float().mean().item(),
        "objective/kl": seq_kl.mean().item(),
        "charts/env_steps_iter": rollout.num_tokens,
        "time/rollout": rollout.seconds,
    }
