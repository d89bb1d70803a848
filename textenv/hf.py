"""Hugging Face models as policy, reference and reward model (the optional `[hf]` extra).

An assets directory may hold, instead of (or beside) textenv's own files, directories saved
with Hugging Face's `save_pretrained`:

    DIR/sft/       AutoModelForCausalLM + its tokenizer: the policy agents start from and
                   the frozen reference policy (`base/` works the same way)
    DIR/reward/    AutoModelForSequenceClassification with num_labels=1 (+ its tokenizer, and
                   textenv_reward.json: the calibration gain and bias)

Then `gym.make("TextGen-v0", task=..., assets_dir=DIR)`, every agent (`--assets-dir DIR`)
and `textenv reward --init-dir DIR` use them, read from disk only (never the Hub): a model
called NAME is `NAME/config.json` when that directory exists, else textenv's
`NAME.safetensors` + `NAME.json`. The tokenizer is the one saved in `sft/` (else `base/`,
else `reward/`) when the directory has no textenv `tokenizer.json`.

Three adapters present the Hugging Face objects with the interfaces the env, the decoders,
the agents and reward-model training already use:

    HFTokenizer     a PreTrainedTokenizerFast as a textenv `Tokenizer`
    HFCausalLM      an AutoModelForCausalLM as a `GPT`: forward(ids, mask) -> logits,
                    trunk(ids, mask) -> hidden states and lm_head(hidden) (the value head of
                    PPO reads them), decoding on a `KVCache` through the model's own cache
    HFRewardModel   an AutoModelForSequenceClassification (one label) as a `RewardModel`

Positions come from the attention mask (pads take none), so left and right padding give a
row the same values as the row alone, as for textenv's GPT.
"""

from __future__ import annotations

import copy
import inspect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from textenv.model import GPT, KVCache
from textenv.rewards import RewardModel
from textenv.storage import check_name, read_json, write_json
from textenv.tokenizer import Tokenizer, load_tokenizer_file

INSTALL_HINT = 'Hugging Face models need the `transformers` package: pip install -e ".[hf]"'
TOKENIZER_SOURCES = ("sft", "base", "reward")
"""Where an assets directory without tokenizer.json keeps its tokenizer (first found)."""
CALIBRATION_FILE = "textenv_reward.json"
CALIBRATION_FORMAT = "textenv-hf-reward-calibration"


def transformers_module():
    """`transformers`, imported on first use (an optional dependency)."""
    try:
        import transformers
    except ImportError as e:
        raise ImportError(INSTALL_HINT) from e
    return transformers


def hf_dir(directory: str | Path, name: str) -> Path | None:
    """directory/name when it is a Hugging Face model directory (holds config.json)."""
    path = Path(directory) / check_name(name, "model name")
    return path if (path / "config.json").is_file() else None


def hf_tokenizer_dir(directory: str | Path) -> Path | None:
    """The model directory whose tokenizer an assets directory uses, if any."""
    for name in TOKENIZER_SOURCES:
        path = hf_dir(directory, name)
        if path is not None and (path / "tokenizer_config.json").is_file():
            return path
    return None


def positions_from_mask(mask: torch.Tensor, start: torch.Tensor | int = 0) -> torch.Tensor:
    """Position ids (B, T) counting real tokens only, from `start` (B, 1) on; pads get the
    position of the real token before them (clamped at 0), and are masked anyway."""
    return (start + mask.long().cumsum(1) - 1).clamp(min=0)


def _no_dropout(model: nn.Module) -> None:
    """RL needs pi and pi_old to agree, as textenv's GPT (dropout 0): switch dropout off."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    for key in ("attn_pdrop", "resid_pdrop", "embd_pdrop", "attention_dropout",
                "hidden_dropout", "summary_first_dropout"):
        if isinstance(getattr(model.config, key, None), float):
            setattr(model.config, key, 0.0)


# ---- tokenizer -------------------------------------------------------------------------------
class HFTokenizer:
    """A Hugging Face fast tokenizer with textenv's `Tokenizer` interface.

    `encode` adds no special tokens (the env puts `<bos>` in front itself). `decode` drops
    pad and bos ids and keeps the eos token as its text (e.g. `<eos>`), which `encode` maps
    back to the eos id, so a decoded response shows whether the policy stopped.
    The tokenizer must have a pad, a bos and an eos token with three different ids: textenv
    masks pads and drops bos in responses, and must still see eos. GPT-2's tokenizer has
    one token for all three; give it its own: `tok.add_special_tokens({"pad_token": "<pad>",
    "bos_token": "<bos>"})`, `model.resize_token_embeddings(len(tok))`, save both again.
    """

    def __init__(self, hf_tokenizer, where: str | Path = "tokenizer"):
        ids = {name: getattr(hf_tokenizer, f"{name}_token_id", None)
               for name in ("pad", "bos", "eos")}
        missing = [name for name, i in ids.items() if i is None]
        if missing:
            raise ValueError(f"{where}: the tokenizer has no {' / '.join(missing)} token; add "
                             f"them (tokenizer.add_special_tokens, model.resize_token_embeddings)"
                             f" and save both again")
        if len(set(ids.values())) < 3:
            raise ValueError(f"{where}: pad, bos and eos must be three different tokens, got "
                             f"ids {ids}; add distinct ones (see textenv.hf.HFTokenizer)")
        self.hf = hf_tokenizer
        self.pad_id, self.bos_id, self.eos_id = ids["pad"], ids["bos"], ids["eos"]
        self.vocab_size: int = len(hf_tokenizer)

    @classmethod
    def from_dir(cls, directory: str | Path) -> HFTokenizer:
        """The tokenizer saved in `directory` (local files only, never the Hub)."""
        tf = transformers_module()
        try:
            tok = tf.AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
        except (OSError, ValueError) as e:
            raise ValueError(f"could not read the Hugging Face tokenizer in {directory}: {e}"
                             ) from e
        return cls(tok, directory)

    def encode(self, text: str) -> list[int]:
        return list(self.hf.encode(text, add_special_tokens=False))

    def decode(self, ids: Sequence[int]) -> str:
        kept = []
        for i in ids:
            i = int(i)
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"token id {i} outside [0, {self.vocab_size})")
            if i != self.pad_id and i != self.bos_id:
                kept.append(i)
        return self.hf.decode(kept, skip_special_tokens=False,
                              clean_up_tokenization_spaces=False)

    def save(self, directory: str | Path) -> None:
        """save_pretrained into `directory` (a model directory)."""
        self.hf.save_pretrained(str(directory))


# ---- policy / reference ----------------------------------------------------------------------
@dataclass
class HFConfig:
    """What callers read from a policy's `config` (the names of `GPTConfig`)."""

    vocab_size: int  # the tokenizer's: logits beyond it (padded embeddings) are cut off
    block_size: int  # the model's maximum number of positions
    n_layer: int
    n_head: int
    n_embd: int  # hidden width: what trunk() returns, what a value head reads


def _hf_config(hf_config, vocab_size: int, where) -> HFConfig:
    """Checks that the model's cache is (B, n_head, S, n_embd // n_head) per layer, the
    layout of `KVCache`; grouped-query attention (fewer key/value heads) is not supported."""
    def get(*names):
        for name in names:
            value = getattr(hf_config, name, None)
            if isinstance(value, int):
                return value
        raise ValueError(f"{where}: config has none of {names}")

    n_embd = get("hidden_size", "n_embd", "d_model")
    n_head = get("num_attention_heads", "n_head")
    kv_heads = getattr(hf_config, "num_key_value_heads", None) or n_head
    head_dim = getattr(hf_config, "head_dim", None) or n_embd // n_head
    if kv_heads != n_head or head_dim * n_head != n_embd:
        raise ValueError(f"{where}: {kv_heads} key/value heads of width {head_dim} for "
                         f"{n_head} heads and hidden size {n_embd}; textenv's KV cache needs "
                         f"one key/value head per attention head of width hidden/heads "
                         f"(grouped-query attention is not supported)")
    return HFConfig(vocab_size=vocab_size,
                    block_size=get("max_position_embeddings", "n_positions", "n_ctx"),
                    n_layer=get("num_hidden_layers", "n_layer"), n_head=n_head, n_embd=n_embd)


class _CacheBridge:
    """Hands a `KVCache`'s filled slots to a Hugging Face model as its own cache object, and
    the new slots it computes back. The HF model's forward names the argument `cache`
    (transformers 5) or `past_key_values` (4.x)."""

    def __init__(self, base_model: nn.Module):
        self.arg = ("cache" if "cache" in inspect.signature(base_model.forward).parameters
                    else "past_key_values")

    def to_hf(self, kv_cache: KVCache):
        cache = transformers_module().DynamicCache()
        L = kv_cache.length
        if L:
            for layer in range(kv_cache.k.shape[0]):
                cache.update(kv_cache.k[layer, :, :, :L], kv_cache.v[layer, :, :, :L], layer)
        return cache

    def from_hf(self, out, kv_cache: KVCache, T: int) -> None:
        cache = getattr(out, self.arg)  # the output field has the argument's name
        L = kv_cache.length
        for layer in range(kv_cache.k.shape[0]):
            keys, values = cache.layers[layer].keys, cache.layers[layer].values  # (B, H, S, D)
            kv_cache.k[layer, :, :, L:L + T] = keys[:, :, L:L + T]
            kv_cache.v[layer, :, :, L:L + T] = values[:, :, L:L + T]


class _VocabHead:
    """A model's output layer cut to the tokenizer's vocabulary (embedding matrices are
    often padded beyond it). Not a module: the weights stay registered once, in the model."""

    def __init__(self, linear: nn.Module, vocab_size: int):
        self.linear, self.vocab_size = linear, vocab_size

    @property
    def weight(self) -> torch.Tensor:
        return self.linear.weight[:self.vocab_size]  # (V, C) a view

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.linear(hidden)[..., :self.vocab_size]  # (..., V)


class HFCausalLM(nn.Module):
    """An AutoModelForCausalLM with the interface of textenv's `GPT` (what the env, its
    wrappers, the decoders and the agents call), weights in `self.hf`."""

    def __init__(self, hf_model: nn.Module, tokenizer: Tokenizer, where: str | Path = "model"):
        super().__init__()
        self.hf = hf_model
        self.tokenizer = tokenizer
        self.config = _hf_config(hf_model.config, tokenizer.vocab_size, where)
        head = hf_model.get_output_embeddings()
        if head is None or head.weight.shape[0] < tokenizer.vocab_size:
            raise ValueError(f"{where}: the model predicts "
                             f"{None if head is None else head.weight.shape[0]} tokens, the "
                             f"tokenizer has {tokenizer.vocab_size}")
        self._bridge = _CacheBridge(hf_model.base_model)
        _no_dropout(hf_model)

    @classmethod
    def from_dir(cls, directory: str | Path, tokenizer: Tokenizer | None = None,
                 dtype: torch.dtype = torch.float32) -> HFCausalLM:
        """Load `directory` (saved with save_pretrained) from disk; the tokenizer defaults
        to the directory's own."""
        tf = transformers_module()
        tokenizer = tokenizer or HFTokenizer.from_dir(directory)
        try:
            model = tf.AutoModelForCausalLM.from_pretrained(str(directory), local_files_only=True,
                                                            dtype=dtype)
        except (OSError, ValueError) as e:
            raise ValueError(f"could not load a causal LM from {directory}: {e}") from e
        return cls(model, tokenizer, directory).eval()

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def trunk(self, input_ids, attention_mask=None, position_ids=None, kv_cache=None,
              readout=None):
        """Hidden states (B, T, C) after the model's final norm; with `kv_cache` the tokens
        follow the ones already in it (their keys and values are appended to it).
        readout (B,): only those positions, (B, C)."""
        if input_ids.dim() != 2 or input_ids.shape[1] == 0:
            raise ValueError(f"input_ids must be (B, T) with T >= 1, got {tuple(input_ids.shape)}")
        B, T = input_ids.shape
        mask = (torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None
                else attention_mask.to(input_ids.device).bool())  # (B, T)
        kwargs = {}
        if kv_cache is None:
            full_mask = mask  # (B, T)
            start = 0
        else:
            L = kv_cache.length
            if kv_cache.batch_size != B or L + T > kv_cache.max_len:
                raise ValueError(f"KVCache of {kv_cache.batch_size} rows, {L} of "
                                 f"{kv_cache.max_len} slots filled: cannot take {B} x {T} more")
            full_mask = torch.cat([kv_cache.key_mask[:, :L], mask], 1)  # (B, S)
            start = kv_cache.next_pos[:, None]  # (B, 1)
            kwargs = {self._bridge.arg: self._bridge.to_hf(kv_cache), "use_cache": True}
        if position_ids is None:
            position_ids = positions_from_mask(mask, start)  # (B, T)
        if int(position_ids.max()) >= self.config.block_size:
            raise ValueError(f"position {int(position_ids.max())} >= block_size "
                             f"{self.config.block_size}; sequence too long for this model")
        out = self.hf.base_model(input_ids=input_ids, attention_mask=full_mask.long(),
                                 position_ids=position_ids, **kwargs)
        if kv_cache is not None:
            self._bridge.from_hf(out, kv_cache, T)
            kv_cache.key_mask[:, L:L + T] = mask
            last = torch.where(mask, position_ids + 1, 0).max(1).values  # (B,)
            kv_cache.next_pos = torch.maximum(kv_cache.next_pos, last)
            kv_cache.length = L + T
        hidden = out.last_hidden_state  # (B, T, C)
        if readout is not None:
            return hidden[torch.arange(B, device=hidden.device), readout]  # (B, C)
        return hidden

    @property
    def lm_head(self) -> _VocabHead:
        """lm_head(hidden (..., C)) -> logits (..., V) over the tokenizer's vocabulary;
        lm_head.weight (V, C) its rows (as `GPT.lm_head`)."""
        return _VocabHead(self.hf.get_output_embeddings(), self.config.vocab_size)

    def with_lm_head(self, weight: torch.Tensor) -> HFCausalLM:
        """A copy whose LM head is `weight` (V, C), untied from the embeddings (how the
        stable-baselines3 runner turns its trained action head back into a policy)."""
        model = copy.deepcopy(self)
        head = nn.Linear(weight.shape[1], weight.shape[0], bias=False).to(weight.device)
        with torch.no_grad():
            head.weight.copy_(weight)
        model.hf.config.tie_word_embeddings = False
        model.hf.set_output_embeddings(head)
        return model

    def forward(self, input_ids, attention_mask=None, position_ids=None, kv_cache=None):
        """Logits (B, T, V)."""
        return self.lm_head(self.trunk(input_ids, attention_mask, position_ids, kv_cache))

    def decode_step(self, idx, kv_cache: KVCache, attn_bias=None):
        """Logits (B, V) of one new real token per row, appended to the cache. attn_bias is
        not needed: the cache's key_mask says which slots are attended to."""
        return self(idx[:, None], kv_cache=kv_cache)[:, 0]

    # The same sampling and scoring code as textenv's GPT (they only call the methods above).
    token_logprobs = GPT.token_logprobs
    generate = GPT.generate

    def save(self, directory: str | Path, name: str) -> None:
        """save_pretrained (model and tokenizer) into directory/name/."""
        path = Path(directory) / check_name(name, "model name")
        self.hf.save_pretrained(str(path))
        if isinstance(self.tokenizer, HFTokenizer):  # else the assets' tokenizer.json
            self.tokenizer.save(path)

    @classmethod
    def load(cls, directory: str | Path, name: str, map_location="cpu") -> HFCausalLM:
        return cls.from_dir(Path(directory) / check_name(name, "model name")).to(map_location)


# ---- reward model ----------------------------------------------------------------------------
class HFRewardModel(RewardModel):
    """An AutoModelForSequenceClassification with one label, as a textenv `RewardModel`:
    the same encode/score/score_ids/raw_score methods and calibration (gain, bias), with
    the raw score read at the last real token by the attention mask (not by the pad id, so
    masked tokens inside a sequence are skipped, as the env's `score_ids` expects)."""

    def __init__(self, hf_model: nn.Module, tokenizer: Tokenizer, gain: float = 1.0,
                 bias: float = 0.0, batch_size: int = 256, where: str | Path = "reward model"):
        nn.Module.__init__(self)  # not RewardModel.__init__: that one builds a GPT trunk
        if getattr(hf_model.config, "num_labels", None) != 1:
            raise ValueError(f"{where}: a reward model needs num_labels=1, got "
                             f"{getattr(hf_model.config, 'num_labels', None)}")
        head = getattr(hf_model, "score", None)
        if not isinstance(head, nn.Linear):
            raise ValueError(f"{where}: {type(hf_model).__name__} has no linear `score` head "
                             f"(the head of the decoder-only *ForSequenceClassification)")
        self.hf = hf_model
        self.tokenizer = tokenizer
        self.config = _hf_config(hf_model.config, tokenizer.vocab_size, where)
        self.gain, self.bias, self.batch_size = float(gain), float(bias), int(batch_size)
        _no_dropout(hf_model)
        self.eval()

    @property
    def head(self) -> nn.Linear:
        """The model's score head: hidden state (C,) -> raw score (RewardModel reads its
        device)."""
        return self.hf.score

    @property
    def transformer(self) -> nn.Module:
        """The trunk (what training unfreezes); freeze_layers > 0 is not supported here."""
        return self.hf.base_model

    @classmethod
    def from_lm(cls, lm: HFCausalLM, tokenizer: Tokenizer, head_init_std: float = 0.02,
                seed: int | None = None) -> HFRewardModel:
        """A reward model whose trunk is a copy of `lm`'s (the LM is not modified)."""
        tf = transformers_module()
        config = type(lm.hf.config).from_dict(lm.hf.config.to_dict())
        config.num_labels, config.pad_token_id = 1, tokenizer.pad_id
        model = tf.AutoModelForSequenceClassification.from_config(config)
        model.base_model.load_state_dict(lm.hf.base_model.state_dict())
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        with torch.no_grad():
            model.score.weight.copy_(torch.randn(model.score.weight.shape, generator=gen)
                                     * head_init_std)
            if model.score.bias is not None:
                model.score.bias.zero_()
        return cls(model.to(next(lm.parameters()).device), tokenizer)

    def _last_hidden(self, input_ids, attention_mask):
        """Hidden state at each row's last real token (B, C); positions skip masked tokens."""
        mask = attention_mask.bool()  # (B, T)
        if not bool(mask.any(1).all()):
            raise ValueError("every row needs at least one real token (attention_mask all 0)")
        T = input_ids.shape[1]
        hidden = self.hf.base_model(input_ids=input_ids, attention_mask=mask.long(),
                                    position_ids=positions_from_mask(mask)).last_hidden_state
        cols = torch.arange(T, device=input_ids.device).expand_as(mask)  # (B, T)
        last = torch.where(mask, cols, -1).max(1).values  # (B,)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]  # (B, C)

    def raw_scores_from_ids(self, input_ids, attention_mask, readout_only: bool = False):
        """Raw scores (B,), differentiable (readout_only is accepted and changes nothing)."""
        return self.head(self._last_hidden(input_ids, attention_mask)).squeeze(-1).float()

    @torch.no_grad()
    def features(self, prompts, responses, batch_size: int | None = None) -> torch.Tensor:
        """What the head reads: (B, C) float32 on CPU."""
        seqs = self.encode(prompts, responses)
        bs = batch_size or self.batch_size
        with self._eval_mode():
            return torch.cat([self._last_hidden(*self.collate(seqs[i:i + bs])).float().cpu()
                              for i in range(0, len(seqs), bs)])

    def __repr__(self) -> str:
        return (f"HFRewardModel({type(self.hf).__name__}, gain={self.gain:.4g}, "
                f"bias={self.bias:.4g})")

    def save(self, directory: str | Path, name: str = "reward", extra: dict | None = None
             ) -> None:
        """directory/name/: save_pretrained (model, tokenizer) + textenv_reward.json."""
        path = Path(directory) / check_name(name, "reward model name")
        self.hf.save_pretrained(str(path))
        if isinstance(self.tokenizer, HFTokenizer):  # else the assets' tokenizer.json
            self.tokenizer.save(path)
        write_json(path / CALIBRATION_FILE, {"format": CALIBRATION_FORMAT, "gain": self.gain,
                                             "bias": self.bias, "extra": extra or {}})

    @classmethod
    def load(cls, directory: str | Path, name: str = "reward",
             tokenizer: Tokenizer | None = None, map_location: str = "cpu"
             ) -> HFRewardModel:
        """Read directory/name/; without textenv_reward.json, gain 1 and bias 0 (a model not
        calibrated by textenv: its raw scores are the rewards). The tokenizer defaults to
        the one saved in directory/name/, else directory/tokenizer.json."""
        path = Path(directory) / check_name(name, "reward model name")
        tf = transformers_module()
        if tokenizer is None:
            tokenizer = (HFTokenizer.from_dir(path) if (path / "tokenizer_config.json").is_file()
                         else load_tokenizer_file(Path(directory) / "tokenizer.json"))
        try:
            model = tf.AutoModelForSequenceClassification.from_pretrained(
                str(path), local_files_only=True, dtype=torch.float32)
        except (OSError, ValueError) as e:
            raise ValueError(f"could not load a sequence-classification model from {path}: {e}"
                             ) from e
        gain, bias = 1.0, 0.0
        if (path / CALIBRATION_FILE).is_file():
            meta = read_json(path / CALIBRATION_FILE, "reward calibration")
            try:
                gain, bias = float(meta["gain"]), float(meta["bias"])
            except (KeyError, TypeError, ValueError) as e:
                raise ValueError(f"{path / CALIBRATION_FILE}: needs numbers gain and bias ({e!r})"
                                 ) from e
            if not (math.isfinite(gain) and math.isfinite(bias)):
                raise ValueError(f"{path / CALIBRATION_FILE}: gain and bias must be finite")
        return cls(model, tokenizer, gain, bias, where=path).to(map_location).eval()


__all__ = ["HFCausalLM", "HFConfig", "HFRewardModel", "HFTokenizer", "hf_dir", "hf_tokenizer_dir"]
