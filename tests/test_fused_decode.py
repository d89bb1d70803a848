"""The fused CPU decode step (textenv.fused_decode): the same logits as the full forward, the
same results whatever the batch and the thread count, a sampler that draws from the right
distribution, and a decoder that falls back to PyTorch, saying why, where the kernel does
not apply or cannot be built."""

import copy
import os
import stat

import pytest
import torch
from conftest import left_padded, tiny_gpt
from test_decode import chi2_pvalue

import textenv.fused_decode as fd
from textenv.assets import ASSETS_DIR, load_reference
from textenv.model import Decoder

TOL = 1e-5
needs_kernel = pytest.mark.skipif(fd.library() is None,
                                  reason=f"fused decode kernel unavailable: {fd.build_error()}")


def decode_all(model, ids, mask, steps, fused, finish_every=5, threads=None, fed=None):
    """Feed random tokens (or `fed` (N, steps)) for `steps` steps, finishing some rows as it
    goes. -> the logits of every live row at every step, (steps, N, V) with NaN on finished
    rows, and the fed tokens (N, steps)."""
    N = ids.shape[0]
    if fed is None:
        g = torch.Generator().manual_seed(7)
        fed = torch.randint(1, model.config.vocab_size, (N, steps), generator=g)
    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        dec = Decoder(model, ids, mask, steps + 1, pad_id=0, fused=fused)
        assert (dec.fused is not None) == fused
        out = torch.full((steps, N, model.config.vocab_size), float("nan"))
        done = torch.zeros(N, dtype=torch.bool)
        for t in range(steps):
            finished = ~done & ((torch.arange(N) + t) % finish_every == 0) & (t > 0)
            done |= finished
            if not dec.advance(fed[:, t], finished):
                break
            out[t, dec.rows] = dec.logits
    finally:
        torch.set_num_threads(old)
    return out, fed


def full_forward_logits(model, ids, mask, fed, t):
    """Logits after feeding fed[:, :t + 1] to every row, by the full forward (no cache)."""
    seq = torch.cat([ids, fed[:, :t + 1]], 1)
    seq_mask = torch.cat([mask, torch.ones(ids.shape[0], t + 1, dtype=torch.bool)], 1)
    return model(seq, seq_mask)[:, -1]


@pytest.fixture(scope="module")
def other_width_kernel(tmp_path_factory):
    """The kernel built for the SIMD width this CPU does not use (16 floats on an AVX2 CPU,
    where GCC splits each vector in two; 8 on an AVX-512 CPU), so that both widths' code
    is tested on any machine."""
    other = 8 if fd.library().simd_width() == 16 else 16
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fd, "FLAGS", [*fd.FLAGS, f"-DVW={other}", "-Wno-psabi"])
        mp.setattr(fd, "_lib", None)
        mp.setattr(fd, "_build_error", None)
        mp.setenv("TEXTENV_CACHE_DIR", str(tmp_path_factory.mktemp("kernel")))
        lib = fd.library()
    assert lib is not None and lib.simd_width() == other, fd.build_error()
    return lib


@pytest.fixture(params=["native width", "other width"])
def kernel(request, monkeypatch):
    if request.param == "other width":
        monkeypatch.setattr(fd, "_lib", request.getfixturevalue("other_width_kernel"))
    return fd.library()


@needs_kernel
@torch.no_grad()
@pytest.mark.parametrize("cfg", [
    dict(n_embd=16, n_head=2, n_layer=2),    # head_dim 8
    dict(n_embd=96, n_head=4, n_layer=2),    # head_dim 24: not whole SIMD vectors
    dict(n_embd=32, n_head=2, bias=False, tie_embeddings=False),  # no biases, own lm_head
    dict(n_embd=128, n_head=4, n_layer=3),   # the shipped policies' shape
])
def test_fused_logits_equal_the_full_forward(cfg, kernel):
    model = tiny_gpt(**cfg)
    with torch.no_grad():  # weights of a trained model's scale, not the init's 0.02
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    ids, mask = left_padded([5, 1, 7, 3, 7, 2, 6, 4, 7], T=7)
    out, fed = decode_all(model, ids, mask, steps=12, fused=True, finish_every=13)
    checked = 0
    for t in range(12):
        live = ~out[t, :, 0].isnan()
        if live.any():
            want = full_forward_logits(model, ids, mask, fed, t)[live]
            assert (out[t, live] - want).abs().max() <= TOL, t
            checked += int(live.sum())
    assert checked > 60 and out[-1, :, 0].isnan().any()  # rows did finish along the way


@needs_kernel
@torch.no_grad()
def test_fused_logits_of_the_shipped_policy_are_as_exact_as_pytorchs(kernel):
    """The shipped policy's logits reach ~20, where float32's own rounding is ~1e-5: against
    the same model in float64, the fused steps stray no further than 1e-5, and no further
    than PyTorch's float32 full forward does."""
    policy = load_reference(ASSETS_DIR).eval()
    exact = copy.deepcopy(policy).double()
    ids, mask = left_padded([9, 4, 12, 7] * 8, T=12, vocab=policy.config.vocab_size)
    fused, fed = decode_all(policy, ids, mask, steps=20, fused=True, finish_every=23)
    fused_err = full_err = 0.0
    for t in range(20):
        live = ~fused[t, :, 0].isnan()
        if live.any():
            want = full_forward_logits(exact, ids, mask, fed, t)[live]
            fused_err = max(fused_err, float((fused[t, live] - want).abs().max()))
            full = full_forward_logits(policy, ids, mask, fed, t)[live]
            full_err = max(full_err, float((full - want).abs().max()))
    assert fused_err <= TOL and fused_err <= full_err, (fused_err, full_err)


@needs_kernel
@torch.no_grad()
def test_fused_results_do_not_depend_on_the_batch_or_the_threads():
    """Each row is computed by one thread with the same code, whatever the tiles: a row's
    decode steps give bit for bit the same logits at 1 and at 2 threads, and alone the same
    up to the prefill's rounding (PyTorch's, which may depend on the batch)."""
    model = tiny_gpt(n_embd=64, n_head=4)
    ids, mask = left_padded([6, 3, 7, 5] * 75, T=7)  # 300 rows: several tiles per thread
    batch_1t, fed = decode_all(model, ids, mask, steps=6, fused=True, threads=1)
    batch_2t, _ = decode_all(model, ids, mask, steps=6, fused=True, threads=2)
    alone, _ = decode_all(model, ids[5:6], mask[5:6], steps=6, fused=True,
                          finish_every=10**6, fed=fed[5:6])
    assert torch.equal(batch_1t.isnan(), batch_2t.isnan())
    assert torch.equal(batch_1t.nan_to_num(0.0), batch_2t.nan_to_num(0.0))
    live = ~batch_1t[:, 5, 0].isnan()
    assert live.sum() >= 3
    assert (batch_1t[live, 5] - alone[live, 0]).abs().max() <= 1e-6


@needs_kernel
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_fused_sampler_follows_the_distribution(temperature, kernel):
    """20k draws from one categorical with a banned (-inf) token: chi-squared at p >= 1e-3
    (fixed seed), the banned token never drawn, and the log-probs exact."""
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -0.5, float("-inf"), -2.0, -4.0, 1.5, 0.2])
    n = 20_000
    uniform = torch.rand(n, generator=torch.Generator().manual_seed(123))
    tok, lp = fd.sample(logits.expand(n, -1), uniform, temperature)
    probs = (logits / temperature).softmax(-1)
    assert chi2_pvalue(tok, probs) >= 1e-3
    assert (lp - probs.log()[tok]).abs().max() <= TOL


@needs_kernel
def test_fused_sampler_inverts_the_cdf_at_the_given_draws(kernel):
    probs = torch.tensor([[0.5, 0.0, 0.25, 0.25]])
    cases = {0.0: 0, 0.49: 0, 0.5: 2, 0.74: 2, 0.75: 3, 0.999999: 3}
    for u, want in cases.items():
        tok, lp = fd.sample(probs.log(), torch.tensor([u]), 1.0)
        assert int(tok) == want and float(lp) == pytest.approx(float(probs[0, want].log()))
    with pytest.raises(ValueError, match="temperature > 0"):
        fd.sample(probs.log(), torch.tensor([0.5]), 0.0)


@needs_kernel
def test_the_decoder_says_when_the_fused_step_does_not_apply(monkeypatch):
    model = tiny_gpt()
    ids, mask = left_padded([3, 5], T=5)
    with torch.no_grad():
        assert Decoder(model, ids, mask, 4, pad_id=0).fused is not None  # the default
        assert Decoder(model, ids, mask, 4, pad_id=0, fused=False).fused is None
        monkeypatch.setenv("TEXTENV_FUSED_DECODE", "0")
        assert Decoder(model, ids, mask, 4, pad_id=0).fused is None
        with pytest.raises(ValueError, match="TEXTENV_FUSED_DECODE=0"):
            Decoder(model, ids, mask, 4, pad_id=0, fused=True)
        monkeypatch.delenv("TEXTENV_FUSED_DECODE")
        assert "float32" in fd.unusable_reason(tiny_gpt().double())
        dropout = tiny_gpt(dropout=0.1).train()
        assert "training mode" in fd.unusable_reason(dropout)
    assert "torch.no_grad" in fd.unusable_reason(model)  # gradients on: PyTorch decodes
    assert Decoder(model, ids, mask, 4, pad_id=0).fused is None


def _fresh_build(monkeypatch, tmp_path, compiler):
    """library() as on a machine that never built the kernel, with `compiler` as $CC."""
    monkeypatch.setattr(fd, "_lib", None)
    monkeypatch.setattr(fd, "_build_error", None)
    monkeypatch.setenv("CC", str(compiler))
    monkeypatch.setenv("TEXTENV_CACHE_DIR", str(tmp_path / "cache"))


@torch.no_grad()
def test_without_a_compiler_the_decoder_warns_and_uses_pytorch(monkeypatch, tmp_path):
    model = tiny_gpt()
    ids, mask = left_padded([3, 5, 2], T=5)
    want = model.generate(ids, mask, 6, eos_id=3, pad_id=0, fused=False,
                          generator=torch.Generator().manual_seed(1))
    _fresh_build(monkeypatch, tmp_path, tmp_path / "no-such-cc")
    with pytest.warns(RuntimeWarning, match="fused decode step is off.*no-such-cc"):
        assert Decoder(model, ids, mask, 4, pad_id=0).fused is None
    assert "no-such-cc" in fd.build_error()
    got = model.generate(ids, mask, 6, eos_id=3, pad_id=0,
                         generator=torch.Generator().manual_seed(1))
    assert torch.equal(got["response_ids"], want["response_ids"])
    assert not list((tmp_path / "cache").glob("*.so*"))  # nothing half-built left behind


def test_a_failing_build_reports_the_compilers_message(monkeypatch, tmp_path):
    cc = tmp_path / "cc"
    cc.write_text("#!/bin/sh\necho 'fused_decode.c:1: error: something is wrong' >&2\nexit 1\n")
    cc.chmod(cc.stat().st_mode | stat.S_IEXEC)
    _fresh_build(monkeypatch, tmp_path, cc)
    with pytest.warns(RuntimeWarning, match="something is wrong"):
        assert fd.library() is None
    assert "fused_decode.c:1: error: something is wrong" in fd.build_error()
    assert not list((tmp_path / "cache").glob("*"))


def test_no_compiler_on_the_path_or_no_source_is_reported(monkeypatch, tmp_path):
    _fresh_build(monkeypatch, tmp_path, "unused")
    monkeypatch.delenv("CC")
    monkeypatch.setenv("PATH", str(tmp_path))  # no cc, no gcc
    with pytest.warns(RuntimeWarning, match="no C compiler found"):
        assert fd.library() is None
    _fresh_build(monkeypatch, tmp_path, "cc")
    monkeypatch.setattr(fd, "SOURCE", tmp_path / "missing.c")  # a packaging mistake
    with pytest.warns(RuntimeWarning, match="missing.c"):
        assert fd.library() is None


@needs_kernel
def test_the_kernel_is_built_once_per_source_and_cpu(monkeypatch, tmp_path):
    _fresh_build(monkeypatch, tmp_path, os.environ.get("CC") or "cc")
    assert fd.library() is not None
    built = list((tmp_path / "cache").glob("fused_decode-*.so"))
    assert len(built) == 1
    first = built[0].stat().st_mtime_ns
    monkeypatch.setattr(fd, "_lib", None)  # a new process: finds the built file
    assert fd.library() is not None
    assert built[0].stat().st_mtime_ns == first
    assert list((tmp_path / "cache").glob("*")) == built


@needs_kernel
def test_fused_sampler_writes_each_prompt_row_and_pads_the_rest():
    logits = torch.tensor([[0.0, 9.0, 0.0], [9.0, 0.0, 0.0]]).log_softmax(-1)  # rows 3 and 0
    uniform = torch.tensor([0.5, 0.9, 0.9, 0.5])  # one per prompt row
    tokens, logprobs = fd.sample(logits, uniform, 1.0, rows=torch.tensor([3, 0]), pad_id=7)
    assert tokens.tolist() == [0, 7, 7, 1]
    assert logprobs[1:3].tolist() == [0.0, 0.0] and (logprobs[[0, 3]] < 0).all()
    with pytest.raises(ValueError, match=r"prompt rows in \[0, 4\)"):
        fd.sample(logits, uniform, 1.0, rows=torch.tensor([3, 4]))
