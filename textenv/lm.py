"""Language-model plumbing shared by the pipeline, the env and the agents.

- batching token lists with left or right padding,
- the next-token loss (on all tokens for pretraining, on response tokens only for SFT),
- a small training loop with a progress bar,
- text in, text out sampling (`generate_text`) and held-out perplexity.

Every model input starts with `<bos>`: a prompt is encoded as `[bos] + encode(prompt)`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from textenv.model import GPT
from textenv.runlog import Progress
from textenv.tokenizer import Tokenizer


def encode_prompt(tokenizer: Tokenizer, prompt: str) -> list[int]:
    return [tokenizer.bos_id] + tokenizer.encode(prompt)


def pad_left(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token lists: returns ids (B, T) int64 and mask (B, T) bool (True = real)."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.bool)
    for i, s in enumerate(seqs):
        if len(s):
            ids[i, width - len(s):] = torch.as_tensor(s, dtype=torch.long)
            mask[i, width - len(s):] = True
    return ids, mask


def pad_right(seqs: Sequence[Sequence[int]], pad_id: int, width: int | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token lists to `width` (default: the longest): ids (B, T), mask (B, T)."""
    width = width or max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.bool)
    for i, s in enumerate(seqs):
        s = list(s)[:width]
        ids[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
        mask[i, : len(s)] = True
    return ids, mask


def lm_loss(model: GPT, input_ids: torch.Tensor, attention_mask: torch.Tensor,
            loss_mask: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over positions where `loss_mask` is True.

    input_ids, attention_mask, loss_mask: (B, T). loss_mask[b, t] says whether token t is
    predicted (from tokens < t), so loss_mask[:, 0] is ignored.
    """
    logits = model(input_ids, attention_mask)  # (B, T, V)
    targets = input_ids[:, 1:]  # (B, T-1)
    nll = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), targets.reshape(-1),
                          reduction="none").view_as(targets)  # (B, T-1)
    m = loss_mask[:, 1:].float()
    return (nll * m).sum() / m.sum().clamp(min=1.0)


@dataclass
class LMBatch:
    input_ids: torch.Tensor  # (B, T)
    attention_mask: torch.Tensor  # (B, T)
    loss_mask: torch.Tensor  # (B, T)


def make_pretrain_batch(docs: Sequence[list[int]], pad_id: int) -> LMBatch:
    """Documents already encoded (starting with bos): loss on every real token."""
    ids, mask = pad_right(docs, pad_id)
    return LMBatch(ids, mask, mask.clone())


def make_sft_batch(prompts: Sequence[list[int]], responses: Sequence[list[int]], pad_id: int
                   ) -> LMBatch:
    """Prompt + response, right-padded; loss on response tokens only (SFT)."""
    ids, mask = pad_right([p + r for p, r in zip(prompts, responses)], pad_id)
    loss_mask = mask.clone()
    for i, p in enumerate(prompts):
        loss_mask[i, : len(p)] = False
    return LMBatch(ids, mask, loss_mask)


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, floor: float = 0.1) -> float:
    """The learning-rate multiplier every trainer here uses: linear warm-up over
    `warmup_steps`, then a cosine decay from 1 to `floor` at `total_steps`."""
    warm = min(1.0, (step + 1) / max(1, warmup_steps))
    cos = 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / max(1, total_steps)))
    return warm * (floor + (1 - floor) * cos)


def train_lm(model: GPT, sample_batch: Callable[[np.random.Generator], LMBatch], *, steps: int,
             lr: float, seed: int, weight_decay: float = 0.1, warmup: int = 50,
             desc: str = "train", log: Callable[[int, float], None] | None = None) -> list[float]:
    """AdamW with linear warm-up then cosine decay; returns the per-step losses."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay,
                            betas=(0.9, 0.95))
    losses = []
    bar = Progress(steps, desc=desc, unit="step")
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr * warmup_cosine(step, steps, warmup)
        batch = sample_batch(rng)
        loss = lm_loss(model, batch.input_ids, batch.attention_mask, batch.loss_mask)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{desc}: loss is {loss.item()} at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        bar.update(1, loss=loss.item())
        if log is not None:
            log(step, loss.item())
    bar.close()
    model.eval()
    return losses


@torch.no_grad()
def perplexity(model: GPT, docs: Sequence[list[int]], pad_id: int, batch_size: int = 256) -> float:
    """exp(mean next-token NLL) over all tokens of `docs` (encoded, starting with bos)."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(docs), batch_size):
        b = make_pretrain_batch(docs[i: i + batch_size], pad_id)
        n = b.loss_mask[:, 1:].sum().item()
        total += lm_loss(model, b.input_ids, b.attention_mask, b.loss_mask).item() * n
        count += n
    return math.exp(total / count)


@torch.no_grad()
def generate_text(model: GPT, tokenizer: Tokenizer, prompts: Sequence[str], *,
                  max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                  top_p: float | None = None, batch_size: int = 256,
                  generator: torch.Generator | None = None) -> list[str]:
    """Sample one response per prompt; each ends with `<eos>` if the model terminated it."""
    model.eval()
    out: list[str] = []
    for i in range(0, len(prompts), batch_size):
        ids, mask = pad_left([encode_prompt(tokenizer, p) for p in prompts[i: i + batch_size]],
                             tokenizer.pad_id)
        gen = model.generate(ids, mask, max_new_tokens, eos_id=tokenizer.eos_id,
                             pad_id=tokenizer.pad_id, temperature=temperature, top_k=top_k,
                             top_p=top_p, generator=generator)
        for row, row_mask in zip(gen["response_ids"], gen["response_mask"]):
            out.append(tokenizer.decode(row[row_mask].tolist()))
    return out
