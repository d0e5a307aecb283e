"""The budget and evaluation protocol every method shares (`train.<field>=...`), in a module that
imports nothing heavy, so that the command line reads the run's settings without loading torch
(bench/config.py); methods import it from methods/base.py."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TrainConfig:
    """Budget and evaluation protocol, shared by every method (`train.<field>=...`)."""

    steps: int = field(default=200, metadata={"range": "[1, inf)", "help": "optimizer steps"})
    batch_prompts: int = field(default=4, metadata={"range": "[1, inf)", "help": "distinct queries per optimizer step"})
    samples_per_prompt: int = field(default=4, metadata={"range": "[1, inf)", "help": "trajectories per query per step"})
    eval_every: int = field(default=50, metadata={"range": "[0, inf)", "help": "evaluate on the validation split every N steps (0: only at the end)"})
    eval_prompts: int = field(default=100, metadata={"range": "[1, inf)", "help": "queries per evaluation split (capped by the split size)"})
    eval_samples: int = field(default=10, metadata={"range": "[1, inf)", "help": "samples per query at evaluation; the answer is their majority vote (paper: 10)"})
    eval_temperature: float = field(default=0.1, metadata={"range": "(0, inf)", "help": "sampling temperature at evaluation (paper: 0.1)"})
    batch_size: int = field(default=64, metadata={"range": "[1, inf)", "help": "sequences per forward pass when sampling or scoring without gradients"})
    log_samples: int = field(default=8, metadata={"range": "[0, inf)", "help": "sample rationales kept in the run's table"})
    checkpoint_every: int = field(default=10, metadata={"range": "[0, inf)",
        "help": "steps between checkpoints of the training state, and one at the last step (0: never); "
                "a restarted run continues after its latest checkpoint"})
