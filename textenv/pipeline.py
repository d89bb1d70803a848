"""The first half of the InstructGPT pipeline: corpus -> base LM -> SFT policy.

Each stage is a function with a config dataclass (field docstrings are the commands'
`--help`). Two commands run one stage each:

    textenv pretrain --out-dir runs/pretrain        # pretrain_main(PretrainArgs)
    textenv sft --base-dir runs/pretrain            # sft_main(SFTArgs)

`textenv build-assets` (`reward_models.pipeline.build_assets_main`) runs every stage in
order with one seed, the reward-model stage included.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from textenv.assets import load_policy, load_tokenizer
from textenv.lm import (
    encode_prompt,
    generate_text,
    make_pretrain_batch,
    make_sft_batch,
    perplexity,
    train_lm,
)
from textenv.model import GPT, GPTConfig
from textenv.tasks import Task, make_task
from textenv.tokenizer import WordTokenizer


def default_model_config(vocab_size: int) -> GPTConfig:
    """The default tiny GPT: 3 layers, 4 heads, 128 wide (about 0.6M parameters)."""
    return GPTConfig(vocab_size=vocab_size, block_size=64, n_layer=3, n_head=4, n_embd=128)


@dataclass
class PretrainConfig:
    corpus_docs: int = 30000
    """Number of synthetic pretraining documents."""
    val_docs: int = 2000
    """Held-out documents for the validation perplexity."""
    steps: int = 1200
    """Optimizer steps."""
    batch_size: int = 64
    """Documents per step."""
    lr: float = 3e-3
    """Peak learning rate (AdamW, warm-up then cosine)."""
    n_layer: int = 3
    """Transformer blocks."""
    n_head: int = 4
    """Attention heads."""
    n_embd: int = 128
    """Width of the residual stream."""
    block_size: int = 64
    """Longest sequence (prompt + response) the model accepts; raised to the task's longest
    episode (1 + max_prompt_tokens + max_response_tokens: a whole dialogue) if shorter."""


@dataclass
class SFTConfig:
    demos: int = 20000
    """Number of (imperfect) demonstrations to fine-tune on."""
    steps: int = 600
    """Optimizer steps."""
    batch_size: int = 64
    """Demonstrations per step."""
    lr: float = 1e-3
    """Peak learning rate."""


@dataclass
class PolicyEvalConfig:
    prompts: int = 512
    """Responses to sample, cycling through the eval-split prompts."""
    temperature: float = 1.0
    """Sampling temperature."""
    seed: int = 1234
    """Seed for prompts and sampling (fixed so numbers are comparable across builds)."""


@dataclass
class PipelineStats:
    values: dict = field(default_factory=dict)


def build_tokenizer(task: Task) -> WordTokenizer:
    return WordTokenizer(task.vocabulary())


def pretrain(task: Task, tokenizer: WordTokenizer, cfg: PretrainConfig, seed: int
             ) -> tuple[GPT, dict]:
    """Train a base LM on the task's unconditioned corpus; returns it and its stats."""
    rng = np.random.default_rng(seed)
    encode = lambda doc: [tokenizer.bos_id] + tokenizer.encode(doc)
    train_docs = [encode(d) for d in task.corpus(cfg.corpus_docs, rng)]
    val_docs = [encode(d) for d in task.corpus(cfg.val_docs, np.random.default_rng(seed + 999))]
    torch.manual_seed(seed)
    # Room for the task's longest episode (a whole dialogue, for a multi-turn task).
    block_size = max(cfg.block_size, 1 + task.max_prompt_tokens + task.max_response_tokens)
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=block_size,
                          n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd))

    def sample(r: np.random.Generator):
        idx = r.integers(len(train_docs), size=cfg.batch_size)
        return make_pretrain_batch([train_docs[i] for i in idx], tokenizer.pad_id)

    t0 = time.perf_counter()
    losses = train_lm(model, sample, steps=cfg.steps, lr=cfg.lr, seed=seed, desc="pretrain")
    stats = {"base_val_perplexity": perplexity(model, val_docs, tokenizer.pad_id),
             "base_final_train_loss": float(np.mean(losses[-50:])),
             "base_params": model.num_params(),
             "pretrain_seconds": time.perf_counter() - t0}
    return model, stats


def supervised_finetune(base: GPT, task: Task, tokenizer: WordTokenizer, cfg: SFTConfig,
                        seed: int) -> tuple[GPT, dict]:
    """Fine-tune a copy of `base` on demonstrations, with the loss on response tokens only
    (for a multi-turn task, on the agent's tokens only: the user's replies are context)."""
    rng = np.random.default_rng(seed)
    prompts = [task.sample_prompt(rng, "train") for _ in range(cfg.demos)]
    texts = [task.demonstration(p, rng) for p in prompts]
    demos = [(encode_prompt(tokenizer, p), tokenizer.encode(t)) for p, t in zip(prompts, texts)]
    # Per response token: is it a target? (the agent's words; one token per word)
    agent = ([torch.tensor(task.agent_mask(t)) for t in texts]
             if hasattr(task, "user_reply") else None)
    model = GPT(base.config)
    model.load_state_dict(base.state_dict())

    def sample(r: np.random.Generator):
        idx = r.integers(len(demos), size=cfg.batch_size)
        batch = make_sft_batch([demos[i][0] for i in idx], [demos[i][1] for i in idx],
                               tokenizer.pad_id)
        if agent is not None:
            for row, i in enumerate(idx):
                start = len(demos[i][0])
                batch.loss_mask[row, start:start + len(agent[i])] &= agent[i]
        return batch

    t0 = time.perf_counter()
    losses = train_lm(model, sample, steps=cfg.steps, lr=cfg.lr, seed=seed, desc="sft")
    return model, {"sft_final_train_loss": float(np.mean(losses[-50:])),
                   "sft_seconds": time.perf_counter() - t0}


@torch.no_grad()
def generate_dialogues(model: GPT, tokenizer, task: Task, prompts: list[str], *,
                       temperature: float = 1.0, generator: torch.Generator | None = None,
                       seed: int = 0, split: str = "train", batch_size: int = 256) -> list[str]:
    """One whole dialogue per prompt of a multi-turn task: the model writes the agent's
    turns (sampled at `temperature`; never `<pad>`, `<bos>`, `<unk>`), the task's simulated
    user replies, exactly as in the env (`EpisodeBatch`, KV-cached: a reply is prefilled,
    not recomputed). Hidden states are drawn from `seed` among the games of `split`.
    Returns the transcripts (what follows each prompt)."""
    from textenv.decoding import IncrementalDecoder
    from textenv.env import EpisodeBatch

    model.eval()
    banned = [tokenizer.pad_id, tokenizer.bos_id, getattr(tokenizer, "unk_id", 3)]
    out: list[str] = []
    for first in range(0, len(prompts), batch_size):
        chunk = list(prompts[first:first + batch_size])
        n = len(chunk)
        core = EpisodeBatch(n, task=task, reward=lambda p, r: np.zeros(len(p)),
                            max_new_tokens=None, assets_dir=None, tokenizer=tokenizer)
        core.start(range(n), chunk, [np.random.default_rng([seed, first + i]) for i in range(n)],
                   split)
        decoder = IncrementalDecoder(model, n, 2 * core.seq_len)
        total = core.prompt_len + core.resp_len  # (n,)
        logits = decoder.advance(core.tokens, total, np.ones(n, dtype=bool),
                                 np.zeros(n, dtype=np.int64), ~core.done, core.pad_id)
        while True:
            logits[:, banned] = float("-inf")
            probs = torch.softmax(logits / temperature, dim=-1)  # (n, V)
            actions = torch.multinomial(probs, 1, generator=generator)[:, 0].numpy()
            live = ~core.done
            core.append(actions, live)
            grew = np.where(live, core.prompt_len + core.resp_len - total, 0)  # (n,)
            total = core.prompt_len + core.resp_len
            if core.done.all():
                break
            logits = decoder.advance(core.tokens, total, np.zeros(n, dtype=bool), grew,
                                     ~core.done, core.pad_id)
        out += [tokenizer.decode(core.response_ids(i)) for i in range(n)]
    return out


def sample_responses(model: GPT, tokenizer, task: Task, prompts: list[str], *,
                     max_new_tokens: int | None = None, temperature: float = 1.0,
                     generator: torch.Generator | None = None, seed: int = 0,
                     split: str = "train") -> list[str]:
    """One sample per prompt: a response (`generate_text`), or for a multi-turn task a
    whole dialogue with the simulated user (`generate_dialogues`)."""
    if hasattr(task, "user_reply"):
        return generate_dialogues(model, tokenizer, task, prompts, temperature=temperature,
                                  generator=generator, seed=seed, split=split)
    return generate_text(model, tokenizer, prompts,
                         max_new_tokens=max_new_tokens or task.max_response_tokens,
                         temperature=temperature, generator=generator)


def evaluate_policy(model: GPT, task: Task, tokenizer: WordTokenizer, cfg: PolicyEvalConfig,
                    max_new_tokens: int | None = None) -> dict:
    """Mean gold score and EOS rate of samples on held-out prompts (for a multi-turn task
    also the success rate and the mean number of agent turns)."""
    prompts = (task.prompts("eval") * cfg.prompts)[:cfg.prompts]  # every eval prompt, cycled
    gen = torch.Generator().manual_seed(cfg.seed)
    responses = sample_responses(model, tokenizer, task, prompts, max_new_tokens=max_new_tokens,
                                 temperature=cfg.temperature, generator=gen, seed=cfg.seed,
                                 split="eval")
    gold = [task.gold_score(p, r) for p, r in zip(prompts, responses)]
    out = {"gold_mean": float(np.mean(gold)),
           "eos_rate": float(np.mean([r.endswith("<eos>") for r in responses])),
           "mean_length": float(np.mean([len(r.split()) for r in responses])),
           "prompts": prompts, "responses": responses, "gold": gold}
    if hasattr(task, "user_reply"):
        parts = [task.gold_components(p, r) for p, r in zip(prompts, responses)]
        turns = [sum(role == "agent" for role, _ in task.split_transcript(r)) for r in responses]
        out.update(success_rate=float(np.mean([c["success"] for c in parts])),
                   mean_turns=float(np.mean(turns)),
                   eos_rate=float(np.mean([c["eos"] == 1.0 for c in parts])))  # every turn
    return out


# ---- the two commands ------------------------------------------------------------------------
@dataclass
class PretrainArgs:
    """Pretrain a base LM on the task's synthetic corpus (the first stage of build-assets)."""

    out_dir: Path = Path("runs/pretrain")
    """Where to write base.safetensors, base.json and tokenizer.json."""
    seed: int = 0
    """Random seed."""
    task: str = "reviews"
    """Task whose corpus to train on."""
    threads: int = 2
    """torch threads."""
    config: PretrainConfig = field(default_factory=PretrainConfig)


def pretrain_main(args: PretrainArgs) -> dict:
    """`textenv pretrain`: train a base LM and save it with its tokenizer; returns its stats."""
    torch.set_num_threads(args.threads)
    task = make_task(args.task)
    tokenizer = build_tokenizer(task)
    tokenizer.save(args.out_dir / "tokenizer.json")
    model, stats = pretrain(task, tokenizer, args.config, seed=args.seed)
    model.save(args.out_dir, "base")
    print(json.dumps(stats, indent=2))
    return stats


@dataclass
class SFTArgs:
    """Supervised fine-tuning of a base LM on imperfect demonstrations (loss on responses
    only)."""

    base_dir: Path = Path("runs/pretrain")
    """Directory holding base.safetensors/base.json and tokenizer.json."""
    out_dir: Path = Path("runs/sft")
    """Where to write sft.safetensors, sft.json and tokenizer.json."""
    seed: int = 1
    """Random seed."""
    task: str = "reviews"
    """Task whose demonstrations to train on."""
    threads: int = 2
    """torch threads."""
    config: SFTConfig = field(default_factory=SFTConfig)
    eval: PolicyEvalConfig = field(default_factory=PolicyEvalConfig)


def sft_main(args: SFTArgs) -> dict:
    """`textenv sft`: fine-tune the base LM of base_dir, save it, and report its gold score."""
    torch.set_num_threads(args.threads)
    task = make_task(args.task)
    tokenizer = load_tokenizer(args.base_dir)
    base = load_policy("base", args.base_dir, tokenizer)
    model, stats = supervised_finetune(base, task, tokenizer, args.config, seed=args.seed)
    model.save(args.out_dir, "sft")
    tokenizer.save(args.out_dir / "tokenizer.json")
    result = evaluate_policy(model, task, tokenizer, args.eval)
    stats.update(sft_gold_mean=result["gold_mean"], sft_eos_rate=result["eos_rate"])
    print(json.dumps(stats, indent=2))
    return stats
