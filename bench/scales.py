"""Budget presets: `scale=smoke|cpu|paper` (or `auto`: cpu without a GPU, paper with one).

A scale is only data: overrides applied above the dataclass defaults and below a sweep's YAML and
the command line, so any value here can still be changed per run (`train.steps=50`).
"""
from __future__ import annotations

SCALES: dict[str, dict[str, object]] = {
    "smoke": {
        "train.steps": 3,
        "train.batch_prompts": 2,
        "train.samples_per_prompt": 2,
        "train.eval_every": 0,
        "train.eval_prompts": 4,
        "train.eval_samples": 2,
        "train.batch_size": 16,
    },
    # Sized so that `sweep=gfn_vs_ppo` (5 runs, 2 at a time) fits in about 20 minutes on 2 CPU
    # cores with SmolLM2 and trained methods visibly learn (results/gfn_vs_ppo/exploration.md): a
    # training step takes 10-30 s there, and decoding reads the weights once per token step, so
    # evaluation rows are batched wide (all splits share one pass). 32 queries per split give a
    # standard error of about 6 points on an in-distribution accuracy near 50 % (64 queries).
    "cpu": {
        "train.steps": 32,
        "train.batch_prompts": 4,
        "train.samples_per_prompt": 4,
        "train.eval_every": 0,
        "train.eval_prompts": 32,
        "train.eval_samples": 4,
        "train.batch_size": 64,
        # Two runs at a time, each with one torch thread (see `threads`), use both cores without
        # threads of one run waiting on each other.
        "max_parallel": 2,
    },
    "paper": {
        "train.steps": 2000,
        "train.batch_prompts": 16,
        "train.samples_per_prompt": 32,
        "train.eval_every": 100,
        "train.eval_prompts": 500,
        "train.eval_samples": 10,
        "train.batch_size": 64,
    },
}

DESCRIPTIONS: dict[str, str] = {
    "smoke": "seconds per run: checks that everything runs end to end, numbers mean nothing",
    "cpu": "minutes per run on a laptop CPU: small but real training and evaluation",
    "paper": "the paper's budget: needs a GPU",
    "auto": "cpu without a GPU, paper with one",
}
