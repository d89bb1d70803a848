"""A fused decode step for `GPT` on the CPU: one call of a small C kernel per generated token.

`textenv.model.Decoder` (GPT.generate and the agents' rollouts) uses it by itself when it
applies: a `GPT` on the CPU, float32, without active dropout, under `torch.no_grad()`, n_embd a
multiple of the SIMD width, and a C compiler on the machine. Otherwise, or with
`TEXTENV_FUSED_DECODE=0` in the environment, the decoder runs `GPT.decode_step` in PyTorch.
Both compute the same logits up to float rounding (tests/test_fused_decode.py).

Why: eager PyTorch runs a decode step of this small model as ~120 ops, each dispatched from
Python and each writing its result to memory for the next; at batch 256 that overhead, not
the arithmetic nor the reading of the KV cache, sets the speed. The kernel
(`fused_decode.c`, beside this file) takes tiles of rows through every layer in one call.

The kernel is compiled on first use with `cc -O3 -march=native -fopenmp` into
`$TEXTENV_CACHE_DIR` (default `~/.cache/textenv`), under a name that hashes the source, the
flags and the CPU, so a changed file or another machine builds anew. It shares torch's
OpenMP runtime and uses `torch.get_num_threads()` threads.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("fused_decode.c")
FLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=gnu11"]
ENV_SWITCH = "TEXTENV_FUSED_DECODE"
"""Set to 0 to decode in PyTorch only."""

_LAYER_FIELDS = ("ln1_w", "ln1_b", "qkv_w", "qkv_b", "proj_w", "proj_b",
                 "ln2_w", "ln2_b", "fc_w", "fc_b", "fc2_w", "fc2_b")


class _Layer(ctypes.Structure):
    _fields_ = [(name, ctypes.c_void_p) for name in _LAYER_FIELDS]


class _Model(ctypes.Structure):
    _fields_ = [("n_layer", ctypes.c_int), ("n_head", ctypes.c_int), ("n_embd", ctypes.c_int),
                ("vocab", ctypes.c_int), ("vocab_padded", ctypes.c_int),
                ("tok_emb", ctypes.c_void_p), ("pos_emb", ctypes.c_void_p),
                ("lnf_w", ctypes.c_void_p), ("lnf_b", ctypes.c_void_p),
                ("head_w", ctypes.c_void_p), ("layers", ctypes.POINTER(_Layer))]


_lib: ctypes.CDLL | None = None
_build_error: str | None = None  # why the kernel is not available, once known


def _cpu_signature() -> str:
    """What -march=native compiles for: the CPU's model and feature flags."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return "\n".join(sorted({line for line in lines
                                 if line.startswith(("model name", "flags"))}))
    except OSError:
        return platform.processor() or platform.machine()


def _cache_dir() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "textenv"
    return Path(os.environ.get("TEXTENV_CACHE_DIR", default))


def _build() -> Path:
    """The compiled kernel's path, compiling it first if this source, compiler, flags and
    CPU have not been built yet. Raises OSError or SubprocessError, saying why."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise FileNotFoundError("no C compiler found (cc or gcc on PATH, or $CC)")
    key = hashlib.sha256("\0".join([SOURCE.read_text(), compiler, *FLAGS,
                                    _cpu_signature()]).encode()).hexdigest()[:16]
    path = _cache_dir() / f"fused_decode-{key}.so"
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    # Built under a temporary name, then renamed: another process never loads half a file,
    # and a failed build leaves nothing behind.
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=path.parent)
    os.close(fd)
    try:
        result = subprocess.run([compiler, *FLAGS, str(SOURCE), "-o", tmp, "-lm"],
                                capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise OSError(f"{compiler} failed on {SOURCE}: {result.stderr.strip()[:2000]}")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def library() -> ctypes.CDLL | None:
    """The compiled kernel, built on first use; None (with the reason in `build_error()`,
    and a warning the first time) when no C compiler is found or the build fails."""
    global _lib, _build_error
    if _lib is not None or _build_error is not None:
        return _lib
    try:
        lib = ctypes.CDLL(str(_build()))
    except (OSError, subprocess.SubprocessError) as e:
        _build_error = str(e)
        warnings.warn(f"textenv: the fused decode step is off ({_build_error}); decoding "
                      f"in PyTorch", RuntimeWarning, stacklevel=3)
        return None
    p, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    lib.workspace_floats.restype, lib.workspace_floats.argtypes = i64, [i32, i32, i32]
    lib.simd_width.restype, lib.simd_width.argtypes = i32, []
    lib.decode_step.restype = None
    lib.decode_step.argtypes = [p, i32, p, p, p, p, i64, p, p, p, i32, p, i64, i64,
                                p, p, i64, i32]
    lib.sample_rows.restype = None
    lib.sample_rows.argtypes = [p, i32, i32, p, p, ctypes.c_float, i64, i32, p, p, p]
    _lib = lib
    return lib


def build_error() -> str | None:
    """Why the kernel could not be built (None if it was, or was not tried yet)."""
    return _build_error


def unusable_reason(model) -> str | None:
    """Why `Decoder` cannot decode `model` with the fused step, or None if it can."""
    from textenv.model import GPT  # model.py imports this module

    if os.environ.get(ENV_SWITCH, "1") == "0":
        return f"{ENV_SWITCH}=0 in the environment"
    if type(model) is not GPT:
        return f"the model is a {type(model).__name__}, not a textenv GPT"
    if torch.is_grad_enabled():
        return "gradients are enabled (decode under torch.no_grad())"
    if model.training and model.config.dropout > 0:
        return "the model is in training mode with dropout (call model.eval())"
    for p in model.parameters():
        if p.device.type != "cpu" or p.dtype != torch.float32:
            return f"the weights are {p.dtype} on {p.device}; the kernel takes float32 on the CPU"
    lib = library()
    if lib is None:
        return _build_error
    if model.config.n_embd % lib.simd_width() != 0:
        return (f"n_embd {model.config.n_embd} is not a multiple of the SIMD width "
                f"{lib.simd_width()}")
    return None


def usable(model) -> bool:
    """Whether `Decoder` decodes `model` with the fused step (see the module docstring)."""
    return unusable_reason(model) is None


class _Packed:
    """The model's weights in the kernel's layout, and the struct that points at them.
    Holds the tensors, so the pointers stay valid while it lives."""

    def __init__(self, model):
        cfg, width = model.config, _lib.simd_width()

        def t(linear):  # (out, in) -> (in, out), contiguous
            return linear.weight.detach().t().contiguous()

        def ptr(tensor):
            if tensor is None:
                return None
            tensor = tensor.detach().contiguous()
            self.keep.append(tensor)
            return tensor.data_ptr()

        self.keep: list[torch.Tensor] = []
        layers = (_Layer * cfg.n_layer)()
        for layer, block in zip(layers, model.blocks):
            fc, fc2 = block.mlp[0], block.mlp[2]
            for name, tensor in zip(_LAYER_FIELDS, (
                    block.ln1.weight, block.ln1.bias, t(block.attn.qkv), block.attn.qkv.bias,
                    t(block.attn.proj), block.attn.proj.bias, block.ln2.weight, block.ln2.bias,
                    t(fc), fc.bias, t(fc2), fc2.bias)):
                setattr(layer, name, ptr(tensor))
        vocab = cfg.vocab_size
        padded = -(-vocab // width) * width
        head = torch.zeros(cfg.n_embd, padded)  # (C, Vp): the lm_head, zero columns past V
        head[:, :vocab] = model.lm_head.weight.detach().t()
        self.layers = layers
        self.model = _Model(cfg.n_layer, cfg.n_head, cfg.n_embd, vocab, padded,
                            ptr(model.tok_emb.weight), ptr(model.pos_emb.weight),
                            ptr(model.ln_f.weight), ptr(model.ln_f.bias), ptr(head),
                            ctypes.cast(layers, ctypes.POINTER(_Layer)))
        self.model_ref = ctypes.byref(self.model)


class FusedDecodeStep:
    """The fused counterpart of `GPT.decode_step` for one generation's KV cache, whose rows
    stay in place: a call names the cache rows it feeds.

        step = FusedDecodeStep(model, cache, bias)   # bias (N, H, 1, max_len), as Decoder's
        logits = step(tokens, rows)                  # (R,) each -> (R, V); cache.length += 1
        tokens, logprobs = step.sample(logits, uniform, rows, temperature, pad_id)  # (N,)
    """

    def __init__(self, model, cache, bias: torch.Tensor):
        if library() is None:
            raise RuntimeError(f"the fused decode step is not available: {_build_error}")
        # Packed anew for each generation (about 1 ms): the weights may have changed in place
        # since the last one, and not every optimiser bumps a tensor's version counter.
        self.packed = _Packed(model)
        self.cache, self.bias = cache, bias
        self.vocab = model.config.vocab_size
        if cache.k.stride() != cache.v.stride() or cache.k.stride(-1) != 1:
            raise ValueError("the KV cache's keys and values must share one layout")
        self.kv_strides = torch.tensor(cache.k.stride()[:4], dtype=torch.int64)
        self.work_stride = _lib.workspace_floats(model.config.n_embd,
                                                 self.packed.model.vocab_padded, cache.max_len)
        self.work = torch.empty(0)
        self.sample_work = torch.empty(2 * self.vocab)
        # The cache's tensors stay in place for the generation: their addresses, once.
        key_mask = cache.key_mask.view(torch.uint8)  # (N, max_len)
        self.cache_args = (cache.next_pos.data_ptr(), key_mask.data_ptr(), key_mask.stride(0),
                           cache.k.data_ptr(), cache.v.data_ptr(), self.kv_strides.data_ptr())
        self.bias_args = (bias.data_ptr(), bias.stride(0), bias.stride(1))

    def __call__(self, tokens: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """tokens (R,) int64 fed to cache rows `rows` (R,) int64 -> logits (R, V) float32."""
        cache, threads = self.cache, torch.get_num_threads()
        L = cache.length
        if L >= cache.max_len:
            raise ValueError(f"KVCache overflow: {L} filled + 1 new > max_len {cache.max_len}")
        if self.work.numel() < threads * self.work_stride:
            self.work = torch.empty(threads * self.work_stride)
        tokens, rows = tokens.contiguous(), rows.contiguous()
        logits = torch.empty(len(rows), self.vocab)  # (R, V)
        _lib.decode_step(self.packed.model_ref, len(rows), rows.data_ptr(), tokens.data_ptr(),
                         *self.cache_args, L, *self.bias_args, logits.data_ptr(),
                         self.work.data_ptr(), self.work_stride, threads)
        cache.length = L + 1
        return logits

    def sample(self, logits: torch.Tensor, uniform: torch.Tensor, rows: torch.Tensor,
               temperature: float, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        """`sample(logits, uniform, temperature, rows, pad_id)` for this generation's own
        logits (B, V) and rows (B,), without the checks: (N,) tokens and log-probs."""
        return _sample_rows(logits, uniform, temperature, rows, pad_id, self.sample_work)


def sample(logits: torch.Tensor, uniform: torch.Tensor, temperature: float,
           rows: torch.Tensor | None = None, pad_id: int = 0
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """`textenv.model.sample_from_logits(logits, temperature, uniform=uniform)` without
    top-k and top-p, in one call of the kernel library. The same distribution; a draw may
    differ from PyTorch's where float rounding moves the boundary between two tokens.

    logits (B, V) float32 on the CPU; temperature > 0; uniform (N,) in [0, 1), one per
    prompt row; rows (B,) int64: the prompt row of each row of logits (default: B = N, row
    b is prompt row b). -> tokens (N,) int64 and log-probs (N,) float32, pad_id and 0 at
    the prompt rows not in `rows` (as `Decoder.sample` returns them)."""
    if library() is None:
        raise RuntimeError(f"the fused decode library is not available: {_build_error}")
    if temperature <= 0:
        raise ValueError(f"sampling needs temperature > 0, got {temperature}")
    logits = logits.float().contiguous()
    uniform = uniform.float().contiguous()
    B, V = logits.shape
    N = len(uniform)
    rows = torch.arange(B) if rows is None else rows.contiguous()
    if len(rows) != B or (B and not 0 <= int(rows.min()) <= int(rows.max()) < N):
        raise ValueError(f"rows must be {B} prompt rows in [0, {N}), got {rows.tolist()}")
    return _sample_rows(logits, uniform, temperature, rows, pad_id, torch.empty(2 * V))


def _sample_rows(logits, uniform, temperature, rows, pad_id, work):
    """`sample` without its checks: logits (B, V) and uniform (N,) contiguous float32, rows
    (B,) contiguous int64 in [0, N), work (2V,) float32 scratch."""
    N = len(uniform)
    tokens = torch.empty(N, dtype=torch.int64)
    logprobs = torch.empty(N)
    _lib.sample_rows(logits.data_ptr(), len(rows), logits.shape[1], rows.data_ptr(),
                     uniform.data_ptr(), temperature, pad_id, N, tokens.data_ptr(),
                     logprobs.data_ptr(), work.data_ptr())
    return tokens, logprobs
