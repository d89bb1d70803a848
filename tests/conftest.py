"""Fixtures shared by the test modules."""

import pytest
import torch

from textenv.model import GPT, GPTConfig


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Tiny models on a shared 2-core box: one torch thread avoids contention and is faster."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def text_reward(prompts, responses):
    """A cheap reward that depends on the text (so mixing up envs would show)."""
    return [len(r.split()) + 0.01 * len(p) for p, r in zip(prompts, responses)]


@pytest.fixture
def reward_fn():
    return text_reward


def tiny_gpt(**kw) -> GPT:
    """A tiny random GPT (seed 0, eval mode) for model and decoding tests."""
    torch.manual_seed(0)
    cfg = {"vocab_size": 17, "block_size": 40, "n_layer": 2, "n_head": 2, "n_embd": 16}
    cfg.update(kw)
    return GPT(GPTConfig(**cfg)).eval()


def left_padded(lengths, T, vocab=17, pad=0, seed=1):
    """Random ids (never pad), LEFT-padded to width T: ids (B, T), mask (B, T) bool."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (len(lengths), T), generator=g)
    mask = torch.arange(T)[None, :] >= T - torch.tensor(lengths)[:, None]  # (B, T)
    return ids.masked_fill(~mask, pad), mask
