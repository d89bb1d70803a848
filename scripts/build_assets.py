"""Build the default assets from nothing, deterministically, into textenv/assets/.

    corpus -> base LM -> SFT policy -> simulated rankings -> reward model -> quality.json

    python scripts/build_assets.py                                  # the shipped build
    python scripts/build_assets.py --out-dir /tmp/a --pretrain.steps 100   # a quick one

The same command as `textenv build-assets` (agents/cli.py says where its code lives).
"""

import sys

from agents.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["build-assets", *sys.argv[1:]]))
