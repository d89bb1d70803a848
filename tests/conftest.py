"""Fixtures shared by the test modules."""

import pytest
import torch


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
