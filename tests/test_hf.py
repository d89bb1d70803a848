"""Hugging Face models as policy, reference and reward model (textenv/hf.py), with a tiny
GPT-2 and a word-level tokenizer over the reviews vocabulary, created and saved here."""

from __future__ import annotations

import json
import math
import sys
from dataclasses import replace

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from conftest import left_padded  # noqa: E402

from agents import ALGORITHMS  # noqa: E402
from reward_models.data import read_preferences  # noqa: E402
from reward_models.train import RMTrainConfig, train_reward_model  # noqa: E402
from textenv.assets import ASSETS_DIR, load_policy, load_reference, load_tokenizer  # noqa: E402
from textenv.decoding import IncrementalDecoder  # noqa: E402
from textenv.hf import HFCausalLM, HFRewardModel, HFTokenizer  # noqa: E402
from textenv.model import KVCache  # noqa: E402
from textenv.rewards import load_reward_model  # noqa: E402
from textenv.storage import Checkpoints, load_tensors  # noqa: E402
from textenv.tokenizer import load_tokenizer_file  # noqa: E402
from textenv.wrappers import KLPenalty  # noqa: E402


def save_tiny_hf_assets(directory):
    """directory/sft (GPT-2 LM) and directory/reward (GPT-2, one label), each with a word-level
    tokenizer over the reviews words (same ids as the shipped tokenizer)."""
    words = load_tokenizer_file(ASSETS_DIR / "tokenizer.json").itos
    wl = tokenizers.Tokenizer(tokenizers.models.WordLevel({w: i for i, w in enumerate(words)},
                                                          unk_token="<unk>"))
    wl.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=wl, pad_token="<pad>",
                                               bos_token="<bos>", eos_token="<eos>",
                                               unk_token="<unk>")
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=32, vocab_size=len(words),
                                     n_positions=128, bos_token_id=1, eos_token_id=2,
                                     pad_token_id=0)
    transformers.GPT2LMHeadModel(config).save_pretrained(directory / "sft")
    tok.save_pretrained(directory / "sft")
    config.num_labels = 1
    transformers.GPT2ForSequenceClassification(config).save_pretrained(directory / "reward")
    tok.save_pretrained(directory / "reward")
    return directory


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    return save_tiny_hf_assets(tmp_path_factory.mktemp("hf_assets"))


def test_tokenizer_adapter_matches_the_word_tokenizer(hf_dir):
    tok, word = load_tokenizer(hf_dir), load_tokenizer_file(ASSETS_DIR / "tokenizer.json")
    assert isinstance(tok, HFTokenizer) and tok.vocab_size == word.vocab_size
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
    text = " ".join(word.itos[4:12]) + " <eos>"
    assert tok.encode(text) == word.encode(text)
    ids = [tok.bos_id] + tok.encode(text) + [tok.pad_id]
    assert tok.decode(ids) == word.decode(ids) == text  # pad, bos dropped; <eos> kept


def test_tokenizer_without_distinct_specials_is_refused():
    wl = tokenizers.Tokenizer(tokenizers.models.WordLevel({"<e>": 0, "a": 1}, unk_token="<e>"))
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=wl, eos_token="<e>")
    with pytest.raises(ValueError, match="no pad / bos token"):
        HFTokenizer(tok)


def test_incremental_decoding_equals_the_full_forward_with_padding(hf_dir):
    model = load_policy("sft", hf_dir)
    assert isinstance(model, HFCausalLM)
    V = model.config.vocab_size
    ids, mask = left_padded([3, 7, 5], 7, vocab=V)  # (3, 7) left-padded prompts
    new = torch.randint(4, V, (3, 4), generator=torch.Generator().manual_seed(2))  # (3, 4)
    with torch.no_grad():
        full = model(torch.cat([ids, new], 1), torch.cat([mask, torch.ones_like(new, dtype=bool)],
                                                         1))[:, -5:]  # (3, 5, V)
        cache = KVCache(model.config, 3, 11)
        steps = [model(ids, mask, kv_cache=cache)[:, -1]]
        steps += [model.decode_step(new[:, t], cache) for t in range(4)]
    assert (torch.stack(steps, 1) - full).abs().max() < 1e-5
    # A row alone gives the same logits as inside the left-padded batch.
    with torch.no_grad():
        alone = model(ids[:1, -3:], mask[:1, -3:])[:, -1]
    assert (alone - full[:1, 0]).abs().max() < 1e-5
    # The env-side decoder (right-padded rows, one token more per call) agrees too.
    rows = np.zeros((3, 12), dtype=np.int64)
    total = mask.sum(1).numpy()
    for i in range(3):
        rows[i, :total[i]] = ids[i, mask[i]].numpy()
    dec = IncrementalDecoder(model, 3, 20)
    dec.advance(rows, total, np.ones(3, bool), np.zeros(3, bool), np.ones(3, bool), 0)
    for t in range(4):
        rows[np.arange(3), total] = new[:, t].numpy()
        total = total + 1
        out = dec.advance(rows, total, np.zeros(3, bool), np.ones(3, bool), np.ones(3, bool), 0)
        assert (out - full[:, t + 1]).abs().max() < 1e-5


def test_env_with_hf_reference_and_reward_model_passes_check_env(hf_dir):
    env = gym.make("TextGen-v0", task="reviews", assets_dir=hf_dir, max_new_tokens=8)
    check_env(env.unwrapped, skip_render_check=True)
    rm = load_reward_model(hf_dir.resolve())
    assert isinstance(rm, HFRewardModel)
    env = KLPenalty(gym.make("TextGen-v0", task="reviews", assets_dir=hf_dir, max_new_tokens=8))
    reference = env.reference_tracker.reference
    assert isinstance(reference, HFCausalLM) and reference is load_reference(hf_dir)
    obs, _ = env.reset(seed=0)
    assert isinstance(obs, np.ndarray) and obs.dtype == np.int64
    done, rng = False, np.random.default_rng(0)
    while not done:
        obs, reward, terminated, truncated, info = env.step(int(rng.integers(4, 50)))
        assert isinstance(obs, np.ndarray) and math.isfinite(reward)
        assert math.isfinite(info["ref_logprob"])
        done = terminated or truncated
    prompt, response = info["prompt"], info["response"]
    # The env's score (from ids) is the reward model's score of the text.
    assert abs(info["reward_model_score"] - rm.score([prompt], [response]).item()) < 1e-5


@pytest.mark.parametrize("algo", list(ALGORITHMS))
def test_agents_train_an_hf_policy(hf_dir, tmp_path, algo):
    cls, train = ALGORITHMS[algo]
    extra = {"n": 4} if algo == "best-of-n" else {}
    if algo == "sb3-ppo":
        extra = {"n_envs": 2, "n_steps": 16, "batch_size": 16, "n_epochs": 1,
                 "total_env_steps": 64}
    cfg = replace(cls(), **{**dict(run_dir=str(tmp_path / algo), assets_dir=str(hf_dir),
                                   num_envs=8, max_new_tokens=12, eval_samples=1, eval_every=0,
                                   threads=1, progress=False, tensorboard=False,
                                   total_env_steps=2 * 8 * 12), **extra})
    result = train(cfg)
    final = result["final"]
    # Scored by the HF reward model (a random head: small, never exactly 0 like gold here).
    assert math.isfinite(final["eval/reward_mean"]) and final["eval/reward_mean"] != 0.0
    assert math.isfinite(final["eval/kl"])
    if algo != "best-of-n":  # (it samples the reference itself: no training)
        assert final["eval/kl"] != 0.0  # the policy moved away from the reference
    if algo not in ("best-of-n", "sb3-ppo"):
        weights = load_tensors(Checkpoints(tmp_path / algo).latest() / "model.safetensors")
        assert any(".hf.transformer.h.0." in k for k in weights)  # the GPT-2 was trained


def test_reward_model_training_on_jsonl_rankings_changes_scores(hf_dir, tmp_path):
    tok = load_tokenizer(hf_dir)
    words = load_tokenizer_file(ASSETS_DIR / "tokenizer.json").itos[4:]
    good, bad = words[:3], words[3:6]
    rng = np.random.default_rng(0)
    lines = []
    for _ in range(12):
        prompt = " ".join(rng.choice(words[10:20], size=2))
        responses = [" ".join(rng.choice(good, size=3)), " ".join(rng.choice(bad, size=3))]
        lines.append({"prompt": prompt, "responses": responses, "ranking": [0, 1]})
    path = tmp_path / "rankings.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    records = read_preferences(path)
    rm = HFRewardModel.from_lm(load_policy("sft", hf_dir), tok, seed=0)
    prompts = [r.prompt for r in records]
    chosen = [r.responses[0] for r in records]
    rejected = [r.responses[1] for r in records]
    before = (rm.score(prompts, chosen) - rm.score(prompts, rejected)).mean().item()
    cfg = RMTrainConfig(epochs=8, batch_size=4, lr=3e-3, val_fraction=0.0, warmup_steps=2)
    train_reward_model(rm, records, cfg, progress=False)
    after = (rm.score(prompts, chosen) - rm.score(prompts, rejected)).mean().item()
    assert after > before + 0.5
    rm.gain, rm.bias = 2.0, -1.0
    rm.save(tmp_path, "reward")
    again = HFRewardModel.load(tmp_path, "reward")
    assert (again.gain, again.bias) == (2.0, -1.0)
    assert torch.allclose(again.score(prompts, chosen), rm.score(prompts, chosen), atol=1e-5)


def test_textenv_reward_trains_an_hf_reward_model_from_an_hf_init_dir(hf_dir, tmp_path):
    """`textenv reward --init-dir DIR` with DIR/sft a Hugging Face LM writes an HF reward
    model (calibrated) that an env loads as its learned reward."""
    from reward_models.train import TrainRewardModelArgs, main

    data = tmp_path / "pairs.jsonl"
    words = load_tokenizer_file(ASSETS_DIR / "tokenizer.json").itos[4:]
    data.write_text("".join(json.dumps({"prompt": f"{words[10 + i]} {words[11]}",
                                        "chosen": f"{words[0]} {words[1]} <eos>",
                                        "rejected": f"{words[3]} {words[4]}"}) + "\n"
                            for i in range(8)))
    out = tmp_path / "rm"
    summary = main(TrainRewardModelArgs(
        data=data, init_dir=hf_dir, out_dir=out, calibration_samples=32, threads=1,
        train=RMTrainConfig(epochs=2, batch_size=4, val_fraction=0.25)))
    assert math.isfinite(summary["gain"]) and summary["gain"] != 1.0  # calibrated
    assert (out / "reward" / "config.json").is_file() and not (out / "tokenizer.json").exists()
    rm = load_reward_model(out.resolve())
    assert isinstance(rm, HFRewardModel) and rm.gain == summary["gain"]
    env = gym.make("TextGen-v0", task="reviews", assets_dir=out, max_new_tokens=4)
    env.reset(seed=0)
    *_, info = env.step(2)  # <eos>: the episode ends and is scored by the HF reward model
    assert math.isfinite(info["reward_model_score"])


def test_without_transformers_the_error_says_how_to_install(hf_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # `import transformers` fails
    with pytest.raises(ImportError, match=r'pip install -e "\.\[hf\]"'):
        HFCausalLM.from_dir(hf_dir / "sft")


def test_a_rotary_model_decodes_incrementally_too(hf_dir):
    """A Llama-style model (rotary positions, RMSNorm) with one key/value head per head."""
    tok = load_tokenizer(hf_dir)
    torch.manual_seed(0)
    config = transformers.LlamaConfig(hidden_size=32, num_attention_heads=4,
                                      num_key_value_heads=4, num_hidden_layers=2,
                                      intermediate_size=64, vocab_size=tok.vocab_size,
                                      max_position_embeddings=128)
    model = HFCausalLM(transformers.LlamaForCausalLM(config), tok).eval()
    ids, mask = left_padded([3, 7, 5], 7, vocab=tok.vocab_size)
    new = torch.randint(4, tok.vocab_size, (3, 2), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = model(torch.cat([ids, new], 1),
                     torch.cat([mask, torch.ones_like(new, dtype=bool)], 1))[:, -3:]
        cache = KVCache(model.config, 3, 9)
        steps = [model(ids, mask, kv_cache=cache)[:, -1]]
        steps += [model.decode_step(new[:, t], cache) for t in range(2)]
    assert (torch.stack(steps, 1) - full).abs().max() < 1e-5
    config.num_key_value_heads = 2  # grouped-query attention: refused, saying why
    with pytest.raises(ValueError, match="grouped-query attention is not supported"):
        HFCausalLM(transformers.LlamaForCausalLM(config), tok)
