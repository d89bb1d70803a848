"""Training a reward model from preference data, then calibrating it.

Two kinds of batch element (see `reward_models.data`):

* a pairwise record (prompt, chosen, rejected): the Bradley-Terry loss
  ``-log sigmoid(r_chosen - r_rejected - margin)`` (`losses.pairwise_loss`);
* a ranked record (prompt, K responses, ranking): InstructGPT's K-wise loss over all
  C(K, 2) pairs of the prompt as ONE batch element (`losses.kwise_loss`). Each response is
  forwarded once and its score reused in its K-1 pairs, which is cheaper than C(K, 2)
  separate pair forwards and (the InstructGPT paper reports) overfits less than shuffling
  the pairs into the dataset as if they were independent.

Every batch, of either kind, is ONE forward pass: all responses of all batch elements are
flattened into rows (N = sum of K_b), right-padded together, scored, and scattered back into
a (B, K_max) score table for the loss.

A held-out split (by prompt, so no prompt is on both sides) is evaluated every
`eval_every` steps; the best state by held-out loss (or accuracy) is kept and restored at the
end, and training stops early after `patience` evaluations without improvement.

After training, `calibrate(rm, prompts, responses)` sets the reward model's gain and bias so
that SFT samples score mean 0, std 1 (only differences are learned; the RL step wants a fixed
scale).

`main(TrainRewardModelArgs)` at the end of this file is the command `textenv reward`: train
on a JSONL file of preferences, calibrate, save.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from reward_models.data import PairwiseRecord, PreferenceRecord, RankedRecord, read_preferences
from reward_models.losses import kwise_loss, pairwise_loss
from textenv.assets import load_policy, load_tokenizer, resolve_assets_dir
from textenv.hf import HFCausalLM, HFRewardModel, HFTokenizer
from textenv.lm import warmup_cosine
from textenv.rewards import RewardModel
from textenv.runlog import Progress, RunLogger
from textenv.tasks import make_task


@dataclass
class RMTrainConfig:
    epochs: int = 12
    """Maximum passes over the training records (early stopping may end sooner)."""
    batch_size: int = 32
    """Batch elements per step: prompts (K responses each) for rankings, pairs for pairwise."""
    lr: float = 1e-3
    """Peak learning rate (AdamW; linear warm-up, then cosine decay to 10%)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    warmup_steps: int = 20
    """Steps of linear learning-rate warm-up."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value (0 = no clipping)."""
    margin: float = 0.0
    """Pairwise loss margin: ask r_chosen - r_rejected to exceed it. Only for pairwise data."""
    center_coef: float = 0.1
    """Weight of an auxiliary loss (mean score of each batch element)^2, which pins every
    prompt's average raw score near 0 (TRL's `center_rewards_coefficient`, Eisenstein et
    al. 2023). Comparisons only constrain scores WITHIN a prompt, so without it each prompt
    gets an arbitrary offset, which scrambles rankings ACROSS prompts. 0 disables it."""
    expand_to_pairs: bool = False
    """Turn each ranking into its C(K, 2) pairs as independent batch elements (the
    non-InstructGPT way, each response forwarded K-1 times per epoch; for comparisons)."""
    val_fraction: float = 0.1
    """Fraction of prompts held out for early stopping (when no validation set is given)."""
    eval_every: int = 0
    """Evaluate on the held-out split every this many steps (0: twice per epoch)."""
    patience: int = 0
    """Stop after this many evaluations without improvement (0: never stop early; the best
    state is kept either way). The held-out loss is noisy, so stopping early tends to stop
    a slowly improving run too soon."""
    select_by: Literal["loss", "accuracy"] = "loss"
    """Held-out metric that picks the best state: lower loss or higher pair accuracy."""
    freeze_layers: int = 0
    """Freeze the embeddings and the first this-many transformer blocks (faster, less
    overfitting on small data). 0 trains everything."""
    head_lr_mult: float = 10.0
    """The scalar head's learning rate is lr times this (it starts from scratch; the trunk
    starts from a trained LM)."""
    head_init_std: float = 0.02
    """Standard deviation of the scalar head's initial weights."""
    seed: int = 0
    """Seed for the head initialisation, the data order and the held-out split."""
    group_by_length: bool = True
    """Batch groups of similar length together (less padding, ~1.5x faster); batches are
    still drawn in random order, and which groups share a batch changes every epoch."""
    log_every: int = 10
    """Write a training-log row every this many steps."""


# ---- data: records -> encoded groups ----------------------------------------------------
@dataclass
class EncodedGroup:
    """One batch element: K responses to one prompt, encoded, best-first `ranking`."""

    seqs: list[list[int]]  # K token lists: [bos] + prompt + response
    ranking: list[int]  # ranking[i] = index into seqs of the i-th best
    pairwise: bool  # True for a (chosen, rejected) record: seqs = [chosen, rejected]
    texts: tuple[str, ...]  # the response texts (to skip pairs of identical texts in accuracy)


def expand_to_pairs(records: Sequence[PreferenceRecord]) -> list[PairwiseRecord]:
    """Every ranking becomes its C(K, 2) pairwise records; pairwise records pass through."""
    out: list[PairwiseRecord] = []
    for r in records:
        out.extend(r.to_pairs() if isinstance(r, RankedRecord) else [r])
    return out


def encode_records(rm: RewardModel, records: Sequence[PreferenceRecord]) -> list[EncodedGroup]:
    groups = []
    for n, r in enumerate(records):
        if isinstance(r, PairwiseRecord):
            texts, ranking, pairwise = (r.chosen, r.rejected), [0, 1], True
        elif isinstance(r, RankedRecord):
            texts, ranking, pairwise = r.responses, list(r.ranking), False
        else:
            raise TypeError(f"record {n} is a {type(r).__name__}, expected a preference record")
        try:
            seqs = rm.encode([r.prompt] * len(texts), list(texts))
        except ValueError as e:  # unknown word, too long: say which record
            where = r.source or f"record {n}"  # file:line for records read from a file
            raise ValueError(f"{where} (prompt {r.prompt!r}): {e}") from e
        groups.append(EncodedGroup(seqs, ranking, pairwise, tuple(texts)))
    return groups


def epoch_batches(groups: Sequence[EncodedGroup], batch_size: int, rng: np.random.Generator,
                  group_by_length: bool) -> list[list[int]]:
    """Indices of the groups in each batch of one epoch.

    With `group_by_length`, a random permutation is cut into windows of 50 batches, each
    window sorted by the longest sequence of a group, cut into batches, and the batch order
    shuffled (like Hugging Face's `group_by_length`): padding shrinks, randomness stays.
    """
    order = rng.permutation(len(groups))
    if group_by_length:
        window = 50 * batch_size
        length = [max(len(s) for s in g.seqs) for g in groups]
        order = np.concatenate([sorted(order[i:i + window], key=lambda j: length[j])
                                for i in range(0, len(order), window)])
    batches = [list(order[i:i + batch_size]) for i in range(0, len(order), batch_size)]
    if group_by_length:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def split_records(records: Sequence[PreferenceRecord], val_fraction: float, seed: int
                  ) -> tuple[list[PreferenceRecord], list[PreferenceRecord]]:
    """(train, val) split BY PROMPT: all records of a prompt land on the same side, so the
    held-out numbers measure generalisation to prompts the model was not trained on."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    prompts = sorted({r.prompt for r in records})
    rng = np.random.default_rng(seed)
    n_val = int(round(val_fraction * len(prompts)))
    if val_fraction > 0 and len(prompts) > 1:
        n_val = min(max(n_val, 1), len(prompts) - 1)  # keep both sides non-empty
    val_prompts = {prompts[i] for i in rng.permutation(len(prompts))[:n_val]}
    train = [r for r in records if r.prompt not in val_prompts]
    val = [r for r in records if r.prompt in val_prompts]
    return train, val


# ---- one batch: one forward, then the loss -----------------------------------------------
def batch_scores(rm: RewardModel, groups: Sequence[EncodedGroup]
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Score every response of every group in ONE forward pass.

    Returns scores (B, K_max) (0 in padded slots), ranking (B, K_max) long and valid
    (B, K_max) bool, padded as `losses.kwise_loss` expects.
    """
    k_max = max(len(g.seqs) for g in groups)
    flat = [s for g in groups for s in g.seqs]  # N = sum of K_b rows, each response once
    ids, mask = rm.collate(flat)  # (N, T), (N, T)
    raw = rm.raw_scores_from_ids(ids, mask)  # (N,)
    B = len(groups)
    dev = raw.device
    valid = torch.zeros(B, k_max, dtype=torch.bool, device=dev)
    ranking = torch.arange(k_max, device=dev).repeat(B, 1)  # (B, K_max) padded slots: k, k+1..
    for b, g in enumerate(groups):
        k = len(g.seqs)
        valid[b, :k] = True
        ranking[b, :k] = torch.as_tensor(g.ranking, device=dev)
    scores = torch.zeros(B, k_max, dtype=raw.dtype, device=dev)
    scores = scores.masked_scatter(valid, raw)  # (B, K_max) row-major fill = flat order
    return scores, ranking, valid


def group_loss(scores: torch.Tensor, ranking: torch.Tensor, valid: torch.Tensor,
               all_pairwise: bool, margin: float) -> torch.Tensor:
    """Pairwise BT loss (with margin) for (chosen, rejected) batches, else the K-wise loss."""
    if all_pairwise:
        return pairwise_loss(scores[:, 0], scores[:, 1], margin)  # slot 0 = chosen
    if margin != 0.0:
        raise ValueError("margin is only supported for pairwise records; use margin=0 for "
                         "rankings (or expand_to_pairs=True)")
    return kwise_loss(scores, ranking, valid)


def centering_loss(scores: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean over batch elements of (mean of its valid scores)^2. scores, valid: (B, K)."""
    group_mean = (scores * valid).sum(1) / valid.sum(1)  # (B,)
    return group_mean.pow(2).mean()


def pair_correct(scores: torch.Tensor, groups: Sequence[EncodedGroup]) -> tuple[int, int]:
    """(correct, total) over the implied pairs whose response texts differ.

    A pair of identical texts carries no information (the labeler's order is a coin flip
    and a reward model must tie them), so it is left out of the accuracy. Ties count wrong.
    """
    s = scores.detach().cpu().numpy()
    correct = total = 0
    for b, g in enumerate(groups):
        for i, j in combinations(range(len(g.ranking)), 2):  # i ranked above j
            wi, lj = g.ranking[i], g.ranking[j]
            if g.texts[wi] == g.texts[lj]:
                continue
            total += 1
            correct += int(s[b, wi] > s[b, lj])
    return correct, total


@torch.no_grad()
def evaluate_groups(rm: RewardModel, groups: Sequence[EncodedGroup], margin: float = 0.0,
                    batch_size: int = 64) -> dict:
    """Held-out loss (same loss as training) and pair accuracy vs the labels."""
    was_training = rm.training
    rm.eval()
    loss_sum, n, correct, total = 0.0, 0, 0, 0
    try:
        for i in range(0, len(groups), batch_size):
            chunk = groups[i:i + batch_size]
            scores, ranking, valid = batch_scores(rm, chunk)
            all_pw = all(g.pairwise for g in chunk)
            loss_sum += group_loss(scores, ranking, valid, all_pw, margin).item() * len(chunk)
            n += len(chunk)
            c, t = pair_correct(scores, chunk)
            correct, total = correct + c, total + t
    finally:
        rm.train(was_training)
    return {"loss": loss_sum / max(n, 1), "accuracy": correct / total if total else float("nan"),
            "pairs": total}


# ---- the training loop -----------------------------------------------------------------------
@dataclass
class TrainResult:
    steps: int = 0
    """Optimizer steps taken."""
    best_step: int = 0
    """Step of the kept (best held-out) state; 0 = the initial state."""
    best_val: dict = field(default_factory=dict)
    """Held-out metrics of the kept state."""
    history: list = field(default_factory=list)
    """One dict per evaluation."""
    stopped_early: bool = False
    interrupted: bool = False
    """Ctrl-C stopped training; the best state so far was kept."""
    seconds: float = 0.0
    responses_forwarded: int = 0
    """Response rows forwarded in training steps (each response once per epoch for rankings)."""


def train_reward_model(rm: RewardModel, train_records: Sequence[PreferenceRecord],
                       cfg: RMTrainConfig, val_records: Sequence[PreferenceRecord] | None = None,
                       run_dir: str | Path | None = None, progress: bool = True) -> TrainResult:
    """Train `rm` in place on preference records; returns a `TrainResult`.

    Without `val_records`, `cfg.val_fraction` of the prompts are held out. At the end the
    model holds the best state by held-out loss (or accuracy) and is in eval mode. Ctrl-C
    stops cleanly with the best state so far; a NaN/inf loss raises FloatingPointError
    naming the step, after restoring the best state.
    """
    if val_records is None and cfg.val_fraction > 0:
        train_records, val_records = split_records(train_records, cfg.val_fraction, cfg.seed)
    if cfg.expand_to_pairs:
        train_records = expand_to_pairs(train_records)
        val_records = expand_to_pairs(val_records) if val_records else val_records
    if not train_records:
        raise ValueError("no training records")
    train = encode_records(rm, train_records)
    val = encode_records(rm, val_records) if val_records else []
    val.sort(key=lambda g: max(len(s) for s in g.seqs))  # less padding; order is irrelevant

    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    rm.transformer.requires_grad_(True)
    if cfg.freeze_layers > 0:
        if not hasattr(rm.transformer, "blocks"):
            raise ValueError(f"freeze_layers needs textenv's own reward model, not {rm!r}")
        frozen = [rm.transformer.tok_emb, rm.transformer.pos_emb,
                  *rm.transformer.blocks[:cfg.freeze_layers]]
        for module in frozen:
            module.requires_grad_(False)
    params = [p for p in rm.parameters() if p.requires_grad]
    head_params = list(rm.head.parameters())
    trunk_params = [p for p in params if all(p is not h for h in head_params)]
    opt = torch.optim.AdamW([{"params": trunk_params, "lr_mult": 1.0},
                             {"params": head_params, "lr_mult": cfg.head_lr_mult}],
                            lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))

    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    total_steps = cfg.epochs * steps_per_epoch
    eval_every = cfg.eval_every or max(1, steps_per_epoch // 2)
    logger = (RunLogger(run_dir, filename="train_log.csv", step_name="step")
              if run_dir is not None else None)
    result = TrainResult()
    t0 = time.perf_counter()

    def lr_at(step: int) -> float:
        return cfg.lr * warmup_cosine(step, total_steps, cfg.warmup_steps)

    def log(step: int, row: dict) -> None:
        if logger is not None:
            logger.log(step, row)

    def snapshot() -> dict:
        return {k: v.detach().clone() for k, v in rm.state_dict().items()}

    def is_better(m: dict, best: dict) -> bool:
        if cfg.select_by == "accuracy":
            return m["accuracy"] > best["accuracy"]
        return m["loss"] < best["loss"]

    best_state = snapshot()
    if val:
        result.best_val = evaluate_groups(rm, val, cfg.margin)
        result.history.append({"step": 0, **result.best_val})
        log(0, {"epoch": 0, "val_loss": result.best_val["loss"],
                       "val_accuracy": result.best_val["accuracy"]})
    bad_evals, step = 0, 0
    recent_loss: list[float] = []
    recent_acc: list[tuple[int, int]] = []
    bar = Progress(total_steps, desc="reward model", unit="step", enabled=progress)
    rm.train()
    try:
        for epoch in range(cfg.epochs):
            if result.stopped_early:
                break
            for batch in epoch_batches(train, cfg.batch_size, rng, cfg.group_by_length):
                chunk = [train[i] for i in batch]
                for group in opt.param_groups:
                    group["lr"] = lr_at(step) * group["lr_mult"]
                scores, ranking, valid = batch_scores(rm, chunk)  # one forward
                result.responses_forwarded += int(valid.sum())
                loss = group_loss(scores, ranking, valid, all(g.pairwise for g in chunk),
                                  cfg.margin)
                if cfg.center_coef > 0:
                    loss = loss + cfg.center_coef * centering_loss(scores, valid)
                if not torch.isfinite(loss):
                    rm.load_state_dict(best_state)
                    raise FloatingPointError(
                        f"reward-model training: loss is {loss.item()} at step {step} (epoch "
                        f"{epoch}); the model was restored to its best state (step "
                        f"{result.best_step})")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                opt.step()
                step += 1
                result.steps = step
                bar.update(1, loss=loss.item())
                recent_loss.append(loss.item())
                recent_acc.append(pair_correct(scores, chunk))

                if step % cfg.log_every == 0:
                    c, t = map(sum, zip(*recent_acc))
                    row = {"epoch": epoch, "lr": lr_at(step - 1),
                           "train_loss": float(np.mean(recent_loss)),
                           "train_accuracy": c / t if t else float("nan"),
                           "seconds": time.perf_counter() - t0}
                    log(step, row)
                    recent_loss, recent_acc = [], []

                if val and (step % eval_every == 0 or step == total_steps):
                    m = evaluate_groups(rm, val, cfg.margin)
                    result.history.append({"step": step, **m})
                    log(step, {"epoch": epoch, "val_loss": m["loss"],
                                      "val_accuracy": m["accuracy"],
                                      "seconds": time.perf_counter() - t0})
                    if is_better(m, result.best_val):
                        result.best_val, result.best_step = m, step
                        best_state, bad_evals = snapshot(), 0
                    else:
                        bad_evals += 1
                    bar.update(0, val_loss=m["loss"], val_acc=m["accuracy"])
                    if cfg.patience and bad_evals >= cfg.patience:
                        result.stopped_early = True
                        break
    except KeyboardInterrupt:
        result.interrupted = True
        print(f"\ninterrupted at step {step}: keeping the best state (step {result.best_step})")
    finally:
        bar.close()
        if logger is not None:
            logger.close()
    if val:
        rm.load_state_dict(best_state)  # the best held-out state, not the last one
    else:
        result.best_step = step
    rm.requires_grad_(True)
    rm.eval()
    result.seconds = time.perf_counter() - t0
    return result


@torch.no_grad()
def calibrate(rm: RewardModel, prompts: Sequence[str], responses: Sequence[str]) -> dict:
    """Set rm.gain and rm.bias so that these (prompt, response) pairs — samples of the SFT
    policy — score mean 0 and std 1. Returns the statistics used."""
    raw = rm.raw_score(prompts, responses).double()  # (N,)
    if raw.numel() < 2:
        raise ValueError("calibrate needs at least 2 samples")
    mean, std = raw.mean().item(), raw.std(correction=0).item()
    if not (math.isfinite(std) and std > 1e-8):
        raise ValueError(f"cannot calibrate: raw scores have std {std} (the model gives "
                         f"every sample the same score)")
    rm.gain, rm.bias = 1.0 / std, -mean / std  # score = (raw - mean) / std
    return {"raw_mean": mean, "raw_std": std, "gain": rm.gain, "bias": rm.bias,
            "calibration_samples": int(raw.numel())}


# ---- the command: `textenv reward` -----------------------------------------------------------
@dataclass
class TrainRewardModelArgs:
    """Train a reward model (or an ensemble) on a JSONL file of preferences.

    The file may hold pairwise records {"prompt", "chosen", "rejected"} and/or ranked records
    {"prompt", "responses", "ranking"} (see reward_models/data.py); a malformed line stops
    with file:line. The reward model starts from an LM (default: the shipped SFT policy), is
    calibrated on fresh samples of --calibration-policy (mean 0, std 1) and is written to
    out_dir with tokenizer.json beside it. Ctrl-C stops training and still saves the best
    state so far."""

    data: Path
    """JSONL preference file (pairwise and/or ranked records)."""
    val_data: Path | None = None
    """Optional held-out JSONL; otherwise --train.val-fraction of the prompts are held out."""
    init_dir: Path | None = None
    """Directory with the LM to start from and its tokenizer.json (default: the task's
    shipped assets)."""
    init_name: str = "sft"
    """LM to initialise the trunk from ("sft" or "base")."""
    out_dir: Path = Path("runs/reward_model")
    """Where the reward model is written."""
    name: str | None = None
    """File stem: out_dir/NAME.safetensors + NAME.json (default "reward"). An ensemble
    writes NAME.json + NAME_i.* (default "reward_ensemble", what reward="ensemble" loads)."""
    run_dir: Path | None = None
    """TensorBoard + CSV logs (default: out_dir/logs)."""
    task: str = "reviews"
    """Task whose train prompts are used for calibration samples."""
    calibration_policy: str = "sft"
    """LM in init_dir whose samples define score mean 0, std 1."""
    calibration_samples: int = 1024
    """Number of calibration samples (0: leave gain=1, bias=0)."""
    n_models: int = 1
    """Train this many models (seeds seed, seed+1, ...) and save them as an ensemble."""
    ensemble_mode: Literal["mean", "conservative"] = "mean"
    """How the ensemble combines its members."""
    ensemble_k: float = 1.0
    """Conservative mode: score = mean - k * std."""
    threads: int = 2
    """torch threads."""
    train: RMTrainConfig = field(default_factory=RMTrainConfig)


def main(args: TrainRewardModelArgs) -> dict:
    """`textenv reward`: train, calibrate and save; returns a summary of the training."""
    # Imported here: both modules import this one.
    from reward_models.ensemble import train_ensemble
    from reward_models.pipeline import calibration_set

    torch.set_num_threads(args.threads)
    name = args.name or ("reward_ensemble" if args.n_models > 1 else "reward")
    args.init_dir = resolve_assets_dir(args.init_dir, args.task)
    tokenizer = load_tokenizer(args.init_dir)
    lm = load_policy(args.init_name, args.init_dir, tokenizer)
    records = read_preferences(args.data)
    val = read_preferences(args.val_data) if args.val_data else None
    print(f"{len(records)} records from {args.data}" + (f", {len(val)} held out from "
                                                        f"{args.val_data}" if val else ""))
    run_dir = args.run_dir or args.out_dir / "logs"
    calibration = None
    if args.calibration_samples > 0:
        policy = (lm if args.calibration_policy == args.init_name
                  else load_policy(args.calibration_policy, args.init_dir, tokenizer))
        calibration = calibration_set(policy, tokenizer, make_task(args.task, args.init_dir),
                                      args.calibration_samples, seed=args.train.seed + 12345)
    hf = isinstance(lm, HFCausalLM)  # a Hugging Face LM: the reward model is one too
    if hf and args.n_models > 1:
        raise SystemExit("error: ensembles of Hugging Face reward models are not supported; "
                         "use --n-models 1")
    if not isinstance(tokenizer, HFTokenizer):  # an HF tokenizer is saved with the model
        tokenizer.save(args.out_dir / "tokenizer.json")
    extra = {"trained_by": "textenv reward", "data": str(args.data),
             "init": f"{args.init_dir}/{args.init_name}", "config": asdict(args.train)}

    if args.n_models > 1:
        if val is not None:
            records = records + val  # train_ensemble makes one shared split by prompt
        ens, results = train_ensemble(lm, tokenizer, records, args.train, args.n_models,
                                      calibration, args.ensemble_mode, args.ensemble_k, run_dir)
        ens.save(args.out_dir, name)
        summary = {"members": [{"best_step": r.best_step, **r.best_val} for r in results]}
    else:
        rm = (HFRewardModel if hf else RewardModel).from_lm(
            lm, tokenizer, head_init_std=args.train.head_init_std, seed=args.train.seed)
        try:
            result = train_reward_model(rm, records, args.train, val_records=val,
                                        run_dir=run_dir)
        except FloatingPointError as e:
            # The model was restored to its best state; keep it, under a name that says so.
            rm.save(args.out_dir, f"{name}_last_good", extra={**extra, "error": str(e)})
            raise SystemExit(f"error: {e}\nsaved the last good state to "
                             f"{args.out_dir / (name + '_last_good')}.safetensors") from e
        if calibration is not None:
            calibrate(rm, *calibration)
        rm.save(args.out_dir, name, extra={**extra, "best_step": result.best_step,
                                           "interrupted": result.interrupted})
        summary = {"steps": result.steps, "best_step": result.best_step,
                   "stopped_early": result.stopped_early, "interrupted": result.interrupted,
                   "val": result.best_val, "seconds": result.seconds,
                   "gain": rm.gain, "bias": rm.bias}
    print(json.dumps(summary, indent=2))
    print(f"saved to {args.out_dir / name}{'/' if hf else '.json'}; logs in {run_dir}")
    return summary
