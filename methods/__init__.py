"""Method registry: name -> module. A method module defines `Config` (a dataclass whose fields all
carry a help text) and `train(ctx, cfg)`, and may define `select(engine, examples, traj)`, a
test-time rule that picks each query's answer instead of the majority vote (best-of-N), and
`check(cfg, task)`, which refuses settings that cannot work on a task before a run starts, and
`TRAINS = False` when it learns nothing (the harness then runs it in one process). A method that
trains restores its state with `ctx.resume`, ends each step with `ctx.end_step` (methods/base.py) and
calls `ctx.parallel.sync` and `ctx.parallel.average_gradients` (methods/parallel.py) so that it
also trains with `trainer.num_processes` > 1. Adding a method is one module and one line here."""
from __future__ import annotations

import importlib
from types import ModuleType

METHODS: dict[str, str] = {
    "gfn_tb": "methods.gfn_tb",
    "ppo": "methods.ppo",
    "sft": "methods.sft",
    "prompting": "methods.prompting",
    "best_of_n": "methods.best_of_n",
}


def method_module(name: str) -> ModuleType:
    if name not in METHODS:
        raise KeyError(f"unknown method {name!r}; choose one of: {', '.join(sorted(METHODS))}")
    return importlib.import_module(METHODS[name])
