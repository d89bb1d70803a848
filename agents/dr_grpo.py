"""Dr. GRPO: GRPO without its two biases (Liu et al. 2025, "Understanding R1-Zero-Like
Training: A Critical Perspective").

GRPO divides each group's centred rewards by the group's standard deviation, which weighs
prompts whose responses all score alike (too easy or too hard) far more than the others;
and it averages each response's token losses over the response's length, which rewards a
wrong answer for being long and a right one for being short. Dr. GRPO drops both: the
advantage is R - mean of the group, and the token losses are summed and divided by a
constant (responses x max_new_tokens). Everything else is GRPO (agents/grpo.py): groups
sharing a prompt, the clipped surrogate, the k3 KL to the reference as a loss term.
"""

from __future__ import annotations

from dataclasses import dataclass

from agents.grpo import GRPOConfig
from agents.grpo import train as train_grpo


@dataclass
class DrGRPOConfig(GRPOConfig):
    run_dir: str = "runs/dr_grpo"
    """Where metrics.csv, TensorBoard events and checkpoints go."""
    scale_rewards: bool = False
    """No division by the group's std (the first of GRPO's two biases)."""
    loss_aggregation: str = "constant"
    """Token losses summed over responses x max_new_tokens (the second bias)."""


def train(cfg: DrGRPOConfig) -> dict:
    return train_grpo(cfg)
