"""The plan of a sweep: every entry's configurations and search, checked before anything is written.

Each set of fixed settings (what the runs compute, over every entry of the sweep file) has its own
folder of studies, `<run_dir>/<sweep>/<task>-<hash>/` (`study_folder`): the same sweep on another
task, scale or budget of steps starts its own studies, while `method=`, `trials=` and how the
sweep executes keep the folder. Inside it a study continues only with its search space and
objective (`fingerprint`, `check_resumable`). The workers re-plan from the same command line
(bench/worker.py) and find the same folder.
"""
from __future__ import annotations

import difflib
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import optuna

from bench import journal, pruning
from bench.checks import check_task
from bench.config import Layer, build_config, check_choice, check_setting, convert, flatten, resolve_scale, slots
from bench.errors import ConfigError
from bench.run_config import RunConfig
from bench.scales import SCALES
from bench.sweep_file import Reader, SearchParam, SweepSpec, for_scale, load_spec, sweep_wide
from methods import method_module


def execution_only(key: str) -> bool:
    """Settings that change how a sweep executes, not what its runs compute (left out of the
    settings folder's hash and of the check that a resumed study still describes the same
    experiment). `model.kv_cache`: every way samples from the same distributions, and studies made
    before it existed resume."""
    return (sweep_wide(key) and key != "scale") or key in ("train.checkpoint_every", "model.kv_cache")


def fixed_settings(config: RunConfig) -> dict[str, Any]:
    """What a run with `config` computes: every setting but the execution-only ones."""
    return {key: value for key, value in flatten(config).items() if not execution_only(key)}


def settings_hash(settings: dict[str, dict[str, Any]]) -> str:
    """8 hex digits of a SHA-256 of every entry's fixed settings: the same in every process
    (the workers re-plan to find the folder), unlike Python's hash()."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:8]


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
        settings = fixed_settings(self.config)
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
    folder: Path  # the studies of these settings: `<run_dir>/<sweep>/<task>-<hash>` (study_folder)
    results_folder: str  # below results_dir: `<sweep>`, or `<sweep>/<task>` on another task than the file's
    pruner_settings: dict[str, int] = field(default_factory=dict)  # spec.pruner's values at the scale

    def pruner_for(self, method: MethodPlan) -> optuna.pruners.BasePruner | None:
        """The pruner of `method`'s study (None: no pruning); each worker sets it on its own study
        object, since Optuna's storage does not keep pruners."""
        if self.spec.pruner is None:
            return None
        return pruning.build(self.spec.pruner, self.pruner_settings, method.config.train)

    @property
    def storage_path(self) -> Path:
        return self.folder / journal.JOURNAL


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
    own_task = base.get("task", RunConfig.__dataclass_fields__["task"].default)
    task = cli.get("task", own_task)
    shared_layers: list[Layer] = [(f"{read.label}: base", {**base, "scale": scale})]
    if task in spec.tasks:
        shared_layers.append((f"{read.label}: tasks.{task}", at_scale(spec.tasks[task], f"tasks.{task}")))

    plans = []
    settings = {}  # every entry's, selected or not: `method=` and `trials=` keep the folder
    for label, mspec in spec.methods.items():
        fixed = at_scale(mspec.fixed, f"methods.{label}.fixed")
        layers: list[Layer] = [*shared_layers, (f"{read.label}: methods.{label}.fixed", {"method": mspec.method, **fixed})]
        config = build_config([*layers, (None, cli)])  # as its trials run: without the untuned recipe
        settings[label] = fixed_settings(config)
        if label not in entries:
            continue
        trials = (trials_everywhere if trials_everywhere is not None
                  else for_scale(mspec.trials, scale, read, f"methods.{label}.trials"))
        if trials == 0 and mspec.untuned:
            layers.append((f"{read.label}: methods.{label}.untuned", at_scale(mspec.untuned, f"methods.{label}.untuned")))
            config = build_config([*layers, (None, cli)])
        layers.append((None, cli))
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
    cfg = plans[0].config
    plan = SweepPlan(spec, cfg, plans, seeds, overrides, study_folder(spec, cfg, task, settings_hash(settings), plans),
                     spec.name if task == own_task else f"{spec.name}/{task}")
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


STUDY_KEYS = ("objective", "search")  # of a fingerprint: a study's own, not its folder's


def study_folder(spec: SweepSpec, cfg: RunConfig, task: str, digest: str, methods: list[MethodPlan]) -> Path:
    """`<run_dir>/<sweep>/<task>-<digest>`; or, for a store of the old layout (its studies in
    `<run_dir>/<sweep>/optuna.journal`) made with these settings, that folder: continued where it
    is, since the queued jobs of its sweep hold its paths."""
    sweep_folder = Path(cfg.run_dir) / spec.name
    if (sweep_folder / journal.JOURNAL).exists():
        same = [all(recorded.get(key) == now.get(key) for key in recorded.keys() | now.keys() if key not in STUDY_KEYS)
                for _, recorded, now in _recorded(sweep_folder / journal.JOURNAL, spec, methods)]
        if same and all(same):
            return sweep_folder
    return sweep_folder / f"{task}-{digest}"


def _recorded(path: Path, spec: SweepSpec, methods: list[MethodPlan]) -> Iterator[tuple[str, dict, dict]]:
    """(study, the settings it recorded, the entry's now) for each entry with a study in the journal at `path`."""
    try:
        journal.check_journal(path)
    except journal.JournalError as err:
        raise ConfigError(str(err)) from None
    storage = journal.storage(path)
    existing = set(optuna.get_all_study_names(storage))
    for method in methods:
        name = f"{spec.name}.{method.name}"
        recorded = optuna.load_study(study_name=name, storage=storage).user_attrs.get("settings") if name in existing else None
        if recorded is not None:
            yield name, json.loads(recorded), json.loads(method.fingerprint(spec))


def check_resumable(plan: SweepPlan) -> None:
    """Refuse to add trials to a study made with another search space or objective (before anything is written)."""
    if not plan.storage_path.exists():
        if plan.cfg.resume:
            sweep_folder = Path(plan.cfg.run_dir) / plan.spec.name
            there = [journal.label(f, sweep_folder) for f in journal.study_folders(sweep_folder)]
            if there:
                raise ConfigError(f"resume=true, but {sweep_folder} holds no study with these settings, only "
                                  f"{', '.join(there)} (runs with other settings have their own); check the settings "
                                  "and run_dir=, or drop resume=true to start one")
            raise ConfigError(f"resume=true, but there is no sweep to resume at {plan.folder}; "
                              "check run_dir=, or drop resume=true to start one")
        return
    tuned = [m for m in plan.methods if m.trials > 0]  # an entry with trials 0 adds no trial to its study
    for name, old, new in _recorded(plan.storage_path, plan.spec, tuned):
        changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
        if changed:
            raise ConfigError(f"{plan.storage_path} holds study {name} made with other settings ({', '.join(changed[:5])}): "
                              "a study continues only with its search space and objective; restore them, or remove "
                              "that folder to start again")


def open_study(plan: SweepPlan, method: MethodPlan, storage) -> optuna.Study:
    study = optuna.create_study(study_name=f"{plan.spec.name}.{method.name}", storage=storage,
                                direction=plan.spec.direction, load_if_exists=True)
    if method.trials > 0:  # trials 0: its finals run the untuned recipe, the study is not tuned
        study.set_user_attr("settings", method.fingerprint(plan.spec))
    return study
