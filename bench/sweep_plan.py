"""The plan of a sweep: every entry's configurations and search, checked before anything is written.

A resumed sweep must describe the same experiment as the studies it continues (`fingerprint`,
`check_resumable`); the workers re-plan from the same command line (bench/worker.py).
"""
from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from bench import journal, pruning
from bench.config import Layer, build_config, check_choice, check_setting, check_task, flatten, resolve_scale, slots
from bench.run_config import RunConfig
from bench.scales import SCALES
from bench.sweep_file import Reader, SearchParam, SweepSpec, for_scale, load_spec, sweep_wide
from bench.values import ConfigError, convert
from methods import method_module


def execution_only(key: str) -> bool:
    """Settings that change how a sweep executes, not what its runs compute (left out of the
    check that a resumed study still describes the same experiment). `model.kv_cache`: every way
    samples from the same distributions, and studies made before it existed resume."""
    return (sweep_wide(key) and key != "scale") or key in ("train.checkpoint_every", "model.kv_cache")


@dataclass
class MethodPlan:
    name: str  # the entry's label (its method is config.method)
    layers: list[Layer]  # scale preset excluded: build_config adds it
    config: RunConfig  # the layers resolved, without suggestions
    trials: int
    search: tuple[SearchParam, ...]

    def config_for(self, *extra: Layer) -> RunConfig:
        return build_config([*self.layers, *extra])

    def fingerprint(self, spec: SweepSpec) -> str:
        """What a study's trials depend on: a resumed study must still match it."""
        settings = {key: value for key, value in flatten(self.config).items() if not execution_only(key)}
        settings["objective"] = f"{spec.direction} {spec.metric}"
        settings["search"] = [repr(p) for p in self.search]
        return json.dumps(settings, sort_keys=True, default=str)


@dataclass
class SweepPlan:
    spec: SweepSpec
    cfg: RunConfig  # the first method's config: sweep-wide settings (scale, run_dir, launcher, ...)
    methods: list[MethodPlan]
    seeds: list[int]
    overrides: dict[str, str]
    pruner_settings: dict[str, int] = field(default_factory=dict)  # spec.pruner's values at the scale

    def pruner_for(self, method: MethodPlan) -> optuna.pruners.BasePruner | None:
        """The pruner of `method`'s study (None: no pruning); each worker sets it on its own study
        object, since Optuna's storage does not keep pruners."""
        if self.spec.pruner is None:
            return None
        return pruning.build(self.spec.pruner, self.pruner_settings, method.config.train)

    @property
    def folder(self) -> Path:
        return Path(self.cfg.run_dir) / self.spec.name

    @property
    def storage_path(self) -> Path:
        return self.folder / "optuna.journal"


def plan_sweep(overrides: dict[str, str]) -> SweepPlan:
    """Read and check the sweep named in `overrides` against every config it will run."""
    spec = load_spec(overrides["sweep"])
    read = Reader(spec.path)
    cli = dict(overrides)
    only = cli.pop("method", None)
    trials_everywhere = cli.pop("trials", None)
    if trials_everywhere is not None:
        trials_everywhere = convert("trials", trials_everywhere, int)
        if trials_everywhere < 0:
            raise ConfigError(f"trials: expected at least 0, got {trials_everywhere}")
    entries = list(spec.methods)
    if only is not None:
        entries = [label for label, entry in spec.methods.items() if only in (label, entry.method)]
        if not entries:
            raise ConfigError(f"sweep {spec.name} has no entry or method {only!r}; "
                              f"its entries: {', '.join(spec.methods)}")
    scale = resolve_scale(check_choice("scale", cli.get("scale", spec.base.get("scale", "auto")),
                                       [*SCALES, "auto"]))

    def at_scale(layer: dict[str, Any], where: str) -> dict[str, Any]:
        return {key: for_scale(value, scale, read, f"{where}.{key}") for key, value in layer.items()}

    base = at_scale(spec.base, "base")
    task = cli.get("task", base.get("task", RunConfig.__dataclass_fields__["task"].default))
    shared_layers: list[Layer] = [(f"{read.label}: base", {**base, "scale": scale})]
    if task in spec.tasks:
        shared_layers.append((f"{read.label}: tasks.{task}", at_scale(spec.tasks[task], f"tasks.{task}")))

    plans = []
    for label in entries:
        mspec = spec.methods[label]
        fixed = at_scale(mspec.fixed, f"methods.{label}.fixed")
        trials = (trials_everywhere if trials_everywhere is not None
                  else for_scale(mspec.trials, scale, read, f"methods.{label}.trials"))
        layers: list[Layer] = [*shared_layers, (f"{read.label}: methods.{label}.fixed", {"method": mspec.method, **fixed})]
        if trials == 0 and mspec.untuned:
            layers.append((f"{read.label}: methods.{label}.untuned", at_scale(mspec.untuned, f"methods.{label}.untuned")))
        layers.append((None, cli))
        config = build_config(layers)
        check_task(config)
        known = slots(config)
        for param in mspec.search:
            where = f"methods.{label}.search.{param.key}"
            if param.key not in known:
                close = difflib.get_close_matches(param.key, list(known), n=1, cutoff=0.6)
                raise read.error(where, f"unknown key '{param.key}'" + (f"; did you mean '{close[0]}'?" if close else ""))
            for value in param.examples():
                try:
                    check_setting(param.key, value, known[param.key])
                except ConfigError as err:
                    raise read.error(where, str(err)) from None
        plans.append(MethodPlan(label, layers, config, trials, mspec.search))
    seeds = for_scale(spec.seeds, scale, read, "final.seeds")
    for seed in seeds:
        try:
            check_setting("seed", seed, slots(plans[0].config)["seed"])
        except ConfigError as err:
            raise read.error("final.seeds", str(err)) from None
    plan = SweepPlan(spec, plans[0].config, plans, seeds, overrides)
    if spec.pruner is not None:
        plan.pruner_settings = {key: for_scale(value, scale, read, f"pruner.{key}")
                                for key, value in spec.pruner.settings.items()}
        for method in plans:
            if method.config.trainer.num_processes > 1 and getattr(method_module(method.config.method), "TRAINS", True):
                raise read.error("pruner", f"entry {method.name} trains with trainer.num_processes="
                                           f"{method.config.trainer.num_processes}, whose evaluations run outside the "
                                           "trial's process, where pruning cannot reach them; use one process or pruner: none")
            try:
                plan.pruner_for(method)
            except ValueError as err:
                raise read.error("pruner", f"{err} (entry {method.name})") from None
    check_resumable(plan)
    return plan


def check_resumable(plan: SweepPlan) -> None:
    """Refuse to add trials to a study made for other settings (before anything is written)."""
    storage_path = plan.storage_path
    if not storage_path.exists():
        if plan.cfg.resume:
            raise ConfigError(f"resume=true, but there is no sweep to resume at {plan.folder}; "
                              "check run_dir=, or drop resume=true to start one")
        return
    try:
        journal.check_journal(storage_path)
    except journal.JournalError as err:
        raise ConfigError(str(err)) from None
    storage = journal.storage(plan.storage_path)
    existing = set(optuna.get_all_study_names(storage))
    for method in plan.methods:
        name = f"{plan.spec.name}.{method.name}"
        if name not in existing:
            continue
        recorded = optuna.load_study(study_name=name, storage=storage).user_attrs.get("settings")
        if recorded is not None and recorded != method.fingerprint(plan.spec):
            old, new = json.loads(recorded), json.loads(method.fingerprint(plan.spec))
            changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
            raise ConfigError(f"{storage_path} holds study {name} made with other settings "
                              f"({', '.join(changed[:5])}); pass another run_dir= or remove that folder")


def open_study(plan: SweepPlan, method: MethodPlan, storage) -> optuna.Study:
    study = optuna.create_study(study_name=f"{plan.spec.name}.{method.name}", storage=storage,
                                direction=plan.spec.direction, load_if_exists=True)
    study.set_user_attr("settings", method.fingerprint(plan.spec))
    return study
