"""Tests for the reward model, its training, ensembles, evaluation and pipeline.

All models are tiny random GPTs (a few thousand parameters), so the whole file runs in
seconds on a CPU. Nothing here needs the shipped assets.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from reward_models import train as train_mod
from reward_models.data import PairwiseRecord, RankedRecord
from reward_models.ensemble import train_ensemble
from reward_models.evaluate import gold_accuracy, label_accuracy, rankdata, spearman
from reward_models.train import RMTrainConfig, calibrate, split_records, train_reward_model
from textenv.assets import ASSETS_DIR
from textenv.model import GPT, GPTConfig
from textenv.rewards import RewardEnsemble, RewardModel
from textenv.tokenizer import WordTokenizer

WORDS = ["a", "b", "c", "d", "good", "bad", "ok", "."]
TOL = 1e-5


def tokenizer() -> WordTokenizer:
    return WordTokenizer(WORDS)


def tiny_lm(seed: int = 0, vocab: int | None = None) -> GPT:
    torch.manual_seed(seed)
    cfg = GPTConfig(vocab_size=vocab or tokenizer().vocab_size, block_size=24, n_layer=2,
                    n_head=2, n_embd=16)
    return GPT(cfg).eval()


def tiny_rm(seed: int = 0) -> RewardModel:
    return RewardModel.from_lm(tiny_lm(seed), tokenizer(), seed=seed)


def synthetic_rankings(n: int, k: int = 3, seed: int = 0) -> list[RankedRecord]:
    """Responses rank by their number of 'good' minus 'bad' words: easy to learn."""
    rng = np.random.default_rng(seed)
    records = []
    for _ in range(n):
        prompt = " ".join(rng.choice(["a", "b", "c", "d"], size=int(rng.integers(1, 4))))
        responses, quality = [], []
        for j in range(k):
            words = list(rng.choice(["good", "bad", "ok"], size=int(rng.integers(1, 5))))
            words.append("." if j % 2 else "ok")
            responses.append(" ".join(words) + " <eos>")
            quality.append(words.count("good") - words.count("bad") + 0.01 * j)
        ranking = [int(x) for x in np.argsort(-np.array(quality))]
        records.append(RankedRecord(prompt, responses, ranking))
    return records


PROMPTS = ["a", "a b c", "d", "b b", "c a d a"]
RESPONSES = ["good . <eos>", "bad", "ok ok good bad . <eos>", "", "good good good"]


# ---- the model ------------------------------------------------------------------------------
def test_score_alone_equals_score_in_padded_batch():
    rm = tiny_rm()
    batch = rm.score(PROMPTS, RESPONSES)  # (5,)
    assert batch.shape == (5,)
    for i in range(len(PROMPTS)):
        alone = rm.score(PROMPTS[i:i + 1], RESPONSES[i:i + 1])
        assert abs(alone.item() - batch[i].item()) <= TOL
    chunked = rm.score(PROMPTS, RESPONSES, batch_size=2)
    assert (chunked - batch).abs().max() <= TOL


def test_score_is_deterministic_and_reads_last_real_token():
    rm = tiny_rm()
    rm.train()  # score() must switch dropout off by itself and restore the mode
    a, b = rm.score(PROMPTS, RESPONSES), rm.score(PROMPTS, RESPONSES)
    assert torch.equal(a, b) and rm.training
    # Right padding: appending pads to a row leaves its score unchanged.
    seqs = rm.encode(PROMPTS[:2], RESPONSES[:2])
    ids, mask = rm.collate(seqs)
    wide_ids = torch.cat([ids, torch.zeros(2, 5, dtype=torch.long)], 1)
    wide_mask = torch.cat([mask, torch.zeros(2, 5, dtype=torch.bool)], 1)
    with torch.no_grad():
        rm.eval()
        assert (rm.raw_scores_from_ids(ids, mask)
                - rm.raw_scores_from_ids(wide_ids, wide_mask)).abs().max() <= TOL


def test_from_lm_copies_the_trunk_and_drops_the_lm_head():
    lm = tiny_lm()
    rm = RewardModel.from_lm(lm, tokenizer())
    assert not any(k.startswith("transformer.lm_head") for k in rm.state_dict())
    assert torch.equal(rm.transformer.tok_emb.weight, lm.tok_emb.weight)
    with torch.no_grad():
        rm.transformer.tok_emb.weight.add_(1.0)  # a copy: the LM is untouched
    assert not torch.equal(rm.transformer.tok_emb.weight, lm.tok_emb.weight)


def test_input_errors():
    rm = tiny_rm()
    with pytest.raises(ValueError, match="block_size"):
        rm.score(["a"], [" ".join(["good"] * 40)])
    with pytest.raises(ValueError, match="2 prompts but 1"):
        rm.score(["a", "b"], ["good"])
    with pytest.raises(TypeError):
        rm.score("a", "good")
    with pytest.raises(ValueError, match="vocab mismatch"):
        RewardModel(tiny_lm(vocab=30).config, tokenizer())


# ---- save / load --------------------------------------------------------------------------
def test_save_load_roundtrip_is_exact(tmp_path):
    rm = tiny_rm()
    rm.gain, rm.bias = 1.7, -0.3
    rm.save(tmp_path, "reward")
    tokenizer().save(tmp_path / "tokenizer.json")
    loaded = RewardModel.load(tmp_path)  # tokenizer from tmp_path/tokenizer.json
    assert (loaded.gain, loaded.bias) == (1.7, -0.3)
    assert torch.equal(loaded.score(PROMPTS, RESPONSES), rm.score(PROMPTS, RESPONSES))
    assert not list(tmp_path.glob("*.tmp"))  # atomic writes leave no temp files


def test_load_errors_name_the_file(tmp_path):
    rm = tiny_rm()
    rm.save(tmp_path, "reward")
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        RewardModel.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="other.json"):
        RewardModel.load(tmp_path, "other", tokenizer=tokenizer())
    with pytest.raises(ValueError, match="vocab mismatch.*reward.json"):
        RewardModel.load(tmp_path, tokenizer=WordTokenizer(WORDS + ["extra"]))
    (tmp_path / "reward.json").write_text("{not json")
    with pytest.raises(ValueError, match="reward.json"):
        RewardModel.load(tmp_path, tokenizer=tokenizer())
    rm.save(tmp_path, "reward")
    (tmp_path / "reward.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="reward.safetensors"):
        RewardModel.load(tmp_path, tokenizer=tokenizer())
    # An LM config is not a reward-model config.
    tiny_lm().save(tmp_path, "sft")
    with pytest.raises(ValueError, match="sft.json"):
        RewardModel.load(tmp_path, "sft", tokenizer=tokenizer())


# ---- training ---------------------------------------------------------------------------------
FAST = dict(epochs=6, batch_size=8, lr=3e-3, warmup_steps=5, patience=0, log_every=5)


def test_kwise_training_loss_falls_and_keeps_best_state(tmp_path):
    records = synthetic_rankings(96)
    rm = tiny_rm()
    cfg = RMTrainConfig(**FAST, val_fraction=0.25)
    result = train_reward_model(rm, records, cfg, run_dir=tmp_path, progress=False)
    first, best = result.history[0], result.best_val
    assert best["loss"] < first["loss"] - 0.1
    assert best["accuracy"] > 0.7  # chance is 0.5
    assert not rm.training
    # The kept state is the best one: re-evaluating gives the recorded number.
    _, val = split_records(records, cfg.val_fraction, cfg.seed)
    again = train_mod.evaluate_groups(rm, train_mod.encode_records(rm, val))
    assert abs(again["loss"] - best["loss"]) < 1e-5
    # Logs: TensorBoard event file and a CSV with a header and rows.
    assert list(tmp_path.glob("events.out.tfevents.*"))
    lines = (tmp_path / "train_log.csv").read_text().splitlines()
    assert lines[0].startswith("step,epoch") and len(lines) > 3


def test_pairwise_training_with_margin_loss_falls():
    pairs = [p for r in synthetic_rankings(64, k=2) for p in r.to_pairs()]
    assert all(isinstance(p, PairwiseRecord) for p in pairs)
    rm = tiny_rm()
    result = train_reward_model(rm, pairs, RMTrainConfig(**FAST, margin=0.5, val_fraction=0.25),
                                progress=False)
    assert result.best_val["loss"] < result.history[0]["loss"] - 0.1


def test_kwise_forwards_each_response_once_per_epoch():
    k, n, epochs = 4, 20, 2
    records = synthetic_rankings(n, k=k)
    rm = tiny_rm()
    rows = []
    trunk = rm.transformer.trunk

    def counting_trunk(ids, *args, **kwargs):
        rows.append(ids.shape[0])
        return trunk(ids, *args, **kwargs)

    rm.transformer.trunk = counting_trunk
    cfg = RMTrainConfig(epochs=epochs, batch_size=6, val_fraction=0.0, patience=0)
    result = train_reward_model(rm, records, cfg, progress=False)
    assert sum(rows) == epochs * n * k == result.responses_forwarded
    assert len(rows) == result.steps == epochs * math.ceil(n / 6)  # one forward per step
    # Splitting rankings into independent pairs forwards each response K-1 times.
    rows.clear()
    train_reward_model(rm, records, RMTrainConfig(epochs=1, batch_size=6, val_fraction=0.0,
                                                  expand_to_pairs=True), progress=False)
    assert sum(rows) == n * k * (k - 1)


def test_batch_scores_match_separate_scoring_with_mixed_k():
    rm = tiny_rm()
    records = synthetic_rankings(3, k=2) + synthetic_rankings(2, k=4, seed=1)
    groups = train_mod.encode_records(rm, records)
    with torch.no_grad():
        scores, ranking, valid = train_mod.batch_scores(rm, groups)  # (5, 4)
    assert scores.shape == (5, 4) and valid.sum() == 3 * 2 + 2 * 4
    for b, r in enumerate(records):
        alone = rm.raw_score([r.prompt] * len(r.responses), list(r.responses))
        assert (scores[b, :len(r.responses)] - alone).abs().max() <= TOL
        assert ranking[b, :len(r.responses)].tolist() == list(r.ranking)


def test_nan_loss_stops_naming_the_step(monkeypatch):
    rm = tiny_rm()
    monkeypatch.setattr(train_mod, "group_loss", lambda *a: torch.tensor(float("nan")))
    with pytest.raises(FloatingPointError, match="step 0"):
        train_reward_model(rm, synthetic_rankings(8), RMTrainConfig(val_fraction=0.0),
                           progress=False)


def test_margin_with_rankings_is_rejected():
    with pytest.raises(ValueError, match="margin"):
        train_reward_model(tiny_rm(), synthetic_rankings(8), RMTrainConfig(margin=1.0),
                           progress=False)


def test_split_is_by_prompt():
    records = synthetic_rankings(60)
    train, val = split_records(records, 0.25, seed=0)
    assert val and train and len(train) + len(val) == len(records)
    assert not {r.prompt for r in train} & {r.prompt for r in val}


def test_calibration_gives_mean_0_std_1():
    rm = tiny_rm()
    prompts = PROMPTS * 8
    responses = [r + " good" * (i % 3) for i, r in enumerate(RESPONSES * 8)]
    stats = calibrate(rm, prompts, responses)
    s = rm.score(prompts, responses).double()
    assert abs(s.mean().item()) < 1e-5 and abs(s.std(correction=0).item() - 1) < 1e-4
    assert stats["calibration_samples"] == len(prompts)
    with pytest.raises(ValueError, match="same score"):
        calibrate(rm, ["a", "a"], ["good", "good"])


# ---- ensembles ------------------------------------------------------------------------------
def test_ensemble_conservative_below_mean_and_roundtrip(tmp_path):
    models = [tiny_rm(seed) for seed in range(3)]
    mean = RewardEnsemble(models, mode="mean")
    cons = RewardEnsemble(models, mode="conservative", k=1.0)
    m, c = mean.score(PROMPTS, RESPONSES), cons.score(PROMPTS, RESPONSES)
    member = torch.stack([rm.score(PROMPTS, RESPONSES) for rm in models])  # (3, 5)
    assert torch.allclose(m, member.mean(0))
    assert (c <= m + 1e-7).all() and (c < m).any()
    single = RewardEnsemble(models[:1], mode="conservative")
    assert torch.allclose(single.score(PROMPTS, RESPONSES), models[0].score(PROMPTS, RESPONSES))
    cons.save(tmp_path, "ens")
    tokenizer().save(tmp_path / "tokenizer.json")
    loaded = RewardEnsemble.load(tmp_path, "ens")
    assert loaded.mode == "conservative" and len(loaded) == 3
    assert torch.equal(loaded.score(PROMPTS, RESPONSES), c)
    with pytest.raises(ValueError, match="unknown ensemble mode"):
        RewardEnsemble(models, mode="median")


def test_train_ensemble_members_differ():
    records = synthetic_rankings(24)
    ens, results = train_ensemble(tiny_lm(), tokenizer(), records,
                                  RMTrainConfig(epochs=1, batch_size=8, val_fraction=0.25),
                                  n_models=2, calibration=(PROMPTS, RESPONSES))
    a, b = ens.member_scores(PROMPTS, RESPONSES)
    assert len(results) == 2 and not torch.allclose(a, b)
    assert abs(a.mean().item()) < 1e-5  # each member calibrated


# ---- evaluation metrics -----------------------------------------------------------------------
def test_rankdata_averages_ties():
    assert rankdata([10, 20, 20, 30]).tolist() == [1, 2.5, 2.5, 4]
    assert rankdata([3, 1, 2]).tolist() == [3, 1, 2]
    assert rankdata([5, 5, 5]).tolist() == [2, 2, 2]


def test_spearman_known_values():
    x = [1, 2, 3, 4, 5]
    assert spearman(x, [5, 4, 3, 2, 1]) == pytest.approx(-1.0)
    # One adjacent swap: 1 - 6 * sum(d^2) / (n (n^2 - 1)) = 1 - 6 * 2 / 120 = 0.9.
    assert spearman(x, [1, 3, 2, 4, 5]) == pytest.approx(0.9)
    assert spearman(x, [10, 30, 20, 40, 50]) == pytest.approx(0.9)  # only ranks matter
    assert math.isnan(spearman(x, [1, 1, 1, 1, 1]))


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(-1000, 1000), min_size=2, max_size=30, unique=True))
def test_spearman_of_monotone_transform_is_one(xs):
    x = np.array(xs, dtype=np.float64)
    assert spearman(x, x ** 3 + 7) == pytest.approx(1.0)  # strictly increasing
    assert spearman(x, -2 * x) == pytest.approx(-1.0)
    # Against the textbook formula for distinct values: 1 - 6 sum(d^2) / (n (n^2 - 1)).
    y = np.roll(x, 1)
    d = rankdata(x) - rankdata(y)
    n = len(x)
    assert spearman(x, y) == pytest.approx(1 - 6 * (d ** 2).sum() / (n * (n * n - 1)))


def test_pair_accuracies_on_hand_made_numbers():
    rec = RankedRecord("p", ["x", "y", "z"], [2, 0, 1])  # z > x > y
    # Scores agree on (z, x), (z, y); disagree on (x, y).
    assert label_accuracy([[0.0, 1.0, 2.0]], [rec]) == (pytest.approx(2 / 3), 3)
    # Identical texts are skipped; ties in score count as wrong.
    dup = RankedRecord("p", ["x", "x", "w"], [0, 1, 2])
    assert label_accuracy([[1.0, 1.0, 1.0]], [dup]) == (0.0, 2)
    pair = PairwiseRecord("p", "good", "bad")
    assert label_accuracy([[1.0, 0.0]], [pair]) == (1.0, 1)
    # Gold: only pairs >= 0.1 apart count (0.50 vs 0.55 is skipped).
    acc, n = gold_accuracy([[3.0, 2.0, 1.0]], [[0.5, 0.55, 0.0]], min_gap=0.1)
    assert (acc, n) == (pytest.approx(1.0), 2)
    acc, n = gold_accuracy([[1.0, 2.0, 3.0]], [[0.5, 0.55, 0.0]], min_gap=0.1)
    assert (acc, n) == (0.0, 2)


# ---- pipeline (tiny, random models: checks the wiring, not the quality) -----------------------
def test_pipeline_smoke(tmp_path):
    from reward_models.evaluate import RMEvalConfig
    from reward_models.pipeline import RewardPipelineConfig, build_default_reward_model
    from textenv.pipeline import build_tokenizer
    from textenv.tasks import make_task

    task = make_task("reviews")
    tok = build_tokenizer(task)
    torch.manual_seed(0)
    sft = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=1, n_head=2,
                        n_embd=16)).eval()
    cfg = RewardPipelineConfig(
        k=3, train_prompts=24, test_prompts=8, calibration_samples=32,
        train=RMTrainConfig(epochs=1, batch_size=8), eval=RMEvalConfig(prompts=16),
        run_dir=tmp_path / "run")
    quality = build_default_reward_model(sft, task, tok, tmp_path, seed=0, cfg=cfg)
    for key in ("rm_pairwise_accuracy_gold", "rm_pairwise_accuracy_noisy",
                "rm_spearman_gold_sft", "rm_spearman_gold_drift", "rm_seconds"):
        assert key in quality
    assert quality["rm_labeled_responses"] == 24 * 3
    rm = RewardModel.load(tmp_path, tokenizer=tok)
    assert json.loads((tmp_path / "reward.json").read_text())["extra"]["seed"] == 0
    assert rm.score(["write a positive review of the pizza about the crust , short :"],
                    ["the crust was crispy . <eos>"]).shape == (1,)
    assert (tmp_path / "run" / "train.jsonl").exists()



def test_make_rankings_borrows_responses_from_other_prompts():
    from reward_models.pipeline import make_rankings
    from textenv.pipeline import build_tokenizer
    from textenv.tasks import make_task

    task = make_task("reviews")
    tok = build_tokenizer(task)
    torch.manual_seed(0)
    sft = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=1, n_head=2,
                        n_embd=16)).eval()
    kw = dict(split="train", labeler_temperature=0.0, seed=3, sample_temperatures=(1.0, 2.0))
    own = make_rankings(sft, tok, task, 12, 3, **kw)
    mixed = make_rankings(sft, tok, task, 12, 5, borrowed=2, **kw)
    assert [r.prompt for r in mixed] == [r.prompt for r in own]  # same prompts, same samples
    firsts = [r.responses[0] for r in own]
    for i, (a, b) in enumerate(zip(own, mixed)):
        assert b.responses[:3] == a.responses  # its own K - borrowed come first
        for lent in b.responses[3:]:  # each borrowed one is another group's first sample
            assert lent in firsts[:i] + firsts[i + 1:]
        # the labeler (noise-free here) ranks the whole group by this prompt's gold
        gold = [task.gold_score(b.prompt, b.responses[j]) for j in b.ranking]
        assert gold == sorted(gold, reverse=True)
    with pytest.raises(ValueError, match="borrowed must be between 0 and"):
        make_rankings(sft, tok, task, 4, 3, borrowed=2, **kw)


# ---- the shipped reward model, when it has been built --------------------------------------
SHIPPED = ASSETS_DIR


@pytest.mark.skipif(not (SHIPPED / "reward.json").exists(), reason="assets not built")
def test_score_ids_equals_score_of_text():
    rm = RewardModel.load(SHIPPED)
    prompts = ["write a positive review of the pizza about the crust , short :"] * 2
    responses = ["the crust was crispy . <eos>", "i hated the screen . the screen was dim ."]
    ids, mask = rm.collate(rm.encode(prompts, responses))  # right-padded
    by_ids = rm.score_ids(ids, mask)
    assert (by_ids - rm.score(prompts, responses)).abs().max() <= TOL
    # the training forward (all positions) gives the same raw scores as the readout path
    full = rm.raw_scores_from_ids(ids, mask)
    assert (rm.gain * full + rm.bias - by_ids).abs().max() <= TOL
    rm.train()
    rm.score_ids(ids, mask)
    assert rm.training  # scoring restores the mode it found


@pytest.mark.skipif(not (SHIPPED / "reward.json").exists(), reason="assets not built")
def test_shipped_reward_model_loads_and_scores_consistently():
    rm = RewardModel.load(SHIPPED)
    prompts = ["write a positive review of the pizza about the crust , short :"] * 3
    responses = ["the crust was crispy . <eos>", "the crust was soggy . <eos>",
                 "i hated the screen . the screen was dim ."]
    batch = rm.score(prompts, responses)
    for i in range(3):
        assert abs(rm.score(prompts[i:i + 1], responses[i:i + 1]).item() - batch[i].item()) <= TOL
    assert batch[0] > batch[1]  # on-instruction beats wrong sentiment
