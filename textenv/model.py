"""A small nanoGPT-style decoder-only transformer with a pre-allocated KV cache.

Shapes: B = batch, T = new tokens in this call, S = all key positions (cache + new),
C = n_embd, H = n_head, D = head_dim = C // H, V = vocab_size.

Padding convention: `attention_mask` is 1/True for real tokens, 0/False for pads. Positions
are counted over real tokens only, so a left-padded row gets the same positions (and the same
logits) as the row on its own. Pad tokens are never attended to as keys.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from textenv import fused_decode
from textenv.storage import (
    check_name,
    check_tensors,
    load_tensors,
    read_json,
    save_tensors,
    write_json,
)

DEVICES = ("auto", "cpu", "cuda", "cuda:N")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """"auto" -> cuda if available, else cpu; "cpu", "cuda" or "cuda:N" as they are.
    A CUDA device on a machine without one raises (never a silent fall back to CPU)."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not isinstance(device, str) or not (device in ("cpu", "cuda")
                                           or re.fullmatch(r"cuda:\d+", device)):
        raise ValueError(f"unknown device {device!r}; valid: {', '.join(DEVICES)}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but torch sees no CUDA device "
                         f"(torch {torch.__version__}); use device='cpu' or 'auto'")
    return torch.device(device)


@dataclass
class GPTConfig:
    vocab_size: int = 256
    """Number of token ids (the action space size)."""
    block_size: int = 64
    """Maximum number of positions (prompt + response)."""
    n_layer: int = 3
    """Number of transformer blocks."""
    n_head: int = 4
    """Attention heads per block (must divide n_embd)."""
    n_embd: int = 128
    """Width of the residual stream."""
    dropout: float = 0.0
    """Dropout probability (only active in train mode)."""
    bias: bool = True
    """Use biases in Linear and LayerNorm layers."""
    tie_embeddings: bool = True
    """lm_head shares the token embedding weights."""

    # Checked before any tensor is allocated: a typo in a config file must not try to
    # allocate a billion layers or fail deep inside torch.
    MAX_PARAMS = 2_000_000_000
    """Parameter-count ceiling (a GPT-2 XL is 1.6e9)."""
    _INT_RANGES = {"vocab_size": (4, 10_000_000), "block_size": (2, 1_000_000),
                   "n_layer": (1, 1_000), "n_head": (1, 1_024), "n_embd": (1, 100_000)}

    def __post_init__(self) -> None:
        for name, (low, high) in self._INT_RANGES.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"GPTConfig.{name} must be an integer, got {value!r}")
            if not low <= value <= high:
                raise ValueError(f"GPTConfig.{name} must be in [{low}, {high}], got {value}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) \
                or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPTConfig.dropout must be a number in [0, 1), got {self.dropout!r}")
        for name in ("bias", "tie_embeddings"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"GPTConfig.{name} must be true or false, "
                                 f"got {getattr(self, name)!r}")
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"GPTConfig.n_embd ({self.n_embd}) must be divisible by n_head "
                             f"({self.n_head})")
        if self.num_params() > self.MAX_PARAMS:
            raise ValueError(f"GPTConfig describes {self.num_params():.3g} parameters, more than "
                             f"the ceiling {self.MAX_PARAMS:.3g}")

    def num_params(self) -> int:
        """Parameters of a GPT with this config (tied embeddings counted once)."""
        C, V = self.n_embd, self.vocab_size
        biases = 2 if self.bias else 1  # a LayerNorm has a weight, and a bias if `bias`
        per_block = 12 * C * C + (9 * C if self.bias else 0) + 2 * biases * C  # attn, MLP, 2 LN
        head = 0 if self.tie_embeddings else V * C
        return V * C + self.block_size * C + self.n_layer * per_block + biases * C + head

    @classmethod
    def from_dict(cls, raw: dict, where: str | Path = "config") -> GPTConfig:
        """A validated config from a JSON dict; errors name `where` and the field."""
        unknown = set(raw) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"{where}: unknown config fields {sorted(unknown)}; valid: "
                             f"{', '.join(f.name for f in fields(cls))}")
        try:
            return cls(**raw)
        except (ValueError, TypeError) as e:
            raise ValueError(f"{where}: {e}") from e


class KVCache:
    """Pre-allocated key/value cache: tensors k, v of shape (n_layer, B, n_head, max_len, head_dim)
    plus key_mask (B, max_len) bool (True = real token) and `length` (int, positions filled).
    Decoding writes into slices; never torch.cat per step."""

    def __init__(self, config: GPTConfig, batch_size: int, max_len: int | None = None,
                 dtype=torch.float32, device="cpu"):
        self.max_len = config.block_size if max_len is None else max_len
        head_dim = config.n_embd // config.n_head
        shape = (config.n_layer, batch_size, config.n_head, self.max_len, head_dim)
        # Not zeroed: every slot below `length` is written before it is read.
        self.k = torch.empty(shape, dtype=dtype, device=device)
        self.v = torch.empty(shape, dtype=dtype, device=device)
        self.key_mask = torch.zeros(batch_size, self.max_len, dtype=torch.bool, device=device)
        # Next position id per row = number of real tokens seen so far (pads don't count).
        self.next_pos = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.length = 0

    @property
    def batch_size(self) -> int:
        return self.k.shape[1]

    def reset(self) -> None:
        self.length = 0  # old k/v values are simply overwritten later
        self.key_mask.zero_()
        self.next_pos.zero_()

    def select(self, index: torch.Tensor) -> None:
        """Keep the rows `index` (B',), in that order (copies the whole cache)."""
        self.k, self.v = self.k[:, index], self.v[:, index]
        self.key_mask, self.next_pos = self.key_mask[index], self.next_pos[index]

    def move_rows(self, dst: torch.Tensor, src: torch.Tensor, size: int) -> None:
        """Copy rows `src` into rows `dst` (both (R,)), then keep the first `size` rows.

        The cheap way to drop finished rows: move the live rows beyond `size` into the
        finished rows' slots below it. Only the moved rows' filled slots are copied, and the
        cache shrinks to a view of its own first rows (nothing is reallocated)."""
        L = self.length
        if len(dst):
            self.k[:, dst, :, :L] = self.k[:, src, :, :L]  # (n_layer, R, H, L, D)
            self.v[:, dst, :, :L] = self.v[:, src, :, :L]
            self.key_mask[dst] = self.key_mask[src]
            self.next_pos[dst] = self.next_pos[src]
        self.k, self.v = self.k[:, :size], self.v[:, :size]
        self.key_mask, self.next_pos = self.key_mask[:size], self.next_pos[:size]


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig, layer: int):
        super().__init__()
        self.layer, self.n_head, self.dropout = layer, config.n_head, config.dropout
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_drop = nn.Dropout(config.dropout)

    def forward(self, x, attn_mask, kv_cache: KVCache | None = None, readout=None):
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)  # each (B, T, C)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, H, T, D)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, H, T, D)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, H, T, D)
        if readout is not None:  # one query per row (B,); keys and values stay all positions
            rows = torch.arange(B, device=x.device)
            q = q[rows, :, readout].unsqueeze(2)  # (B, H, 1, D)
            attn_mask = attn_mask[rows, :, readout].unsqueeze(2)  # (B, 1, 1, S)
            T = 1
        if kv_cache is not None:
            # Write this chunk into its slot, then attend over everything filled so far.
            L = kv_cache.length
            kv_cache.k[self.layer, :, :, L:L + T] = k
            kv_cache.v[self.layer, :, :, L:L + T] = v
            k = kv_cache.k[self.layer, :, :, :L + T]  # (B, H, S, D)
            v = kv_cache.v[self.layer, :, :, :L + T]  # (B, H, S, D)
        y = F.scaled_dot_product_attention(  # (B, H, T, D)
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.resid_drop(self.proj(y))  # (B, T, C)

    def decode(self, x, kv_cache: KVCache, attn_bias, rows=None):
        """One new token per row: x (B, C) -> (B, C); its key and value go to slot
        kv_cache.length. attn_bias (B * H, 1, S) is added to the scores (0 or -inf).
        Two small batched matmuls: for a single query they cost less than SDPA's setup.
        rows (R,): x holds only these cache rows, (R, C) -> (R, C); the other rows' slot
        gets zeros (the caller masks it) and their attention output is dropped."""
        C = x.shape[1]
        B, H, L = kv_cache.batch_size, self.n_head, kv_cache.length
        D = C // H
        qkv = self.qkv(x)  # (B, 3C) or (R, 3C)
        if rows is not None:
            qkv = qkv.new_zeros(B, 3 * C).index_copy_(0, rows, qkv)  # (B, 3C)
        kv_cache.k[self.layer, :, :, L] = qkv[:, C:2 * C].view(B, H, D)
        kv_cache.v[self.layer, :, :, L] = qkv[:, 2 * C:].view(B, H, D)
        q = qkv[:, :C].reshape(B * H, 1, D)  # (BH, 1, D)
        k = kv_cache.k[self.layer, :, :, :L + 1].reshape(B * H, L + 1, D)  # (BH, S, D) a view
        v = kv_cache.v[self.layer, :, :, :L + 1].reshape(B * H, L + 1, D)  # (BH, S, D) a view
        att = torch.baddbmm(attn_bias, q, k.transpose(1, 2), alpha=D ** -0.5)  # (BH, 1, S)
        y = torch.bmm(att.softmax(-1), v).view(B, C)  # (B, C)
        if rows is not None:
            y = y.index_select(0, rows)  # (R, C)
        return self.proj(y)  # (B, C) or (R, C)


class Block(nn.Module):
    """Pre-LayerNorm block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, config: GPTConfig, layer: int):
        super().__init__()
        self.ln1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config, layer)
        self.ln2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = nn.Sequential(
            nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias),
            nn.GELU(),
            nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias),
            nn.Dropout(config.dropout),
        )

    def forward(self, x, attn_mask, kv_cache=None, readout=None):
        """readout (B,) positions: compute only those (one per row) -> (B, 1, C)."""
        a = self.attn(self.ln1(x), attn_mask, kv_cache, readout)  # (B, T, C) or (B, 1, C)
        if readout is not None:
            x = x[torch.arange(x.shape[0], device=x.device), readout].unsqueeze(1)  # (B, 1, C)
        x = x + a  # (B, T, C)
        return x + self.mlp(self.ln2(x))  # (B, T, C)

    def decode(self, x, kv_cache: KVCache, attn_bias, rows=None):
        """One new token per row: x (B, C) -> (B, C), or (R, C) for `rows` only."""
        x = x + self.attn.decode(self.ln1(x), kv_cache, attn_bias, rows)  # (B, C)
        return x + self.mlp(self.ln2(x))  # (B, C)


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.n_embd)
        self.pos_emb = nn.Embedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight  # one tensor, two uses
        self.apply(self._init_weights)
        # nanoGPT: scale residual projections so the residual stream's variance stays O(1).
        for name, p in self.named_parameters():
            if name.endswith(("attn.proj.weight", "mlp.2.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())  # parameters() skips the tied duplicate

    def trunk(self, input_ids, attention_mask=None, position_ids=None, kv_cache=None,
              readout=None):
        """Hidden states (B, T, C) after the final LayerNorm.

        readout (B,) int64: when only one position per row is needed (a reward model's
        last token), the last block computes just that position (keys and values still
        come from every position) and trunk returns (B, C): the same values up to float
        rounding, with most of the last block's work skipped.
        """
        if input_ids.dim() != 2 or input_ids.shape[1] == 0:
            raise ValueError(f"input_ids must be (B, T) with T >= 1, got {tuple(input_ids.shape)}")
        if readout is not None and kv_cache is not None:
            raise ValueError("readout and kv_cache cannot be combined")
        B, T = input_ids.shape
        dev = input_ids.device
        mask = (torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None
                else attention_mask.to(dev).bool())  # (B, T)
        L = 0 if kv_cache is None else kv_cache.length  # positions already in the cache
        S = L + T
        if kv_cache is not None:
            if kv_cache.batch_size != B:
                raise ValueError(f"KVCache batch size {kv_cache.batch_size} != input batch {B}")
            if S > kv_cache.max_len:
                raise ValueError(f"KVCache overflow: {L} filled + {T} new "
                                 f"> max_len {kv_cache.max_len}")
        if position_ids is None:
            # Count real tokens only (left padding works); leading pads are clamped to 0.
            start = 0 if kv_cache is None else kv_cache.next_pos[:, None]  # (B, 1)
            position_ids = (start + mask.long().cumsum(1) - 1).clamp(min=0)  # (B, T)
        if int(position_ids.max()) >= self.config.block_size:
            raise ValueError(f"position {int(position_ids.max())} >= block_size "
                             f"{self.config.block_size}; sequence too long for this model")

        if kv_cache is not None and T == 1 and not (self.training and self.config.dropout):
            # One new token per row (decoding): the single-query path, same values.
            return self._decode(input_ids[:, 0], kv_cache, real=mask[:, 0],
                                pos=position_ids[:, 0])[:, None]  # (B, 1, C)
        if kv_cache is None:
            key_mask = mask  # (B, S) with S == T
        else:
            kv_cache.key_mask[:, L:S] = mask
            key_mask = kv_cache.key_mask[:, :S]  # (B, S)
            # next_pos = one past the largest position of any real token seen so far.
            last = torch.where(mask, position_ids + 1, 0).max(1).values  # (B,)
            kv_cache.next_pos = torch.maximum(kv_cache.next_pos, last)
        q_idx = torch.arange(L, S, device=dev)[:, None]  # (T, 1) absolute query slots
        k_idx = torch.arange(S, device=dev)[None, :]  # (1, S) absolute key slots
        # Causal + key padding; the diagonal is always allowed so no row is fully masked (no NaN).
        attn_mask = ((k_idx <= q_idx) & key_mask[:, None, :]) | (k_idx == q_idx)  # (B, T, S)
        attn_mask = attn_mask[:, None]  # (B, 1, T, S), broadcast over heads

        x = self.drop(self.tok_emb(input_ids) + self.pos_emb(position_ids))  # (B, T, C)
        for i, block in enumerate(self.blocks):
            last = i == len(self.blocks) - 1
            x = block(x, attn_mask, kv_cache, readout if last else None)  # (B, T, C)
        if kv_cache is not None:
            kv_cache.length = S
        if readout is not None:
            return self.ln_f(x[:, 0])  # (B, C)
        return self.ln_f(x)  # (B, T, C)

    def forward(self, input_ids, attention_mask=None, position_ids=None, kv_cache=None):
        """Logits (B, T, V)."""
        return self.lm_head(self.trunk(input_ids, attention_mask, position_ids, kv_cache))

    def decode_step(self, idx, kv_cache: KVCache, attn_bias=None):
        """Logits (B, V) of one new real token per row, appended to the cache: the decoding
        fast path (inference only, no dropout). Same values as
        forward(idx[:, None], kv_cache=kv_cache)[:, -1], with no checks and no mask building.

        idx (B,) int64. attn_bias (B * H, 1, max_len) float: 0 where a key may be attended,
        -inf where not, this step's slot included; a generation builds it once (`Decoder`).
        Default: built here from kv_cache.key_mask."""
        return self.lm_head(self._decode(idx, kv_cache, attn_bias=attn_bias))

    def _decode(self, idx, kv_cache: KVCache, attn_bias=None, real=None, pos=None):
        """Hidden states (B, C) after ln_f for one new token per row, written to slot
        kv_cache.length. real (B,) bool (default all True): False feeds a masked pad, which
        is never attended to, takes no position and is not computed (its output is 0).
        pos (B,): default the cache's next positions."""
        L = kv_cache.length
        if L >= kv_cache.max_len:
            raise ValueError(f"KVCache overflow: {L} filled + 1 new > max_len {kv_cache.max_len}")
        B, S = idx.shape[0], L + 1
        if pos is None:
            pos = kv_cache.next_pos  # (B,) positions count real tokens only
        rows = None  # (R,) the rows computed, when not all
        if real is None:
            kv_cache.key_mask[:, L] = True
            kv_cache.next_pos = kv_cache.next_pos + 1
        else:
            kv_cache.key_mask[:, L] = real
            kv_cache.next_pos = torch.maximum(kv_cache.next_pos, torch.where(real, pos + 1, 0))
            if not bool(real.all()):
                rows = real.nonzero().squeeze(1)  # (R,)
                idx, pos = idx[rows], pos[rows]
        if attn_bias is None:
            allowed = kv_cache.key_mask[:, :S].clone()  # (B, S)
            allowed[:, L] = True  # the query's own slot: no row is fully masked (no NaN)
            bias = torch.zeros(allowed.shape, dtype=kv_cache.k.dtype, device=idx.device)
            bias.masked_fill_(~allowed, float("-inf"))
            attn_bias = bias.repeat_interleave(self.config.n_head, 0)[:, None]  # (B * H, 1, S)
        attn_bias = attn_bias[:, :, :S]
        x = self.tok_emb(idx) + self.pos_emb(pos)  # (B, C) or (R, C)
        for block in self.blocks:
            x = block.decode(x, kv_cache, attn_bias, rows)  # (B, C) or (R, C)
        kv_cache.length = S
        x = self.ln_f(x)
        if rows is not None:
            x = x.new_zeros(B, x.shape[1]).index_copy_(0, rows, x)  # (B, C), 0 on pads
        return x  # (B, C)

    def token_logprobs(self, input_ids, attention_mask=None, temperature: float = 1.0):
        """(B, T-1): log p(input_ids[:, t] | input_ids[:, :t]) for t = 1..T-1 under
        softmax(logits / temperature). Values at pad targets are meaningless; mask them."""
        if temperature <= 0:
            raise ValueError(f"token_logprobs needs temperature > 0, got {temperature}")
        logits = self(input_ids, attention_mask)[:, :-1] / temperature  # (B, T-1, V)
        logp = F.log_softmax(logits.float(), dim=-1)  # (B, T-1, V)
        return logp.gather(-1, input_ids[:, 1:, None]).squeeze(-1)  # (B, T-1)

    @torch.no_grad()
    def generate(self, prompt_ids, prompt_mask, max_new_tokens: int, *, eos_id: int, pad_id: int,
                 temperature=1.0, top_k: int | None = None, top_p: float | None = None,
                 generator: torch.Generator | None = None, fused: bool | None = None) -> dict:
        """Sample up to max_new_tokens after LEFT-padded prompts, using one KV cache. A row
        ends with its eos; after that it gets pads and leaves the decoding batch. fused: as
        `Decoder`'s (None: the fused CPU decode step where it applies)."""
        B = prompt_ids.shape[0]
        dev = prompt_ids.device
        ids = torch.full((B, max_new_tokens), pad_id, dtype=torch.long, device=dev)
        alive_mask = torch.zeros(B, max_new_tokens, dtype=torch.bool, device=dev)
        logprobs = torch.zeros(B, max_new_tokens, dtype=torch.float32, device=dev)
        dec = Decoder(self, prompt_ids, prompt_mask, max_new_tokens, pad_id=pad_id,
                      temperature=temperature, top_k=top_k, top_p=top_p, generator=generator,
                      fused=fused)
        if max_new_tokens == 0:
            return {"response_ids": ids, "response_mask": alive_mask, "logprobs": logprobs}
        done = torch.zeros(B, dtype=torch.bool, device=dev)
        n = 0
        for step in range(max_new_tokens):
            tok, lp = dec.sample()  # (B,) pad and 0 on rows that already ended
            ids[:, step], logprobs[:, step], alive_mask[:, step] = tok, lp, ~done
            n = step + 1
            ended = ~done & (tok == eos_id)  # (B,)
            done |= ended
            if not dec.advance(tok, ended):
                break
        return {"response_ids": ids[:, :n], "response_mask": alive_mask[:, :n],
                "logprobs": logprobs[:, :n]}

    def save(self, directory, name: str) -> None:
        """Write directory/name.safetensors and directory/name.json, each atomically."""
        directory = Path(directory)
        check_name(name, "model name")
        tensors = dict(self.state_dict())
        if self.config.tie_embeddings:
            tensors.pop("lm_head.weight")  # same storage as tok_emb.weight; save one copy
        save_tensors(directory / f"{name}.safetensors", tensors)
        write_json(directory / f"{name}.json", asdict(self.config))

    @classmethod
    def load(cls, directory, name: str, map_location="cpu") -> GPT:
        """Read a model written by save(). Uses only json + safetensors (never pickle).
        The config is validated before anything is allocated; the weights must match it in
        names, shapes and dtype, and be finite."""
        cfg_path = Path(directory) / f"{check_name(name, 'model name')}.json"
        w_path = Path(directory) / f"{name}.safetensors"
        for p in (cfg_path, w_path):
            if not p.is_file():
                raise FileNotFoundError(f"model file not found: {p}")
        config = GPTConfig.from_dict(read_json(cfg_path, "model config"), cfg_path)
        tensors = load_tensors(w_path, map_location)
        model = cls(config).to(map_location)
        expected = dict(model.state_dict())
        if config.tie_embeddings:
            expected.pop("lm_head.weight")
        check_tensors(tensors, expected, w_path, cfg_path)
        model.load_state_dict(tensors, strict=False)  # only the tied lm_head.weight is absent
        return model.eval()


class Decoder:
    """Batched sampling after LEFT-padded prompts, one token per row per step on one KV
    cache, computing only the rows still generating. GPT.generate and the agents' rollouts
    through the env both decode with it:

        dec = Decoder(model, prompt_ids, prompt_mask, max_new_tokens, pad_id=pad, generator=g)
        while True:
            tokens, logprobs = dec.sample()  # (N,) each: pad and 0 on rows already finished
            if not dec.advance(tokens, finished):  # finished (N,) bool: rows ending now
                break

    A finished row leaves the batch: a live row from beyond the live count moves into its
    slot (`KVCache.move_rows`), so the batch, its KV cache and its attention bias shrink as
    views, copying only the moved rows. The attention bias is built once, at the prefill,
    and positions come from the cache. Every step draws one uniform number per prompt row,
    finished or not, so a row's samples depend on the generator and its own logits only:
    the same seed gives the same tokens whichever rows are still in the batch. Decoding is
    inference: the decode steps apply no dropout (put the model in eval mode).

    fused: None (default) runs the decode steps and the sampling in one C kernel call each
    when `textenv.fused_decode` applies (a GPT on the CPU, float32, under no_grad), else in
    PyTorch; False always in PyTorch; True insists on the kernel. The two agree up to float
    rounding; the kernel keeps finished rows in place in the cache and skips them.
    """

    def __init__(self, model: GPT, prompt_ids, prompt_mask, max_new_tokens: int, *, pad_id: int,
                 temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, generator: torch.Generator | None = None,
                 fused: bool | None = None):
        N, Tp = prompt_ids.shape
        mask = prompt_mask.bool()  # (N, Tp)
        if not bool(mask[:, -1].all()):
            raise ValueError("decoding needs LEFT-padded prompts with >= 1 real token per row")
        if int(mask.sum(1).max()) + max_new_tokens > model.config.block_size:
            raise ValueError(f"prompt length + max_new_tokens ({max_new_tokens}) exceeds "
                             f"block_size {model.config.block_size}")
        self.model, self.n, self.max_new_tokens, self.pad_id = model, N, max_new_tokens, pad_id
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p
        self.generator = generator
        dev, dtype = prompt_ids.device, next(model.parameters()).dtype
        self.cache = KVCache(model.config, N, Tp + max_new_tokens, dtype=dtype, device=dev)
        hidden = model.trunk(prompt_ids, mask, kv_cache=self.cache)[:, -1]  # (N, C) real slot
        self.logits = model.lm_head(hidden)  # (N, V) for the first new token
        # Additive attention bias over every slot: -inf on the prompts' pads, 0 elsewhere
        # (each decoding slot holds a live row's real token: finished rows leave the batch).
        bias = torch.zeros(N, model.config.n_head, 1, self.cache.max_len, dtype=dtype,
                           device=dev)  # (N, H, 1, max_len)
        bias[..., :Tp].masked_fill_(~mask[:, None, None, :], float("-inf"))
        self.bias = bias
        self.rows = torch.arange(N, device=dev)  # (B,) the prompt row in each batch slot
        self.steps = 0  # tokens sampled per row so far
        # On the CPU, one call of a C kernel per step when it applies (textenv.fused_decode);
        # its cache rows stay in place and each step names the rows it feeds.
        why_not = "fused=False" if fused is False else fused_decode.unusable_reason(model)
        if fused and why_not:
            raise ValueError(f"fused=True, but the fused decode step does not apply: {why_not}")
        self.fused = None if why_not else fused_decode.FusedDecodeStep(model, self.cache, bias)

    @property
    def batch_size(self) -> int:
        """Rows the model still computes."""
        return len(self.rows)

    def sample(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next token of every row (N,), pad on finished rows, and its log-prob under
        the sampling distribution (N,), 0 on finished rows."""
        uniform = None
        if self.temperature != 0:  # one draw per prompt row, used or not
            # Drawn where the generator lives (a CPU generator can drive a CUDA model).
            dev = self.rows.device if self.generator is None else self.generator.device
            uniform = torch.rand(self.n, generator=self.generator,
                                 device=dev).to(self.rows.device)  # (N,)
            if self.fused is not None and self.top_k is None and self.top_p is None:
                return self.fused.sample(self.logits, uniform, self.rows, self.temperature,
                                         self.pad_id)  # (N,) each, in one call
            uniform = uniform[self.rows]  # (B,)
        tok, lp = sample_from_logits(self.logits, self.temperature, self.top_k, self.top_p,
                                     uniform=uniform)  # (B,)
        tokens = torch.full((self.n,), self.pad_id, dtype=torch.long, device=tok.device)
        logprobs = torch.zeros(self.n, dtype=torch.float32, device=tok.device)
        tokens[self.rows], logprobs[self.rows] = tok, lp
        return tokens, logprobs

    def advance(self, tokens: torch.Tensor, finished: torch.Tensor) -> bool:
        """Feed tokens (N,) to the rows that go on: those in the batch less `finished` (N,)
        bool. Returns False, computing nothing, once no row is left or max_new_tokens
        tokens were sampled."""
        self.steps += 1
        keep = ~finished[self.rows]  # (B,)
        R = int(keep.sum())
        if R == 0 or self.steps >= self.max_new_tokens:
            return False
        if R < len(keep) and self.fused is not None:  # the fused step skips them
            self.rows = self.rows[keep]
        elif R < len(keep):  # drop the finished rows
            dst = (~keep[:R]).nonzero().squeeze(1)  # finished slots inside the kept prefix
            src = keep[R:].nonzero().squeeze(1) + R  # live rows beyond it (as many)
            self.cache.move_rows(dst, src, R)
            for name in ("rows", "bias"):
                t = getattr(self, name)
                t[dst] = t[src]
                setattr(self, name, t[:R])
        if self.fused is not None:
            self.logits = self.fused(tokens[self.rows], self.rows)  # (B, V)
            return True
        B, H, _, M = self.bias.shape
        self.logits = self.model.decode_step(tokens[self.rows], self.cache,
                                             self.bias.view(B * H, 1, M))  # (B, V)
        return True


def sample_from_logits(logits, temperature=1.0, top_k=None, top_p=None, generator=None,
                       uniform=None):
    """logits (B, V) -> (tokens (B,), logprob of each token under the filtered distribution (B,)).
    Order: temperature, then top-k, then top-p (nucleus). temperature 0 => greedy, logprob 0.

    A row's token inverts its CDF at one uniform draw: `uniform` (B,) in [0, 1), default
    drawn from `generator`. One random number per row instead of torch.multinomial's
    per-row setup: about 10x cheaper at batch 256, same distribution."""
    logits = logits.float()
    if temperature == 0:
        tokens = logits.argmax(-1)  # (B,)
        return tokens, torch.zeros(tokens.shape, device=logits.device)
    if temperature != 1:
        logits = logits / temperature  # (B, V)
    if top_k is not None and 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1) k-th largest
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)  # (B, V)
        probs = sorted_logits.softmax(-1)  # (B, V)
        # Drop a token if the tokens before it already reach top_p: this keeps the smallest
        # prefix whose mass is >= top_p (the top token is always kept).
        drop_sorted = (probs.cumsum(-1) - probs) >= top_p  # (B, V)
        drop = drop_sorted.scatter(-1, order, drop_sorted)  # back to vocab order
        logits = logits.masked_fill(drop, float("-inf"))
    logp = F.log_softmax(logits, dim=-1)  # (B, V), -inf for filtered tokens
    cdf = logp.exp().cumsum_(-1)  # (B, V) non-decreasing
    if uniform is None:
        uniform = torch.rand(logits.shape[0], generator=generator, device=logits.device)
    # Scaled by the row's total (1 up to rounding), the draw lands below the last entry; the
    # first entry greater than it is never a zero-probability (filtered) token.
    target = uniform[:, None].to(cdf.dtype) * cdf[:, -1:]  # (B, 1)
    tokens = torch.searchsorted(cdf, target, right=True).squeeze(-1)  # (B,)
    return tokens, logp.gather(-1, tokens[:, None]).squeeze(-1)
