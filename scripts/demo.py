"""`make demo`: LM-PPO on TextGen-v0 for a few minutes, before/after samples, a plot."""

import tyro

from agents.demo import DemoConfig, main

if __name__ == "__main__":
    main(tyro.cli(DemoConfig))
