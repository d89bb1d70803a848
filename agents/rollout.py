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
from textenv.lm import pad_left
from textenv.model import GPT, Decoder


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

    @property
    def num_tokens(self) -> int:
        return int(self.response_mask.sum())


def make_envs(num_envs: int, *, task: str = "reviews", reward="learned",
              max_new_tokens: int | None = None, assets_dir=None):
    """The natively batched TextGen-v0 vector env, unwrapped: LM agents shape the KL
    themselves, from their own log-probs."""
    return gym.make_vec("TextGen-v0", num_envs=num_envs, vectorization_mode="vector_entry_point",
                        task=task, reward=reward, max_new_tokens=max_new_tokens,
                        assets_dir=assets_dir)


def prompt_ids_from_obs(obs: np.ndarray, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The env's right-padded observations (N, L) -> left-padded prompts (N, Tp) and mask."""
    rows = [row[row != pad_id].tolist() for row in obs]
    return pad_left(rows, pad_id)


@torch.no_grad()
def collect_rollout(envs, policy: GPT, prompts: list[str], *, max_new_tokens: int,
                    temperature: float, generator: torch.Generator, pad_id: int) -> Rollout:
    """One response per env for `prompts` (len == envs.num_envs)."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    t0 = time.perf_counter()
    policy.eval()
    obs, _ = envs.reset(options={"prompts": list(prompts)})
    prompt_ids, prompt_mask = prompt_ids_from_obs(obs, pad_id)  # (N, Tp)
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
        steps.append((tokens, logp, torch.from_numpy(~done)))
        _, reward, terminated, _, infos = envs.step(tokens.numpy())
        finished = terminated & ~done  # (N,) rows whose episode ended now
        if finished.any():
            idx = np.flatnonzero(finished)
            scores[idx] = np.asarray(reward, dtype=np.float32)[idx]
            gold[idx] = np.asarray(infos["gold_score"], dtype=np.float32)[idx]
            eos[idx] = np.asarray(infos["eos"], dtype=bool)[idx]
            for i in idx:
                responses[i] = infos["response"][i]
        done |= finished
        if not dec.advance(tokens, torch.from_numpy(finished)):  # computes live rows only
            break
    # (N, T) each, T = the steps taken (the longest response)
    tokens_out, logp_out, mask_out = (torch.stack(column, 1) for column in zip(*steps))
    return Rollout(prompt_ids, prompt_mask, tokens_out, mask_out, logp_out,
                   torch.from_numpy(scores), torch.from_numpy(gold), torch.from_numpy(eos),
                   list(prompts), responses, time.perf_counter() - t0)


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


def forward_responses(model, rollout: Rollout, rows: torch.Tensor | None = None):
    """One forward of `model` over (prompt + response) rows -> the model's outputs at the
    positions predicting each response token. A GPT gives logits (b, Tr, V); an
    actor-critic gives (logits (b, Tr, V), values (b, Tr)). Keeps gradients."""
    rows = torch.arange(rollout.response_ids.shape[0]) if rows is None else rows
    ids, mask = sequence_batch(rollout.prompt_ids[rows], rollout.prompt_mask[rows],
                               rollout.response_ids[rows], rollout.response_mask[rows])
    tp, tr = rollout.prompt_ids.shape[1], rollout.response_ids.shape[1]
    out = model(ids, mask)
    if isinstance(out, tuple):
        return tuple(response_logits(o, tp, tr) for o in out)
    return response_logits(out, tp, tr)


@torch.no_grad()
def response_logprobs(model: GPT, rollout: Rollout, temperature: float,
                      batch_size: int = 256) -> torch.Tensor:
    """Log-probs of the rollout's response tokens under `model` (e.g. the frozen
    reference), one forward per chunk of rows -> (N, Tr), 0 where masked."""
    n = rollout.response_ids.shape[0]
    out = [logprobs_of(forward_responses(model, rollout, rows), rollout.response_ids[rows],
                       temperature)
           for rows in torch.arange(n).split(batch_size)]
    return torch.cat(out) * rollout.response_mask


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
