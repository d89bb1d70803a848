"""The decoding fast path: exact against the full forward, same samples with finished rows
dropped from the batch, and a sampler that draws from the right distribution."""

import numpy as np
import pytest
import torch
from conftest import left_padded, tiny_gpt
from scipy.stats import chisquare

from agents.rollout import collect_rollout, make_envs, prompt_ids_from_obs
from textenv.assets import ASSETS_DIR
from textenv.model import GPT, KVCache, sample_from_logits

TOL = 1e-5
tiny = tiny_gpt


# ---- logits: the decoding path equals the full forward -------------------------------------
@torch.no_grad()
def test_decode_step_equals_full_forward_with_padding():
    model = tiny()
    ids, mask = left_padded([5, 1, 7, 3], T=7)
    new = torch.randint(1, 17, (4, 9), generator=torch.Generator().manual_seed(2))
    full = model(torch.cat([ids, new], 1), torch.cat([mask, torch.ones_like(new, dtype=bool)], 1))
    cache = KVCache(model.config, 4, 16)
    model(ids, mask, kv_cache=cache)
    for t in range(new.shape[1]):
        logits = model.decode_step(new[:, t], cache)  # (B, V)
        assert (logits - full[:, 7 + t]).abs().max() <= TOL
    assert cache.length == 16 and cache.next_pos.tolist() == [14, 10, 16, 12]


@torch.no_grad()
def test_one_token_forward_with_masked_pads_equals_full_forward():
    """forward(T=1, kv_cache) takes the decoding path; masked pads in the middle of rows
    (a row that waits) are never attended to and take no position."""
    model = tiny(n_layer=3)
    ids, mask = left_padded([4, 2, 6], T=6)
    cache = KVCache(model.config, 3, 14)
    model(ids[:, :3], mask[:, :3], kv_cache=cache)  # a partial prefill, then the rest
    model(ids[:, 3:], mask[:, 3:], kv_cache=cache)
    g = torch.Generator().manual_seed(3)
    seqs = [ids[i][mask[i]].tolist() for i in range(3)]
    for _ in range(8):
        tok = torch.randint(1, 17, (3,), generator=g)
        real = torch.rand(3, generator=g) < 0.6  # (B,) False: this row feeds a masked pad
        logits = model(torch.where(real, tok, 0)[:, None], real[:, None], kv_cache=cache)[:, -1]
        for i in range(3):
            if real[i]:
                seqs[i].append(int(tok[i]))
                alone = model(torch.tensor([seqs[i]]))[0, -1]  # the row on its own
                assert (logits[i] - alone).abs().max() <= TOL
    assert cache.next_pos.tolist() == [len(s) for s in seqs]


@torch.no_grad()
def test_dropping_rows_keeps_the_other_rows_logits():
    model = tiny()
    ids, mask = left_padded([3, 5, 2, 4, 5], T=5)
    nxt = torch.randint(1, 17, (5, 2), generator=torch.Generator().manual_seed(4))
    cache = KVCache(model.config, 5, 8)
    model(ids, mask, kv_cache=cache)
    model.decode_step(nxt[:, 0], cache)
    # Keep rows 0, 3, 4 as the first three slots: row 3 moves into row 1's slot, 4 into 2's.
    cache.move_rows(torch.tensor([1, 2]), torch.tensor([3, 4]), 3)
    rows = torch.tensor([0, 3, 4])
    out = model.decode_step(nxt[rows, 1], cache)  # (3, V)
    full = model(torch.cat([ids, nxt], 1)[rows], torch.cat([mask, torch.ones(5, 2, dtype=bool)],
                                                            1)[rows])[:, -1]
    assert cache.batch_size == 3 and (out - full).abs().max() <= TOL


# ---- the sampler draws from the right distribution -----------------------------------------
def chi2_pvalue(tokens: torch.Tensor, probs: torch.Tensor) -> float:
    counts = torch.bincount(tokens, minlength=len(probs)).double()
    keep = probs > 0
    assert counts[~keep].sum() == 0, "a zero-probability token was sampled"
    expected = probs[keep].double() / probs[keep].double().sum() * len(tokens)
    return float(chisquare(counts[keep].numpy(), expected.numpy()).pvalue)


@pytest.mark.parametrize("temperature, top_k, top_p", [(1.0, None, None), (0.7, None, None),
                                                       (1.0, 4, None), (1.3, None, 0.8)])
def test_sampled_tokens_follow_the_filtered_distribution(temperature, top_k, top_p):
    """20k draws from one fixed categorical: a chi-squared test at p >= 1e-3 (a fixed seed,
    so the test cannot flake), and the log-probs are the filtered distribution's."""
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -0.5, -1.0, -2.0, -4.0, 1.5, 0.2])
    n = 20_000
    tok, lp = sample_from_logits(logits.expand(n, -1), temperature, top_k, top_p,
                                 generator=torch.Generator().manual_seed(123))
    scaled = logits / temperature
    keep = torch.ones(10, dtype=torch.bool)
    if top_k is not None:
        keep = scaled >= scaled.topk(top_k).values[-1]
    if top_p is not None:
        p, order = scaled.softmax(-1).sort(descending=True)
        keep = torch.zeros(10, dtype=torch.bool)
        keep[order[(p.cumsum(-1) - p) < top_p]] = True
    probs = torch.where(keep, scaled, float("-inf")).softmax(-1)
    assert chi2_pvalue(tok, probs) >= 1e-3
    assert (lp - probs.log()[tok]).abs().max() <= TOL


def test_sampler_uses_the_given_uniform_draws():
    probs = torch.tensor([[0.5, 0.0, 0.25, 0.25]])
    cases = {0.0: 0, 0.49: 0, 0.5: 2, 0.74: 2, 0.75: 3, 0.999999: 3}
    for u, want in cases.items():
        tok, lp = sample_from_logits(probs.log(), uniform=torch.tensor([u]))
        assert int(tok) == want and float(lp) == pytest.approx(float(probs[0, want].log()))


# ---- finished rows leave the batch; the samples stay the same ------------------------------
@torch.no_grad()
def reference_generate(model, ids, mask, max_new, eos, pad, temperature, generator):
    """The plain algorithm: every row in every step, each step a full forward over the whole
    prefix (no KV cache), one uniform draw per row per step."""
    B = ids.shape[0]
    out_ids = torch.full((B, max_new), pad)
    out_lp, alive_mask = torch.zeros(B, max_new), torch.zeros(B, max_new, dtype=torch.bool)
    seq, seq_mask = ids, mask.bool()
    done = torch.zeros(B, dtype=torch.bool)
    for t in range(max_new):
        logits = model(seq, seq_mask)[:, -1]  # (B, V)
        uniform = torch.rand(B, generator=generator)  # one draw per row, finished or not
        tok, lp = sample_from_logits(logits, temperature, uniform=uniform)
        alive = ~done
        out_ids[:, t] = torch.where(alive, tok, pad)
        out_lp[:, t] = torch.where(alive, lp, 0.0)
        alive_mask[:, t] = alive
        done = done | (alive & (tok == eos))
        if done.all():
            return out_ids[:, :t + 1], alive_mask[:, :t + 1], out_lp[:, :t + 1]
        seq = torch.cat([seq, out_ids[:, t:t + 1]], 1)
        seq_mask = torch.cat([seq_mask, alive[:, None]], 1)
    return out_ids, alive_mask, out_lp


@pytest.mark.parametrize("temperature", [1.0, 1.5])
def test_generate_equals_the_plain_algorithm(temperature):
    model = tiny()
    ids, mask = left_padded([3, 7, 1, 5, 6, 2, 7, 4] * 3, T=7, seed=5)  # 24 rows
    eos, pad = 3, 0  # eos ~1/16 per step: rows end at spread-out steps
    out = model.generate(ids, mask, 30, eos_id=eos, pad_id=pad, temperature=temperature,
                         generator=torch.Generator().manual_seed(9))
    r_ids, r_mask, r_lp = reference_generate(model, ids, mask, 30, eos, pad, temperature,
                                             torch.Generator().manual_seed(9))
    ends = out["response_mask"].sum(1)
    assert len(set(ends.tolist())) > 5  # rows really left the batch at many steps
    assert torch.equal(out["response_ids"], r_ids)
    assert torch.equal(out["response_mask"], r_mask)
    assert (out["logprobs"] - r_lp).abs().max() <= TOL


@torch.no_grad()
def reference_rollout(envs, policy, prompts, max_new, temperature, generator, pad):
    """collect_rollout's plain algorithm: every env row in every forward (finished rows feed
    masked pads), one uniform draw per row per step."""
    obs, _ = envs.reset(options={"prompts": list(prompts)})
    ids, mask = prompt_ids_from_obs(obs, pad)
    n = ids.shape[0]
    cache = KVCache(policy.config, n, ids.shape[1] + max_new)
    logits = policy(ids, mask, kv_cache=cache)[:, -1]
    toks, lps, masks, scores = [], [], [], torch.zeros(n)
    done = torch.zeros(n, dtype=torch.bool)
    for _ in range(max_new):
        uniform = torch.rand(n, generator=generator)  # one draw per row, finished or not
        tok, lp = sample_from_logits(logits, temperature, uniform=uniform)
        tok = torch.where(done, pad, tok)
        toks.append(tok), lps.append(torch.where(done, 0.0, lp)), masks.append(~done)
        _, reward, terminated, _, _ = envs.step(tok.numpy())
        finished = torch.as_tensor(terminated) & ~done
        scores[finished] = torch.as_tensor(reward, dtype=torch.float32)[finished]
        done |= finished
        if done.all():
            break
        logits = policy(tok[:, None], (~done)[:, None], kv_cache=cache)[:, -1]
    return torch.stack(toks, 1), torch.stack(masks, 1), torch.stack(lps, 1), scores


def test_rollout_equals_the_plain_algorithm():
    policy = GPT.load(ASSETS_DIR, "sft")
    envs = make_envs(16, reward="gold", max_new_tokens=20, assets_dir=ASSETS_DIR)
    tokenizer = envs.unwrapped.tokenizer
    rng = np.random.default_rng(0)
    task = envs.unwrapped.task
    prompts = [task.sample_prompt(rng, "train") for _ in range(16)]
    ro = collect_rollout(envs, policy, prompts, max_new_tokens=20, temperature=1.0,
                         generator=torch.Generator().manual_seed(1), pad_id=tokenizer.pad_id)
    ids, mask, lp, scores = reference_rollout(envs, policy, prompts, 20, 1.0,
                                              torch.Generator().manual_seed(1), tokenizer.pad_id)
    envs.close()
    assert len(set(ro.response_mask.sum(1).tolist())) > 3  # rows ended at different steps
    assert torch.equal(ro.response_ids, ids) and torch.equal(ro.response_mask, mask)
    assert torch.equal(ro.scores, scores)
    real = ro.response_mask
    assert (ro.sample_logprobs[real] - lp[real]).abs().max() <= TOL
    assert (ro.sample_logprobs[~real] == 0).all()


@torch.no_grad()
def test_masked_pad_rows_are_not_computed():
    model = tiny()
    ids, mask = left_padded([3, 4, 2], T=4)
    cache = KVCache(model.config, 3, 6)
    model(ids, mask, kv_cache=cache)
    real = torch.tensor([True, False, True])
    logits = model(torch.tensor([[5], [0], [6]]), real[:, None], kv_cache=cache)[:, -1]
    assert torch.equal(logits[1], model.lm_head(torch.zeros(16)))  # a zero hidden state
    assert cache.key_mask[:, 4].tolist() == [True, False, True]
    assert cache.next_pos.tolist() == [4, 4, 3]
