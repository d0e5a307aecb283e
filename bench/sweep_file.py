"""A sweep file, `sweeps/<name>.yaml`: its format, and the reader that checks it (errors name the
file and the key inside it); bench/sweep_plan.py plans and bench/sweep.py runs what it describes. Reading one loads
nothing heavy, so that `--help` lists every sweep and a broken file is reported at once.

    description: one line, shown by --help
    base:                                                 # overrides for every run
      task: arithmetic
      model: tiny
      train.steps: {smoke: 3, cpu: 3, paper: 1000}        # any value may be given per scale
    tasks:                                                # overrides for runs of one task
      arithmetic: {task.max_actions: 16}
    objective: {metric: valid/accuracy, direction: maximize}
    pruner: {type: median, n_startup_trials: 5, n_warmup_steps: 0}   # optional (bench/pruning.py)
    methods:                                              # the leaderboard's rows
      gfn_tb:
        trials: 2                                         # or per scale: {smoke: 1, cpu: 0, paper: 20}
        fixed: {method.loss: tb}                          # overrides for this entry's runs
        search:                                           # Optuna search space
          method.lr: {type: float, low: 1.0e-5, high: 1.0e-3, log: true}
          method.loss: {type: categorical, choices: [tb, subtb, vargrad]}
          train.batch_prompts: {type: int, low: 2, high: 8, step: 2}
      zero_shot:                                          # an entry named apart from its method
        method: prompting
        trials: 1
        fixed: {method.shots: 0}
    final:
      seeds: [0, 1]                                       # or per scale: {cpu: [0, 1], paper: [0, 1, 2]}

Layers, lowest first: scale preset < `base` < `tasks.<task>` < the entry's `fixed` < command line <
suggestions. `method=NAME` on the command line runs only the entries named NAME or using method
NAME; `trials=N` gives every entry a budget of N trials.

An entry names a key in `fixed` or in `search`, never both (an error: the fixed value would be
silently ignored). `base` and `tasks.<task>` may set a key an entry searches: they hold every
entry's value, which that entry's trials replace.

`trials: 0` (at a scale, or `trials=0` for every entry) means no tuning: no trial runs for that
entry, and its finals use its layers as they stand, without suggestions, so a searched key keeps
the value from below the search (the method's default, or `base`, `tasks.<task>`, the command
line). An entry's `untuned:` overrides apply only where it runs untuned, above `fixed` (which may
not name the same key): a recipe for a budget too small to tune, e.g.
`untuned: {method.lr: {cpu: 1.0e-3}}` (a per-scale value needs only the scales run untuned).
Such finals are tagged `trial=untuned`, and the leaderboard lists the entry as untuned.

`pruner:` (optional, default none) stops trials that fall behind at a validation step (every
`train.eval_every` steps): Optuna's median or Hyperband pruner, see bench/pruning.py. A pruned trial
counts towards the budget and is not retried; its checkpoint is removed.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import yaml

from bench import config
from bench.config import check_choice, convert, sweep_names
from bench.scales import SCALES
from bench.errors import ConfigError
from methods import METHODS
from methods.engine.metrics import METRICS
from tasks import TASKS

if TYPE_CHECKING:
    import optuna

    from bench import pruning

# Settings of the whole sweep, which `base` or the command line may set but a method may not.
SWEEP_WIDE = {"sweep", "scale", "launcher", "max_parallel", "threads", "run_dir", "results_dir",
              "data_dir", "trial_timeout_min", "heartbeat_s", "stale_after_s", "mlflow_server",
              "system_metrics", "resume", "slurm"}


def sweep_wide(key: str) -> bool:
    return key in SWEEP_WIDE or key.startswith("slurm.")


# --- the YAML file --------------------------------------------------------------------------


@dataclass(frozen=True)
class SearchParam:
    key: str
    type: str  # float | int | categorical
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: optuna.Trial) -> Any:
        if self.type == "float":
            return trial.suggest_float(self.key, self.low, self.high, log=self.log, step=self.step)
        if self.type == "int":
            return trial.suggest_int(self.key, self.low, self.high, log=self.log, step=self.step or 1)
        return trial.suggest_categorical(self.key, list(self.choices))

    def examples(self) -> list[Any]:
        """Values covering the space's edges, to type-check it against the config."""
        return list(self.choices) if self.type == "categorical" else [self.low, self.high]


@dataclass(frozen=True)
class MethodSpec:
    """One entry of `methods:`, a row of the leaderboard: `name` is its label, `method` what it runs."""

    name: str
    method: str
    trials: int | dict[str, int]
    fixed: dict[str, Any]
    search: tuple[SearchParam, ...]
    untuned: dict[str, Any]  # overrides for the finals of an untuned run (trials 0), above `fixed`


@dataclass(frozen=True)
class SweepSpec:
    name: str
    path: Path
    description: str
    base: dict[str, Any]
    tasks: dict[str, dict[str, Any]]
    metric: str
    direction: str
    methods: dict[str, MethodSpec]
    seeds: list[int] | dict[str, list[int]]
    pruner: pruning.PrunerSpec | None = None


class Reader:
    """Checks one part of the YAML file; errors name the file and the path inside it."""

    def __init__(self, path: Path):
        self.label = f"sweeps/{path.name}"

    def error(self, where: str, why: str) -> ConfigError:
        return ConfigError(f"{self.label}: {where}: {why}" if where else f"{self.label}: {why}")

    def mapping(self, value: Any, where: str, allowed: set[str] | None = None,
                required: set[str] = frozenset()) -> dict[str, Any]:
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise self.error(where, f"expected a mapping, got {value!r}")
        for key in value:
            if allowed is not None and key not in allowed:
                close = difflib.get_close_matches(str(key), sorted(allowed), n=1)
                hint = f"; did you mean '{close[0]}'?" if close else f"; allowed: {', '.join(sorted(allowed))}"
                raise self.error(where, f"unknown key '{key}'{hint}")
        missing = sorted(required - set(value))
        if missing:
            raise self.error(where, f"missing {', '.join(missing)}")
        return {str(key): item for key, item in value.items()}

    def by_scale(self, value: Any, where: str, check: Callable[[Any], bool], what: str) -> Any:
        """A value, or a mapping scale -> value."""
        if isinstance(value, dict):
            for scale, item in self.mapping(value, where, set(SCALES)).items():
                if not check(item):
                    raise self.error(f"{where}.{scale}", f"expected {what}, got {item!r}")
            return value
        if not check(value):
            raise self.error(where, f"expected {what} (or a mapping scale -> {what}), got {value!r}")
        return value

    def overrides(self, value: Any, where: str) -> dict[str, Any]:
        """`key: value` config overrides; a mapping value holds one value per scale."""
        out = self.mapping(value, where)
        for key, item in out.items():
            if isinstance(item, dict):
                self.by_scale(item, f"{where}.{key}", lambda v: not isinstance(v, dict), "a value")
        return out

    def search_param(self, key: str, value: Any, where: str) -> SearchParam:
        spec = self.mapping(value, where, {"type", "low", "high", "log", "step", "choices"}, {"type"})
        kind = spec["type"]
        if kind == "categorical":
            choices = spec.get("choices")
            if set(spec) != {"type", "choices"} or not isinstance(choices, list) or not choices:
                raise self.error(where, "a categorical parameter takes only a non-empty list 'choices'")
            return SearchParam(key, kind, choices=tuple(choices))
        if kind not in ("float", "int"):
            raise self.error(where, f"type must be float, int or categorical, got {kind!r}")
        if "choices" in spec or "low" not in spec or "high" not in spec:
            raise self.error(where, f"a {kind} parameter takes low, high and optionally log, step")
        number = float if kind == "float" else int
        try:
            low, high = convert("low", spec["low"], number), convert("high", spec["high"], number)
            step = None if spec.get("step") is None else convert("step", spec["step"], number)
            log = convert("log", spec.get("log", False), bool)
        except ConfigError as err:
            raise self.error(where, str(err)) from None
        if not low < high:
            raise self.error(where, f"low ({low}) must be below high ({high})")
        if log and (low <= 0 or step is not None):
            raise self.error(where, "log: true needs low > 0 and no step")
        return SearchParam(key, kind, low, high, log, step)


def sweep_path(name: str) -> Path:
    return config.SWEEPS_DIR / f"{name}.yaml"  # read at each call: tests point it at their own folder


def sweep_descriptions() -> dict[str, str]:
    """name -> description, for --help (a broken file shows its error instead)."""
    out = {}
    for name in sweep_names():
        try:
            out[name] = load_spec(name).description
        except ConfigError as err:
            out[name] = f"(invalid: {err})"
    return out


def load_spec(name: str) -> SweepSpec:
    check_choice("sweep", name, sweep_names())
    path = sweep_path(name)
    read = Reader(path)
    try:
        data = path.read_bytes()
        raw = yaml.safe_load(data.decode("utf-8"))
    except OSError as err:
        raise read.error("", f"cannot read it: {err.strerror}") from None
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise read.error("", f"line {line}: not UTF-8 text (byte {data[err.start]:#04x}); save it as UTF-8") from None
    except yaml.YAMLError as err:
        raise read.error("", f"invalid YAML: {' '.join(str(err).split())}") from None
    top = read.mapping(raw, "", {"description", "base", "tasks", "objective", "pruner", "methods", "final"},
                       {"description", "objective", "methods", "final"})
    if not isinstance(top["description"], str) or not top["description"].strip():
        raise read.error("description", "expected one line of text")
    base = read.overrides(top.get("base"), "base")
    for key in ("method", "sweep"):
        if key in base:
            raise read.error("base", f"'{key}' cannot be set here (list methods under 'methods')")
    if isinstance(base.get("scale"), dict):
        raise read.error("base.scale", "the scale cannot depend on the scale")
    tasks = {}
    for task, value in read.mapping(top.get("tasks"), "tasks").items():
        if task not in TASKS:
            raise read.error(f"tasks.{task}", f"unknown task '{task}'; choose one of: {', '.join(sorted(TASKS))}")
        tasks[task] = read.overrides(value, f"tasks.{task}")
        if {"task", "method", "sweep"} & set(tasks[task]):
            raise read.error(f"tasks.{task}", "task, method and sweep cannot be set per task")

    objective = read.mapping(top["objective"], "objective", {"metric", "direction"}, {"metric"})
    metric = objective["metric"]
    metric_name = str(metric).removeprefix("valid/")
    if not str(metric).startswith("valid/") or metric_name not in METRICS:
        raise read.error("objective.metric", f"expected valid/<metric> with <metric> one of "
                                             f"{', '.join(METRICS)}; got {metric!r} (trials see no test split)")
    higher = METRICS[metric_name].higher_is_better
    direction = objective.get("direction", "maximize" if higher else "minimize")
    if direction not in ("maximize", "minimize"):
        raise read.error("objective.direction", f"expected maximize or minimize, got {direction!r}")
    from bench import pruning  # here: it loads Optuna, which listing the sweeps in --help needs only for this

    pruner = pruning.read_spec(read, top.get("pruner"))

    methods = {}
    for label, value in read.mapping(top["methods"], "methods").items():
        where = f"methods.{label}"
        spec = read.mapping(value, where, {"method", "trials", "fixed", "search", "untuned"}, {"trials"})
        method = spec.get("method", label)
        if method not in METHODS:
            hint = "" if "method" in spec else f" (or give entry '{label}' a 'method:' key)"
            raise read.error(where, f"unknown method '{method}'; choose one of: {', '.join(sorted(METHODS))}{hint}")
        if "." in label or "/" in label:
            raise read.error(where, f"entry name '{label}' may not hold '.' or '/'")
        trials = read.by_scale(spec["trials"], f"{where}.trials",
                               lambda n: type(n) is int and n >= 0, "a non-negative integer")
        fixed = read.overrides(spec.get("fixed"), f"{where}.fixed")
        search = read.mapping(spec.get("search"), f"{where}.search")
        for key in [*fixed, *search]:
            if sweep_wide(key) or key == "method":
                raise read.error(where, f"'{key}' is a setting of the whole sweep, not of one method")
        # A searched key's value is the trial's: a fixed value beside it would be silently ignored.
        both = sorted(set(fixed) & set(search))
        if both:
            raise read.error(where, f"names {', '.join(both)} in both fixed and search; keep one")
        untuned = read.overrides(spec.get("untuned"), f"{where}.untuned")
        for key in untuned:
            if sweep_wide(key) or key == "method":
                raise read.error(f"{where}.untuned", f"'{key}' is a setting of the whole sweep, not of one method")
        both = sorted(set(fixed) & set(untuned))
        if both:
            raise read.error(where, f"names {', '.join(both)} in both fixed and untuned; keep one")
        params = tuple(read.search_param(key, item, f"{where}.search.{key}") for key, item in search.items())
        methods[label] = MethodSpec(label, method, trials, fixed, params, untuned)
    if not methods:
        raise read.error("methods", "list at least one method")

    final = read.mapping(top["final"], "final", {"seeds"}, {"seeds"})
    seeds = read.by_scale(final["seeds"], "final.seeds",
                          lambda s: isinstance(s, list) and s and all(type(x) is int for x in s),
                          "a non-empty list of integer seeds")
    return SweepSpec(name, path, top["description"].strip(), base, tasks, metric, direction, methods, seeds, pruner)


def for_scale(value: Any, scale: str, read: Reader, where: str) -> Any:
    if not isinstance(value, dict):
        return value
    if scale not in value:
        raise read.error(where, f"no value for scale '{scale}' (has: {', '.join(value)})")
    return value[scale]
