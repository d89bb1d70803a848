"""K-wise vs pairwise reward-model training at the same number of labelled responses.

    python scripts/compare_rm_losses.py                       # default assets, 1 seed
    python scripts/compare_rm_losses.py --seeds 0 1 2 --out-dir runs/compare_rm

The same command as `textenv compare-rm-losses` (agents/cli.py says where its code lives).
"""

import sys

from agents.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["compare-rm-losses", *sys.argv[1:]]))
