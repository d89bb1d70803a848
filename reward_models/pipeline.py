"""The reward-model stage of the default build: SFT samples -> simulated rankings -> RM.

    1. prompts from the task's TRAIN split; K responses each from the SFT policy (at the
       temperatures of `sample_temperatures`);
    2. the simulated labeler ranks each group by gold score with Bradley-Terry noise
       (`labeler_temperature`, see below);
    3. a reward model initialised from the SFT trunk is trained with the K-wise loss,
       keeping the best state by loss on a held-out slice of the training prompts;
    4. it is calibrated on FRESH SFT samples (mean 0, std 1) and saved as
       out_dir/reward.safetensors + reward.json;
    5. it is evaluated on rankings of held-out (EVAL split) prompts and on Spearman
       correlations with gold; the numbers are returned for quality.json.

Labeler noise. The labeler prefers a over b with probability sigmoid((gold_a - gold_b) / T).
We use T = 0.1: a pair 0.1 apart in gold is ordered correctly 73% of the time, 0.3 apart
95%, so close calls are genuinely noisy (like real labelers) while clear differences are
labelled reliably. Pass `labeler_temperature` to study noisier labels.

Tuned defaults (measured on the default SFT policy, 1 torch thread; the table is in
docs/reward_models.md). The reward model's held-out gold accuracy grows with the number
of ranked groups far more than with anything else we tried: at the same number of
training steps, 32000 groups x 3 epochs reach 0.884 where 4000 groups x 12 epochs reach
0.767, and 16000 groups x 6 epochs 0.863. What did not help: freezing lower layers,
starting from the base LM instead of the SFT policy, noise-free labels (the model and its
data, not the label noise, are the bottleneck), larger batches or learning rates above
1e-3, and responses borrowed from other prompts (`borrowed`: fewer wrong-sentiment and
off-topic responses scored high, but lower gold accuracy at the same labelling effort).
What did: lr 1e-3 (vs 1e-4), a 10x learning rate on the fresh scalar head, hotter
samples in each group, and the centring penalty (`RMTrainConfig.center_coef`), which
lifts the pooled Spearman correlation by removing arbitrary per-prompt offsets that
comparisons cannot see. The hardest part of the gold score for a reward model trained on
little data is "is the requested aspect mentioned at all".

The preference data is not written next to the assets (they must stay small); give
`run_dir` to keep it (`train.jsonl`, `test.jsonl`) along with the training logs.

The whole default build, every stage from nothing, is `build_assets_main` at the end of
this file (`textenv build-assets`, `make assets`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from reward_models.data import MAX_RESPONSES, MIN_RESPONSES, RankedRecord, write_jsonl
from reward_models.evaluate import RMEvalConfig, evaluate_reward_model, sample_policy
from reward_models.labeler import label_rankings
from reward_models.train import RMTrainConfig, calibrate, train_reward_model
from textenv.assets import load_policy, read_quality, task_assets_dir
from textenv.model import GPT
from textenv.pipeline import (
    PolicyEvalConfig,
    PretrainConfig,
    SFTConfig,
    build_tokenizer,
    evaluate_policy,
    pretrain,
    supervised_finetune,
)
from textenv.rewards import RewardModel
from textenv.storage import atomic_write, write_json
from textenv.tasks import make_task
from textenv.tokenizer import Tokenizer


@dataclass
class RewardPipelineConfig:
    k: int = 4
    """Responses ranked per prompt (2..9)."""
    train_prompts: int = 4000
    """Ranked groups for training (prompts drawn from the train split, with repeats)."""
    test_prompts: int = 512
    """Ranked groups on held-out EVAL-split prompts, for the reported accuracies."""
    labeler_temperature: float = 0.1
    """Bradley-Terry noise of the simulated labeler (0 = always orders by gold)."""
    sample_temperatures: tuple[float, ...] = (1.0,)
    """Temperatures of the SFT policy for the responses of a group (response j uses
    entry j mod len): hotter samples show the reward model the degenerate text a policy
    drifting under RL writes, ranked below the SFT-like ones."""
    borrowed: int = 0
    """Of the K responses of a training group, how many are borrowed from other groups:
    SFT samples written for another prompt (fluent text that ignores this prompt's topic,
    aspect or sentiment), ranked by the labeler against this prompt like the others. They
    teach the reward model to read the prompt (0 = every response is this prompt's own)."""
    calibration_samples: int = 1024
    """Fresh SFT samples (train-split prompts) for gain/bias: mean 0, std 1 on them."""
    train: RMTrainConfig = field(default_factory=RMTrainConfig)
    eval: RMEvalConfig = field(default_factory=RMEvalConfig)
    run_dir: Path | None = None
    """If set: write the preference data and the training logs (TensorBoard, CSV) here."""


def sample_groups(policy: GPT, tokenizer: Tokenizer, prompts: Sequence[str], k: int, *,
                  max_new_tokens: int, temperatures: Sequence[float], seed: int,
                  task=None, split: str = "train") -> list[list[str]]:
    """K responses per prompt, response j at temperatures[j % len(temperatures)]: one
    batched generation per temperature. Returns N lists of K strings. For a multi-turn
    `task`, each response is a whole dialogue with the task's simulated user (games of
    `split`)."""
    groups: list[list[str]] = [[""] * k for _ in prompts]
    for t in dict.fromkeys(temperatures):
        slots = [(i, j) for i in range(len(prompts)) for j in range(k)
                 if temperatures[j % len(temperatures)] == t]
        flat = sample_policy(policy, tokenizer, [prompts[i] for i, _ in slots],
                             max_new_tokens=max_new_tokens, temperature=t, seed=seed,
                             task=task, split=split)
        for (i, j), response in zip(slots, flat):
            groups[i][j] = response
    return groups


def make_rankings(policy: GPT, tokenizer: Tokenizer, task, n: int, k: int, *, split: str,
                  labeler_temperature: float, seed: int,
                  sample_temperatures: Sequence[float] = (1.0,), borrowed: int = 0
                  ) -> list[RankedRecord]:
    """`n` simulated-labeler rankings of K policy samples for prompts of `split`. The last
    `borrowed` responses of each group are another group's first response (a sample for
    another prompt, at the first temperature), so they cost no generation."""
    if not MIN_RESPONSES <= k <= MAX_RESPONSES:
        raise ValueError(f"k must be between {MIN_RESPONSES} and {MAX_RESPONSES}, got {k}")
    if not 0 <= borrowed <= k - MIN_RESPONSES:
        raise ValueError(f"borrowed must be between 0 and k - {MIN_RESPONSES} = "
                         f"{k - MIN_RESPONSES} (k={k}), got {borrowed}")
    if borrowed and n < 2:
        raise ValueError(f"borrowed responses need at least 2 groups to borrow from, got n={n}")
    rng = np.random.default_rng(seed)
    prompts = [task.sample_prompt(rng, split) for _ in range(n)]
    groups = sample_groups(policy, tokenizer, prompts, k - borrowed,
                           max_new_tokens=task.max_response_tokens,
                           temperatures=sample_temperatures, seed=seed, task=task, split=split)
    for i, group in enumerate(groups):
        # Another group's index, uniformly: draw from n - 1 and skip over i.
        donors = rng.integers(n - 1, size=borrowed)
        group += [groups[d + (d >= i)][0] for d in donors]
    return label_rankings(prompts, groups, task.gold_score, labeler_temperature, rng)


def calibration_set(policy: GPT, tokenizer: Tokenizer, task, n: int, seed: int
                    ) -> tuple[list[str], list[str]]:
    """`n` fresh (prompt, SFT sample) pairs on train-split prompts (T = 1)."""
    rng = np.random.default_rng(seed)
    prompts = [task.sample_prompt(rng, "train") for _ in range(n)]
    return prompts, sample_policy(policy, tokenizer, prompts, seed=seed,
                                  max_new_tokens=task.max_response_tokens, task=task)


def build_default_reward_model(sft: GPT, task, tokenizer: Tokenizer, out_dir: str | Path,
                               seed: int = 0, cfg: RewardPipelineConfig | None = None,
                               name: str = "reward") -> dict:
    """Sample, label, train, calibrate, save and evaluate the default reward model.

    Writes out_dir/{name}.safetensors and out_dir/{name}.json; returns quality numbers
    (`rm_pairwise_accuracy_gold`, `rm_pairwise_accuracy_noisy`, `rm_spearman_gold_sft`,
    `rm_spearman_gold_drift`, ...) and data sizes and timings.
    """
    cfg = cfg or RewardPipelineConfig()
    t_start = time.perf_counter()
    run_dir = Path(cfg.run_dir) if cfg.run_dir else None

    # Different seeds per use: the four data sets are independent samples.
    t0 = time.perf_counter()
    train_records = make_rankings(sft, tokenizer, task, cfg.train_prompts, cfg.k, split="train",
                                  labeler_temperature=cfg.labeler_temperature, seed=seed,
                                  sample_temperatures=cfg.sample_temperatures,
                                  borrowed=cfg.borrowed)
    test_records = make_rankings(sft, tokenizer, task, cfg.test_prompts, cfg.k, split="eval",
                                 labeler_temperature=cfg.labeler_temperature, seed=seed + 1)
    data_seconds = time.perf_counter() - t0
    if run_dir:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_jsonl(run_dir / "train.jsonl", train_records)
        write_jsonl(run_dir / "test.jsonl", test_records)

    train_cfg = cfg.train
    rm = RewardModel.from_lm(sft, tokenizer, head_init_std=train_cfg.head_init_std,
                             seed=train_cfg.seed + seed)
    result = train_reward_model(rm, train_records, train_cfg, run_dir=run_dir)

    t0 = time.perf_counter()
    cal = calibrate(rm, *calibration_set(sft, tokenizer, task, cfg.calibration_samples,
                                         seed=seed + 2))
    calibrate_seconds = time.perf_counter() - t0
    rm.save(out_dir, name, extra={"trained_by": "reward_models.pipeline",
                                  "seed": seed, "config": _jsonable(asdict(cfg)),
                                  "best_step": result.best_step, "steps": result.steps})

    t0 = time.perf_counter()
    quality = evaluate_reward_model(rm, task, sft, tokenizer, cfg.eval, heldout=test_records)
    quality.update(
        rm_k=cfg.k, rm_borrowed=cfg.borrowed, rm_train_groups=len(train_records),
        rm_test_groups=len(test_records),
        rm_labeled_responses=len(train_records) * cfg.k,
        rm_labeler_temperature=cfg.labeler_temperature,
        rm_train_steps=result.steps, rm_best_step=result.best_step,
        rm_stopped_early=result.stopped_early,
        rm_val_loss=result.best_val.get("loss"), rm_val_accuracy=result.best_val.get("accuracy"),
        rm_calibration_raw_mean=cal["raw_mean"], rm_calibration_raw_std=cal["raw_std"],
        rm_data_seconds=data_seconds, rm_train_seconds=result.seconds,
        rm_calibrate_seconds=calibrate_seconds, rm_eval_seconds=time.perf_counter() - t0,
        rm_params=sum(p.numel() for p in rm.parameters()),
    )
    quality["rm_seconds"] = time.perf_counter() - t_start
    if run_dir:
        write_json(run_dir / "rm_quality.json", quality)
    return quality


def _jsonable(d):
    return json.loads(json.dumps(d, default=str))


# ---- the whole default build: `textenv build-assets` -----------------------------------------
def default_rm_config() -> RewardPipelineConfig:
    """The shipped reward model's settings: 32000 ranked groups of K=6 SFT samples (three at
    temperature 1, one each at 1.3, 1.6 and 2.0, so degenerate text is ranked too), 3
    epochs at lr 1e-3 (10x on the scalar head), mean-centring penalty 0.1. Against 4000
    groups x 12 epochs (the same number of steps) on the same build: gold accuracy 0.884 vs
    0.767, degenerate text above the SFT mean 0.078 vs 0.146 (docs/reward_models.md)."""
    return RewardPipelineConfig(
        k=6, sample_temperatures=(1.0, 1.0, 1.0, 1.3, 1.6, 2.0), train_prompts=32000,
        train=RMTrainConfig(epochs=3, lr=1e-3, batch_size=32, center_coef=0.1,
                            head_lr_mult=10.0, patience=0))


@dataclass
class BuildConfig:
    """Build the default assets from nothing, deterministically:
    corpus -> base LM -> SFT policy -> simulated rankings -> reward model -> quality.json.
    Every number in quality.json is measured on this build."""

    out_dir: Path | None = None
    """Where to write the assets (default: the task's shipped assets, textenv/assets/TASK/)."""
    seed: int = 0
    """One seed for the whole build: same seed, same assets."""
    task: str = "reviews"
    """Task to build for."""
    threads: int = 1
    """torch threads. Float sums depend on the thread count, so the shipped build uses 1:
    the same command gives the same assets on any machine with the same torch."""
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    eval: PolicyEvalConfig = field(default_factory=PolicyEvalConfig)
    rm: RewardPipelineConfig = field(default_factory=default_rm_config)
    reward: bool = True
    """Also train the default reward model (the reward-model stage above)."""
    reuse_lm: bool = False
    """Reuse base/SFT models already in out_dir instead of training them (to iterate on
    the reward-model stage; the shipped build runs every stage, and gives the same base/SFT
    bits with the same seed and threads)."""

    @classmethod
    def for_task(cls, task: str | None = None) -> BuildConfig:
        """The build defaults of `task` (default: reviews): `textenv build-assets --task NAME`
        starts from these, and any flag overrides them (`--help` shows them)."""
        task = task or cls.task
        defaults = TASK_BUILD_DEFAULTS.get(task)
        return defaults() if defaults else cls(task=task)


def arithmetic_build_config() -> BuildConfig:
    """`arithmetic`: the reviews LM and its pretraining and SFT (3 layers, 128 wide: a
    2-layer, 96-wide LM with half the steps scored 0.19 gold after SFT), and a reward model
    from 4000 ranked groups of K=6 SFT samples in 8 epochs (its validation
    accuracy levelled off at about 0.62 after 3 epochs)."""
    rm = default_rm_config()
    return BuildConfig(task="arithmetic", rm=replace(rm, train_prompts=4000,
                                                     train=replace(rm.train, epochs=8)))


def sequences_build_config() -> BuildConfig:
    """`sequences`: a tiny model (2 layers, 64 wide, 0.1M parameters) and a short build
    (about two minutes on one thread): 16 tokens, sequences of at most 11; a reward model
    from 2000 ranked groups of K=4 SFT samples (one at temperature 1.3, one at 2.0)."""
    return BuildConfig(
        task="sequences",
        pretrain=PretrainConfig(corpus_docs=20000, steps=600, n_layer=2, n_embd=64,
                                block_size=32),
        sft=SFTConfig(demos=10000, steps=400),
        rm=RewardPipelineConfig(k=4, sample_temperatures=(1.0, 1.0, 1.3, 2.0),
                                train_prompts=2000,
                                train=replace(default_rm_config().train, epochs=6)))


def dialogue_build_config() -> BuildConfig:
    """`dialogue`: a small LM (2 layers, 96 wide; its block is raised to hold a whole
    dialogue, 76 tokens) and a short build (about 4 min of CPU on one thread): 15000 corpus
    dialogues, 800 pretraining and 500 SFT steps, and a reward model from 1500 ranked groups
    of K=4 whole dialogues of the SFT policy (one at temperature 1.3, one at 1.6) in 4
    epochs."""
    rm = default_rm_config()
    return BuildConfig(
        task="dialogue",
        pretrain=PretrainConfig(corpus_docs=15000, steps=800, n_layer=2, n_embd=96),
        sft=SFTConfig(demos=10000, steps=500),
        eval=PolicyEvalConfig(prompts=256),
        rm=replace(rm, k=4, sample_temperatures=(1.0, 1.0, 1.3, 1.6), train_prompts=1500,
                   test_prompts=256, calibration_samples=512,
                   train=replace(rm.train, epochs=4), eval=replace(rm.eval, prompts=256)))


TASK_BUILD_DEFAULTS: dict[str, Callable[[], BuildConfig]] = {
    "arithmetic": arithmetic_build_config,
    "sequences": sequences_build_config,
    "dialogue": dialogue_build_config,
}
"""Tasks whose build defaults differ from BuildConfig's (the reviews build)."""


def build_assets_main(cfg: BuildConfig) -> dict:
    """`textenv build-assets`: every stage in order; writes the models, tokenizer.json,
    quality.json and build_config.json to cfg.out_dir and returns the quality numbers."""
    torch.set_num_threads(cfg.threads)
    t0 = time.perf_counter()
    out = Path(cfg.out_dir) if cfg.out_dir is not None else task_assets_dir(cfg.task)
    task = make_task(cfg.task)
    tokenizer = build_tokenizer(task)
    tokenizer.save(out / "tokenizer.json")

    if cfg.reuse_lm:  # keep base/SFT (and their measured numbers) from an earlier build
        quality = {k: v for k, v in read_quality(out).items()
                   if k.startswith(("base_", "pretrain_", "sft_"))}
        sft = load_policy("sft", out, tokenizer)
    else:
        base, quality = pretrain(task, tokenizer, cfg.pretrain, seed=cfg.seed)
        base.save(out, "base")
        sft, stats = supervised_finetune(base, task, tokenizer, cfg.sft, seed=cfg.seed + 1)
        sft.save(out, "sft")
        quality.update(stats)
    sft_eval = evaluate_policy(sft, task, tokenizer, cfg.eval)
    quality.update(sft_gold_mean=sft_eval["gold_mean"], sft_eos_rate=sft_eval["eos_rate"],
                   sft_mean_length=sft_eval["mean_length"])
    best_rng = np.random.default_rng(cfg.seed)
    best = [task.gold_score(p, task.best_response(p, best_rng))
            for p in sft_eval["prompts"]]
    quality["best_response_gold_mean"] = sum(best) / len(best)

    if cfg.reward:
        quality.update(build_default_reward_model(sft, task, tokenizer, out, seed=cfg.seed + 2,
                                                  cfg=cfg.rm))

    quality["build_seconds"] = time.perf_counter() - t0
    quality["torch_version"] = torch.__version__
    # Sorted keys, indent 2: the shipped files' format, so a rebuild diffs cleanly.
    text = json.dumps(quality, indent=2, sort_keys=True)
    atomic_write(out / "quality.json", text)
    atomic_write(out / "build_config.json",
                 json.dumps(asdict(cfg), indent=2, default=str, sort_keys=True))
    print(text)
    print("\nSamples of the SFT policy on held-out prompts:")
    for p, r, g in list(zip(sft_eval["prompts"], sft_eval["responses"], sft_eval["gold"]))[:5]:
        print(f"  [{g:.2f}] {p}  ->  {r}")
    return quality
