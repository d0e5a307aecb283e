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
    # Sized so that `sweep=gfn_vs_ppo` (8 runs) fits in 15 minutes on 2 CPU cores with SmolLM2:
    # there one training step takes 15-30 s and decoding reads the weights once per token step, so
    # evaluation rows are batched wide (all splits share one pass) and the steps are few.
    "cpu": {
        "train.steps": 3,
        "train.batch_prompts": 2,
        "train.samples_per_prompt": 4,
        "train.eval_every": 0,
        "train.eval_prompts": 8,
        "train.eval_samples": 4,
        "train.batch_size": 64,
        # Two runs at a time, each with one torch thread (see `threads`), use both cores without
        # threads of one run waiting on each other: `sweep=gfn_vs_ppo` took 12 min 14 s on 2 cores.
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
