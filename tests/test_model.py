import json

import pytest
import torch
import torch.nn.functional as F
from conftest import left_padded, tiny_gpt

from textenv.model import GPT, KVCache, sample_from_logits

TOL = 1e-5


def tiny(**kw) -> GPT:
    return tiny_gpt(**{"block_size": 24, **kw})  # the length tests below rely on 24


def test_cached_decoding_matches_full_forward():
    model = tiny()
    ids, mask = left_padded([5, 2, 7], T=7)
    new = torch.randint(1, 17, (3, 6), generator=torch.Generator().manual_seed(2))
    full_ids = torch.cat([ids, new], 1)
    full_mask = torch.cat([mask, torch.ones_like(new)], 1)
    with torch.no_grad():
        full = model(full_ids, full_mask)  # (B, 13, V)
        cache = KVCache(model.config, 3, max_len=13)
        step = [model(ids, mask, kv_cache=cache)]
        for t in range(new.shape[1]):
            step.append(model(new[:, t:t + 1], torch.ones(3, 1), kv_cache=cache))
    inc = torch.cat(step, 1)
    real = full_mask.bool()
    assert cache.length == 13
    assert (inc - full)[real].abs().max() <= TOL
    assert torch.isfinite(inc).all() and torch.isfinite(full).all()  # pad queries: no NaN


def test_cache_chunked_prefill_and_reset():
    model = tiny()
    ids, mask = left_padded([6, 3], T=6)
    with torch.no_grad():
        full = model(ids, mask)
        cache = KVCache(model.config, 2)
        a = model(ids[:, :4], mask[:, :4], kv_cache=cache)
        b = model(ids[:, 4:], mask[:, 4:], kv_cache=cache)
        assert (torch.cat([a, b], 1) - full)[mask.bool()].abs().max() <= TOL
        cache.reset()
        again = model(ids, mask, kv_cache=cache)
    assert torch.allclose(again, full, atol=TOL)


def test_cache_select_keeps_rows():
    model = tiny()
    ids, mask = left_padded([4, 2, 3], T=4)
    nxt = torch.tensor([[3], [5], [7]])
    with torch.no_grad():
        cache = KVCache(model.config, 3)
        model(ids, mask, kv_cache=cache)
        cache.select(torch.tensor([2, 0]))
        out = model(nxt[[2, 0]], kv_cache=cache)[:, -1]
        ref = model(torch.cat([ids, nxt], 1)[[2, 0]],
                    torch.cat([mask, torch.ones(3, 1, dtype=torch.long)], 1)[[2, 0]])[:, -1]
    assert (out - ref).abs().max() <= TOL


def test_padding_invariance_left_and_right():
    model = tiny()
    ids, mask = left_padded([3, 6, 1], T=6)
    with torch.no_grad():
        batch = model(ids, mask)
        for i in range(3):
            real = mask[i].bool()
            alone = model(ids[i:i + 1, real])[0]  # (n, V)
            assert (batch[i, real] - alone).abs().max() <= TOL
            # Right padding: same real tokens first, pads after.
            n = int(real.sum())
            r_ids = torch.zeros(1, 6, dtype=torch.long)
            r_ids[0, :n] = ids[i, real]
            r_mask = (torch.arange(6) < n).long()[None]
            right = model(r_ids, r_mask)[0, :n]
            assert (right - alone).abs().max() <= TOL
    # bool masks behave like 0/1 masks
    assert torch.equal(model(ids, mask.bool()), batch)


def test_trunk_readout_equals_full_trunk_at_those_positions():
    """readout: the last block computes one position per row, with holes in the mask too."""
    model = tiny(n_layer=3)
    ids, mask = left_padded([3, 6, 1, 5], T=6)
    mask[3, 2] = 0  # a hole inside a row
    readout = torch.tensor([5, 2, 5, 4])
    with torch.no_grad():
        full = model.trunk(ids, mask)  # (B, T, C)
        picked = model.trunk(ids, mask, readout=readout)  # (B, C)
    assert picked.shape == (4, 16)
    assert (picked - full[torch.arange(4), readout]).abs().max() <= TOL
    with pytest.raises(ValueError, match="readout and kv_cache"):
        model.trunk(ids, mask, readout=readout, kv_cache=KVCache(model.config, 4, 12))


def test_token_logprobs_matches_log_softmax_and_temperature():
    model = tiny()
    ids, mask = left_padded([5, 3], T=5)
    with torch.no_grad():
        logits = model(ids, mask)
        for temp in (1.0, 0.7):
            ref = F.log_softmax(logits[:, :-1] / temp, -1).gather(-1, ids[:, 1:, None])[..., 0]
            got = model.token_logprobs(ids, mask, temperature=temp)
            assert got.shape == (2, 4)
            assert (got - ref).abs().max() <= TOL
        assert not torch.allclose(model.token_logprobs(ids, mask, 0.5),
                                  model.token_logprobs(ids, mask, 2.0))


def test_generate_shapes_eos_and_logprobs():
    model = tiny()
    eos, pad = 1, 0
    ids, mask = left_padded([4, 2, 3], T=4)
    out = model.generate(ids, mask, 8, eos_id=eos, pad_id=pad, temperature=1.3,
                         generator=torch.Generator().manual_seed(0))
    r, m, lp = out["response_ids"], out["response_mask"], out["logprobs"]
    B, N = r.shape
    assert B == 3 and 1 <= N <= 8 and r.dtype == torch.int64 and m.dtype == torch.bool
    assert m.shape == lp.shape == r.shape
    for i in range(B):
        hits = (r[i] == eos).nonzero()
        end = int(hits[0]) + 1 if len(hits) and m[i, int(hits[0])] else N
        assert m[i, :end].all() and not m[i, end:].any()
        assert (r[i, end:] == pad).all() and (lp[i, end:] == 0).all()
    if N < 8:  # stopped early => every row emitted eos
        assert all((r[i][m[i]] == eos).any() for i in range(B))
    # Logprobs agree with a recomputation on prompt + response at the same temperature.
    full = torch.cat([ids, r], 1)
    full_mask = torch.cat([mask.bool(), m], 1)
    re = model.token_logprobs(full, full_mask, temperature=1.3)[:, ids.shape[1] - 1:]
    assert (re[m] - lp[m]).abs().max() <= TOL


def chain_model(next_token: dict[int, int]) -> GPT:
    """A GPT whose greedy next token depends only on the current one: blocks add nothing,
    embeddings are one-hot, and lm_head scores next_token[x] highest after x."""
    model = tiny(n_embd=32, tie_embeddings=False)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("blocks.") and ("proj" in name or "mlp.2" in name):
                p.zero_()  # each block's residual branch outputs 0
        model.pos_emb.weight.zero_()
        model.tok_emb.weight.copy_(torch.eye(17, 32))
        model.lm_head.weight.zero_()
        for x, y in next_token.items():
            model.lm_head.weight[y, x] = 10.0
    return model


def test_generate_eos_then_pad():
    # Row 0 (prompt ends in 2) emits eos at step 1, row 1 (ends in 3) at step 3.
    model = chain_model({2: 5, 5: 1, 3: 6, 6: 7, 7: 8, 8: 1})
    ids = torch.tensor([[0, 4, 2], [4, 4, 3]])
    mask = torch.tensor([[0, 1, 1], [1, 1, 1]])
    out = model.generate(ids, mask, 10, eos_id=1, pad_id=0, temperature=0.0)
    assert out["response_ids"].tolist() == [[5, 1, 0, 0], [6, 7, 8, 1]]
    assert out["response_mask"].tolist() == [[True, True, False, False], [True] * 4]
    assert (out["logprobs"] == 0).all()  # greedy => logprob 0


def test_generate_seed_determinism_and_filters():
    model = tiny()
    ids, mask = left_padded([3, 4], T=4)
    kw = {"eos_id": 1, "pad_id": 0, "temperature": 0.9, "top_k": 5, "top_p": 0.9}
    a = model.generate(ids, mask, 6, generator=torch.Generator().manual_seed(7), **kw)
    b = model.generate(ids, mask, 6, generator=torch.Generator().manual_seed(7), **kw)
    for k in a:
        assert torch.equal(a[k], b[k])
    assert (a["logprobs"] <= 0).all()


def test_generate_too_long_raises():
    model = tiny()
    ids, mask = left_padded([4], T=4)
    with pytest.raises(ValueError, match="block_size"):
        model.generate(ids, mask, 30, eos_id=1, pad_id=0)
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, 25, dtype=torch.long))


def test_sample_from_logits_greedy_topk_topp():
    torch.manual_seed(0)
    logits = torch.randn(4, 10)
    tok, lp = sample_from_logits(logits, temperature=0.0)
    assert torch.equal(tok, logits.argmax(-1)) and (lp == 0).all()
    g = torch.Generator().manual_seed(0)
    tok, lp = sample_from_logits(logits, top_k=1, generator=g)
    assert torch.equal(tok, logits.argmax(-1)) and lp.abs().max() < 1e-6
    # probs 0.5, 0.3, 0.15, 0.05: top_p=0.7 keeps {0, 1} (0.5 < 0.7 <= 0.8).
    p = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    seen = set()
    for s in range(200):
        t, lp = sample_from_logits(p.log(), top_p=0.7, generator=torch.Generator().manual_seed(s))
        seen.add(int(t))
        assert abs(float(lp) - float(torch.log(p[0, t] / 0.8))) < 1e-5
    assert seen == {0, 1}
    t, _ = sample_from_logits(p.log(), top_p=0.5)  # 0.5 alone already reaches p
    assert int(t) == 0


def test_save_load_roundtrip(tmp_path):
    for tie in (True, False):
        model = tiny(tie_embeddings=tie)
        model.save(tmp_path, f"m{tie}")
        loaded = GPT.load(tmp_path, f"m{tie}")
        assert not loaded.training and loaded.config == model.config
        sd, ld = model.state_dict(), loaded.state_dict()
        assert sd.keys() == ld.keys() and all(torch.equal(sd[k], ld[k]) for k in sd)
        ids, mask = left_padded([3, 5], T=5)
        assert torch.equal(model(ids, mask), loaded(ids, mask))
        if tie:
            assert loaded.lm_head.weight is loaded.tok_emb.weight
    assert not list(tmp_path.glob("*.tmp"))


def test_load_errors_name_the_file(tmp_path):
    model = tiny()
    model.save(tmp_path, "m")
    with pytest.raises(FileNotFoundError, match="nope.json"):
        GPT.load(tmp_path, "nope")
    # config/weights mismatch: bump n_embd in the json
    cfg = json.loads((tmp_path / "m.json").read_text())
    (tmp_path / "m.json").write_text(json.dumps({**cfg, "n_embd": 32}))
    expected = r"m\.safetensors.*tok_emb\.weight.*\(17, 16\).*\(17, 32\)"
    with pytest.raises(ValueError, match=expected):
        GPT.load(tmp_path, "m")
    # extra layer in config => missing tensor
    (tmp_path / "m.json").write_text(json.dumps({**cfg, "n_layer": 3}))
    with pytest.raises(ValueError, match=r"m\.safetensors.*missing tensor 'blocks\.2"):
        GPT.load(tmp_path, "m")
    # untied config => unexpected lm_head missing
    (tmp_path / "m.json").write_text(json.dumps({**cfg, "tie_embeddings": False}))
    with pytest.raises(ValueError, match=r"m\.safetensors.*lm_head\.weight"):
        GPT.load(tmp_path, "m")
    (tmp_path / "m.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"m\.json"):
        GPT.load(tmp_path, "m")
    (tmp_path / "m.json").write_text(json.dumps(cfg))
    (tmp_path / "m.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ValueError, match=r"m\.safetensors"):
        GPT.load(tmp_path, "m")
    (tmp_path / "m.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"m\.safetensors"):
        GPT.load(tmp_path, "m")
