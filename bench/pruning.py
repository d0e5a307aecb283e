"""Pruning: a sweep stops trials that fall behind the others at a validation step (Optuna pruners).

The sweep file's optional `pruner:` chooses the rule (default: none, every trial runs its budget):

    pruner: {type: median, n_startup_trials: 5, n_warmup_steps: 0}
    pruner: {type: hyperband, reduction_factor: 3}      # min_resource, max_resource: optimizer steps
    pruner: none

Any value may be given per scale (`n_warmup_steps: {cpu: 0, paper: 500}`). Steps are the optimizer
steps of a run. Each time a method evaluates on the validation split (every `train.eval_every`
steps, `ctx.evaluate`), the worker reports the sweep's objective to the Optuna trial it claimed
(`trial.report(value, step)`) and asks the pruner (`trial.should_prune()`). When the pruner says so,
`Pruned` is raised out of the evaluation: training stops there, the MLflow run ends KILLED with the
tags `pruned=true` and `pruned_step`, the trial is told PRUNED (it counts towards the budget and is
never retried) and its checkpoint folder is removed (bench/training.py, bench/worker.py).

A run with `train.eval_every=0` evaluates only at its end: nothing is reported, nothing is pruned.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import optuna

from methods.train_config import TrainConfig

# type -> field -> (default, minimum, help). A default of None is filled in from the entry's config.
FIELDS: dict[str, dict[str, tuple[int | None, int, str]]] = {
    "median": {
        "n_startup_trials": (5, 0, "no trial is pruned until this many trials of the entry have completed"),
        "n_warmup_steps": (0, 0, "a trial is not pruned before this many optimizer steps"),
        "interval_steps": (1, 1, "after the warm-up, prune only at steps that are multiples of this "
                                 "(evaluations happen every train.eval_every steps anyway)"),
        "n_min_trials": (1, 1, "at least this many completed trials must have reported at a step to prune there"),
    },
    "hyperband": {
        "min_resource": (None, 1, "steps every trial runs before its first rung (default: the entry's "
                                  "train.eval_every, its first evaluation)"),
        "max_resource": (None, 1, "steps of a trial that runs to the end (default: the entry's train.steps)"),
        "reduction_factor": (3, 2, "at each rung, 1 in reduction_factor of the trials goes on"),
        "bootstrap_count": (0, 0, "trials a rung needs before any trial is promoted from it"),
    },
}
TYPES = (*FIELDS, "none")
HELP = {kind: {name: text for name, (_, _, text) in fields.items()} for kind, fields in FIELDS.items()}


@dataclass(frozen=True)
class PrunerSpec:
    type: str  # median | hyperband
    settings: dict[str, Any]  # field -> int, or scale -> int


class Pruned(optuna.TrialPruned):
    """Raised from a run's evaluation at `step` when the pruner stops its trial (the objective was `value`)."""

    def __init__(self, step: int, value: float):
        super().__init__(f"pruned at step {step} (objective {value:.4g})")
        self.step, self.value = step, value

    def __reduce__(self):  # pickled with its own arguments (an exception pickles its message by default)
        return Pruned, (self.step, self.value)


def read_spec(read, value: Any) -> PrunerSpec | None:
    """The `pruner:` entry of a sweep file; `read` is its sweep_file.Reader (errors name file and key)."""
    if value is None or value == "none":
        return None
    if not isinstance(value, dict):
        raise read.error("pruner", f"expected none or a mapping with a type ({', '.join(TYPES)}), got {value!r}")
    kind = value.get("type")
    if "type" not in value:
        raise read.error("pruner", "missing type")
    if kind == "none":
        if set(value) != {"type"}:
            raise read.error("pruner", "type none takes no other key")
        return None
    if kind not in FIELDS:
        raise read.error("pruner.type", f"expected {', '.join(FIELDS)} or none, got {kind!r}")
    settings = read.mapping(value, "pruner", {"type", *FIELDS[kind]})
    del settings["type"]
    for name, item in settings.items():
        least = FIELDS[kind][name][1]
        read.by_scale(item, f"pruner.{name}", lambda n, least=least: type(n) is int and n >= least,
                      f"an integer of at least {least}")
    return PrunerSpec(kind, settings)


def build(spec: PrunerSpec, settings: dict[str, int], train: TrainConfig) -> optuna.pruners.BasePruner:
    """The pruner of one entry's study, from `settings` (the spec's values at the sweep's scale) and
    the entry's budget; ValueError with a one-line reason when they do not fit."""
    values = {name: settings.get(name, default) for name, (default, _, _) in FIELDS[spec.type].items()}
    if spec.type == "median":
        return optuna.pruners.MedianPruner(values["n_startup_trials"], values["n_warmup_steps"],
                                           values["interval_steps"], n_min_trials=values["n_min_trials"])
    low = values["min_resource"] if values["min_resource"] is not None else max(train.eval_every, 1)
    high = values["max_resource"] if values["max_resource"] is not None else train.steps
    if low >= high:
        raise ValueError(f"hyperband min_resource ({low}) must be below max_resource ({high}; defaults: "
                         "train.eval_every and train.steps)")
    return optuna.pruners.HyperbandPruner(low, high, values["reduction_factor"], values["bootstrap_count"])


def reporter(trial: optuna.Trial, metric: str) -> Callable[[int, dict[str, float]], None]:
    """What the run calls after each validation during training: report `metric` to `trial` (the
    worker's own handle on the trial it claimed, whose study carries the pruner) and raise `Pruned`
    when the pruner stops it. A run that does not report the metric is never pruned."""

    def report(step: int, metrics: dict[str, float]) -> None:
        value = metrics.get(metric)
        if value is None:
            return
        trial.report(float(value), step)
        if trial.should_prune():
            raise Pruned(step, float(value))

    return report
