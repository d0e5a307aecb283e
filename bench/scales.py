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
    "cpu": {
        "train.steps": 20,
        "train.batch_prompts": 2,
        "train.samples_per_prompt": 4,
        "train.eval_every": 0,
        "train.eval_prompts": 20,
        "train.eval_samples": 5,
        "train.batch_size": 32,
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
