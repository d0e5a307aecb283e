"""Command line: `python -m bench.run [sweep=NAME] [key=value ...]`; `--help` lists everything.

Without `sweep=`, one run trains in this process and prints its metrics. With it, the sweep's
trials and final runs go through submitit (see bench/sweep.py). Every setting is checked before
anything is written: a mistake prints one `error: ...` line and exits with status 2. A failure a
user can cause later (a model, data file or store that cannot be used) is one `error: ...` line
and status 1; Ctrl-C is one line and status 130. Heavy libraries (torch, transformers, MLflow,
Optuna) are imported only once a run or sweep needs them, so that a mistake is answered at once.
"""
from __future__ import annotations

import ast
import importlib.util
import sys
from typing import Mapping

from bench.checks import check_folder, check_task
from bench.config import LAUNCHERS, Slot, build_config, check_choice, parse_overrides, slots, sweep_names
from bench.run_config import RunConfig
from bench.scales import DESCRIPTIONS as SCALE_DESCRIPTIONS
from bench.scales import SCALES
from bench.sweep_file import sweep_descriptions
from bench.errors import ConfigError, optional_inner, type_name
from methods import METHODS
from methods.engine.model_config import PRESETS, ModelError
from tasks import TASKS
from tasks.data import DataError

INTERRUPTED = 130  # the exit status of a process stopped by Ctrl-C (128 + SIGINT)

USAGE = """\
usage: python -m bench.run [key=value ...]              one run, in this process
       python -m bench.run sweep=NAME [key=value ...]   tune each method, then re-run the best over seeds
       python -m bench.run --help [method=NAME] [task=NAME]
       python -m bench.report sweep=NAME                rebuild a sweep's leaderboard (.md, .tex, .csv) from MLflow
       python -m bench.report sweep=NAME compare=A,B    two entries compared query by query (paired test)

Overrides apply in this order: dataclass defaults < scale preset < sweep YAML < command line.
Values: 3, 3e-4, true/false, text, null, [a,b]. `model=tiny` is short for `model.preset=tiny`."""


def _first_line(module_path: str) -> str:
    """The first line of a module's docstring, read from its source: listing the methods must not
    import them (and torch with them)."""
    source = importlib.util.find_spec(module_path).origin
    with open(source, encoding="utf-8") as file:
        doc = ast.get_docstring(ast.parse(file.read())) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def _type_and_range(slot: Slot) -> str:
    """`int ≥ 1`, `float in [0, 1]`, `int ≥ 1 or null`."""
    symbol = slot.range.symbol() if slot.range is not None else ""
    if not symbol:
        return type_name(slot.type)
    inner = optional_inner(slot.type)
    return f"{type_name(inner)} {symbol} or null" if inner is not None else f"{type_name(slot.type)} {symbol}"


def describe(known: Mapping[str, Slot]) -> list[str]:
    """`  key  type range = default  help`, aligned, for each key."""
    rows = [(key, f"{_type_and_range(s)} = {getattr(s.owner, s.name)!r}", s.help)
            for key, s in known.items()]
    width_key = max(len(r[0]) for r in rows)
    width_type = max(len(r[1]) for r in rows)
    return [f"  {k:<{width_key}}  {t:<{width_type}}  {h}" for k, t, h in rows]


def _listing(title: str, entries: dict[str, str]) -> list[str]:
    width = max(map(len, entries))
    return [title, *(f"  {name:<{width}}  {text}" for name, text in entries.items()), ""]


def help_text(cfg: RunConfig) -> str:
    known = slots(cfg)
    groups = {
        f"run settings (values shown include scale={cfg.scale} and the overrides given)":
            {k: s for k, s in known.items() if "." not in k},
        "train.* (budget and evaluation; scale presets change these defaults)":
            {k: s for k, s in known.items() if k.startswith("train.")},
        "trainer.* (processes per run)": {k: s for k, s in known.items() if k.startswith("trainer.")},
        "model.*": {k: s for k, s in known.items() if k.startswith("model.")},
        f"task.* (task={cfg.task})": {k: s for k, s in known.items() if k.startswith("task.")},
        f"method.* (method={cfg.method}; values include tasks/{cfg.task}.yaml method_defaults; "
        "`--help method=NAME task=NAME` shows another)":
            {k: s for k, s in known.items() if k.startswith("method.")},
    }
    scales = {name: f"{SCALE_DESCRIPTIONS[name]}: " + ", ".join(f"{k}={v}" for k, v in preset.items())
              for name, preset in SCALES.items()} | {"auto": SCALE_DESCRIPTIONS["auto"]}
    lines = [USAGE, ""]
    lines += _listing("sweeps (sweep=NAME, from sweeps/NAME.yaml):", sweep_descriptions())
    lines += _listing("methods (method=NAME):",
                      {name: _first_line(path) for name, path in METHODS.items()})
    lines += _listing("tasks (task=NAME):",
                      {name: _first_line(path.split(":")[0]) for name, path in TASKS.items()})
    lines += _listing("model presets (model=NAME):", PRESETS)
    lines += _listing("scales (scale=NAME):", scales)
    lines += _listing("launchers (launcher=NAME):", LAUNCHERS)
    for title, group in groups.items():
        if group:
            lines += [f"{title}:", *describe(group), ""]
    return "\n".join(lines)


def _print_metrics(metrics: dict[str, float]) -> None:
    """`split/metric` values as a grid (one row per split), then the other values."""
    grid: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        if "/" in key:
            split, name = key.split("/", 1)
            grid.setdefault(split, {})[name] = value
    names = list(dict.fromkeys(name for row in grid.values() for name in row))
    width = max(map(len, grid), default=0)
    print(f"  {'':<{width}}  " + "  ".join(f"{name:>12}" for name in names))
    for split, row in grid.items():
        print(f"  {split:<{width}}  " + "  ".join(f"{row[n]:>12.4g}" if n in row else f"{'':>12}" for n in names))
    print("  " + ", ".join(f"{key} {value:.1f}" for key, value in metrics.items() if "/" not in key))


def main(argv: list[str]) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:
        print("error: interrupted (Ctrl-C)", file=sys.stderr)
        return INTERRUPTED


def _main(argv: list[str]) -> int:
    wants_help = any(arg in ("-h", "--help") for arg in argv)
    args = [arg for arg in argv if arg not in ("-h", "--help")]
    try:
        overrides = parse_overrides(args)
        if wants_help:
            print(help_text(build_config([(None, overrides)])))
            return 0
        if "sweep" in overrides:
            check_choice("sweep", overrides["sweep"], sweep_names())  # before the sweep machinery loads
            from bench.sweep_plan import plan_sweep

            plan = plan_sweep(overrides)
            check_folder("run_dir", plan.cfg.run_dir)
            check_folder("results_dir", plan.cfg.results_dir)
        else:
            cfg = build_config([(None, overrides)])
            check_task(cfg)
            check_folder("run_dir", cfg.run_dir)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    from bench import tracking

    try:
        if "sweep" in overrides:
            from bench.sweep import run_sweep

            return run_sweep(plan)
        from bench.training import run_trial

        metrics = run_trial(cfg, stage="single")
    # Each is one actionable line; a run that had started is recorded as FAILED.
    except (ModelError, DataError, tracking.StoreError, ConfigError) as err:
        print(f"error: {ConfigError(str(err))}", file=sys.stderr)  # ConfigError: one line, long words cut
        return 1
    except KeyboardInterrupt:  # the run has ended its MLflow run KILLED; a sweep has cancelled its workers
        print("error: interrupted (Ctrl-C); " + ("run the same command again to continue the sweep"
                                                  if "sweep" in overrides else "the run is recorded as KILLED"),
              file=sys.stderr)
        return INTERRUPTED
    print(f"\n{cfg.method} on {cfg.task} (seed {cfg.seed}, scale {cfg.scale}):")
    _print_metrics(metrics)
    print(f"\nruns: {tracking.ui_hint(tracking.tracking_uri(cfg.run_dir))}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
