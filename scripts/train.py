"""Train any agent on TextGen-v0: `python scripts/train.py ALGO --help`, ALGO in
{ppo, reinforce, rloo, grpo, best-of-n, sb3-ppo}.

    python scripts/train.py ppo --total-env-steps 100000
    python scripts/train.py rloo --rloo-k 4 --seed 2
    python scripts/train.py grpo --run-dir runs/grpo --resume
"""

from __future__ import annotations

import json
from typing import Annotated, Union

import tyro

from agents import ALGORITHMS

if __name__ == "__main__":
    Choice = Union[tuple(Annotated[cls, tyro.conf.subcommand(name)]  # noqa: UP007
                         for name, (cls, _) in ALGORITHMS.items())]
    cfg = tyro.cli(Choice)
    train = next(fn for cls, fn in ALGORITHMS.values() if type(cfg) is cls)
    result = train(cfg)
    print(json.dumps(result["final"], indent=2))
    print(f"run directory: {result['run_dir']}")
