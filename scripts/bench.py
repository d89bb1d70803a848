"""Benchmark textenv on this machine; the figures and their methods are in agents/bench.py.

    python scripts/bench.py --quick                     # ~30 s: everything but PPO-to-target
    python scripts/bench.py --json runs/bench.json      # full run (< 10 min)
"""

import tyro

from agents.bench import BenchConfig, main

if __name__ == "__main__":
    main(tyro.cli(BenchConfig))
