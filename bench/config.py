"""The `key=value` engine: a RunConfig's key space, layers of overrides applied in order, checks and help.

A run is described by `RunConfig` (bench/run_config.py): the dataclass defaults, then layers of
overrides applied in order (the task's `method_defaults` from tasks/<task>.yaml < scale preset <
sweep YAML < command line < Optuna suggestions; see `build_config`). Keys are dotted paths
(`train.steps`, `model.lora.r`); `task.*` and `method.*` address the Config dataclass of the
selected task and method. Values are parsed by the field's type (numbers from ASCII digits only)
and a numeric value must lie in the range its field declares (`metadata={"range": "[1, inf)"}`,
see methods/base.py); every mistake is a `ConfigError` (bench/errors.py) whose message is one line
naming the key, with long values shortened. A value from the command line goes from
`parse_overrides` through `build_config` (parsed and checked by `convert` and `check_range`) into
its field of the RunConfig, all in this file.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from bench.launch import LAUNCHERS, SlurmConfig, load_profile
from bench.ranges import Range
from bench.scales import SCALES
from methods import METHODS, method_module
from bench.run_config import REPO_ROOT, RunConfig
from bench.errors import SHOWN, ConfigError, optional_inner, shown, type_name
from methods.engine.model_config import DTYPE_NAMES, KV_CACHES, PRESETS
from tasks import TASKS, task_class

SWEEPS_DIR = REPO_ROOT / "sweeps"


# --- the key space ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Slot:
    """Where a dotted key lives: attribute `name` of `owner`, with its type and help."""

    owner: Any
    name: str
    type: Any
    help: str
    range: Range | None = None


def _slots(obj: Any, prefix: str, out: dict[str, Slot]) -> None:
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if "group" in f.metadata:
            _slots(value, f.metadata["group"] + ".", out)
        elif dataclasses.is_dataclass(value):
            _slots(value, f"{prefix}{f.name}.", out)
        else:
            rng = Range.parse(f.metadata["range"]) if "range" in f.metadata else None
            out[prefix + f.name] = Slot(obj, f.name, hints[f.name], f.metadata.get("help", ""), rng)


def slots(cfg: RunConfig) -> dict[str, Slot]:
    """Every settable key of `cfg` (for its selected task and method) -> its slot."""
    out: dict[str, Slot] = {}
    _slots(cfg, "", out)
    return out


def _unknown_key(key: str, known: Sequence[str]) -> ConfigError:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6) if len(key) <= SHOWN else []
    hint = f"; did you mean '{close[0]}'?" if close else "; see python -m bench.run --help"
    return ConfigError(f"unknown key {shown(key)}{hint}")


def check_setting(key: str, value: Any, slot: Slot) -> Any:
    """`value` typed for `slot` and checked against its range (a sweep's search bounds, say);
    ConfigError naming `key` if it is not a value the setting takes."""
    value = convert(key, value, slot.type)
    check_range(key, value, slot.range)
    return value


# --- values -------------------------------------------------------------------------------

_INT = re.compile(r"\s*[+-]?[0-9]+\s*", re.ASCII)
_FLOAT = re.compile(r"\s*[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?\s*", re.ASCII)


def _parse_text(text: str, tp: Any) -> Any:
    """A command-line string as a value of type `tp`; ValueError if it is not one."""
    inner = optional_inner(tp)
    if inner is not None:
        return None if text in ("null", "None", "~") else _parse_text(text, inner)
    if typing.get_origin(tp) is list:
        (item,) = typing.get_args(tp) or (str,)
        body = text.strip()
        if not (body.startswith("[") and body.endswith("]")):
            raise ValueError
        parts = [p.strip() for p in body[1:-1].split(",")]
        return [] if parts == [""] else [_parse_text(p, item) for p in parts]
    if typing.get_origin(tp) is typing.Literal:
        choices = {str(c): c for c in typing.get_args(tp)}
        return choices[text]
    if tp is bool:
        lowered = text.lower()
        if lowered not in ("true", "false"):
            raise ValueError
        return lowered == "true"
    if tp is int:  # int() and float() also take '٣', '1_000' and 'inf'; a setting takes ASCII digits
        if not _INT.fullmatch(text):
            raise ValueError
        return int(text)
    if tp is float:
        if not _FLOAT.fullmatch(text):
            raise ValueError
        return float(text)
    if tp is str:
        # Quotes let a value keep a leading/trailing space or look like null: name='null'.
        if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
            return text[1:-1]
        return text
    raise TypeError(f"unsupported field type {tp!r}")


def _check_value(value: Any, tp: Any) -> Any:
    """A YAML or Python value checked (and, for int -> float, converted) against `tp`."""
    if isinstance(value, str) and tp is not str:
        # PyYAML reads `1e-4` (no dot) as a string, so strings get the command-line parser.
        return _parse_text(value, tp)
    inner = optional_inner(tp)
    if inner is not None:
        return None if value is None else _check_value(value, inner)
    if typing.get_origin(tp) is list:
        (item,) = typing.get_args(tp) or (str,)
        if not isinstance(value, (list, tuple)):
            raise ValueError
        return [_check_value(v, item) for v in value]
    if typing.get_origin(tp) is typing.Literal:
        if value not in typing.get_args(tp):
            raise ValueError
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool) and type(value) is tp:
        return value
    raise ValueError


def convert(key: str, value: Any, tp: Any) -> Any:
    try:
        return _check_value(value, tp)
    except (ValueError, KeyError):
        raise ConfigError(f"{key}: expected {type_name(tp)}, got {shown(value)}") from None


def check_range(key: str, value: Any, rng: Range | None) -> None:
    """ConfigError unless `value` (a number, a list of numbers, or None) lies in `rng`."""
    if rng is None or value is None:
        return
    for item in value if isinstance(value, list) else [value]:
        if isinstance(item, float) and not math.isfinite(item):
            what = "a finite number" + ("" if rng.describe() == "any number" else f" {rng.describe()}")
            raise ConfigError(f"{key}: expected {what}, got {item}")
        if not rng.contains(item):
            raise ConfigError(f"{key}: expected {rng.describe()}, got {shown(item)}")


# --- overrides ------------------------------------------------------------------------------

Layer = tuple[str | None, Mapping[str, Any]]
"""(where the overrides come from, e.g. 'sweeps/smoke.yaml: base', or None for the command line;
key -> value). Values are strings from the command line or typed values from YAML and Optuna."""


ALIASES = {"model": "model.preset", "slurm": "slurm.profile"}
"""Short keys of the command line and the key each one sets."""


def parse_overrides(args: Sequence[str]) -> dict[str, str]:
    """`["a.b=1", "c=x"]` -> `{"a.b": "1", "c": "x"}`; a key given twice (or with its alias,
    `model=` and `model.preset=`) is an error rather than a silent last-one-wins."""
    out: dict[str, str] = {}
    given: dict[str, str] = {}  # key as ALIASES resolve it -> the argument that set it
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"expected key=value, got {shown(arg)}")
        key = key.strip()
        canonical = ALIASES.get(key, key)
        if canonical in given:
            raise ConfigError(f"{canonical}: given twice ({shown(given[canonical])} and {shown(arg)}); keep one")
        given[canonical] = arg
        out[key] = value
    return out


def check_choice(kind: str, value: Any, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ConfigError(f"unknown {kind} {shown(value)}; choose one of: {', '.join(choices)}")
    return value


def sweep_names() -> list[str]:
    return sorted(p.stem for p in SWEEPS_DIR.glob("*.yaml"))


def resolve_scale(scale: str) -> str:
    """`auto` -> cpu without a GPU, paper with one."""
    if scale != "auto":
        return scale
    import torch  # here, not at the top: a mistake on the command line is answered without loading torch

    return "paper" if torch.cuda.is_available() else "cpu"


def task_method_defaults(cfg: RunConfig) -> dict[str, Any]:
    """The `method_defaults` of the selected task's YAML that the selected method's Config has, as
    `method.<field>` keys (a task sets p_replay; ppo has none and skips it). A key that no method
    has is an error, so that a misspelt default does not silently change nothing."""
    defaults = task_class(cfg.task).spec.method_defaults
    own = {f.name for f in dataclasses.fields(cfg.method_cfg)}
    if not set(defaults) <= own:  # only then the other methods' modules are loaded, to look for the key
        every_field = sorted({f.name for name in METHODS for f in dataclasses.fields(method_module(name).Config)})
        for key in defaults:
            if key not in every_field:
                close = difflib.get_close_matches(key, every_field, n=1, cutoff=0.6)
                raise ConfigError(f"tasks/{cfg.task}.yaml: method_defaults: unknown key {key!r} (no method has it)"
                                  + (f"; did you mean {close[0]!r}?" if close else ""))
    return {f"method.{key}": value for key, value in defaults.items() if key in own}


def build_config(layers: Sequence[Layer]) -> RunConfig:
    """The RunConfig for the dataclass defaults, the task's method defaults, the scale preset and
    `layers` (lowest first).

    Group choices (`task`, `method`) and the scale are decided first, over all layers, because
    they decide which keys exist and which preset sits under the layers.
    """
    chosen = {f.name: f.default for f in dataclasses.fields(RunConfig) if f.name in ("task", "method", "scale", "launcher")}
    chosen["slurm"] = SlurmConfig.profile
    for _, overrides in layers:
        for key in chosen:
            if key in overrides:
                chosen[key] = overrides[key]
        if "slurm.profile" in overrides:
            chosen["slurm"] = overrides["slurm.profile"]
    check_choice("task", chosen["task"], sorted(TASKS))
    check_choice("method", chosen["method"], sorted(METHODS))
    check_choice("scale", chosen["scale"], [*SCALES, "auto"])
    scale = resolve_scale(chosen["scale"])

    cfg = RunConfig(task=chosen["task"], method=chosen["method"], scale=scale)
    known = slots(cfg)
    cfg.launcher = check_choice("launcher", chosen["launcher"], list(LAUNCHERS))
    cfg.slurm.profile = str(chosen["slurm"])
    try:  # profiles are read only where they are used
        profile = load_profile(cfg.slurm.profile) if cfg.launcher == "slurm" else {}
    except ValueError as err:
        raise ConfigError(str(err)) from None
    for source, overrides in [(f"tasks/{cfg.task}.yaml: method_defaults", task_method_defaults(cfg)),
                              (f"scale {scale}", SCALES[scale]), (f"slurm/{cfg.slurm.profile}.yaml", profile), *layers]:
        for key, value in overrides.items():
            if key in chosen or key == "slurm.profile":
                continue
            try:
                _set(known, ALIASES.get(key, key), value)
            except ConfigError as err:
                raise ConfigError(f"{source}: {err}" if source else str(err)) from None
    check_choice("model preset", cfg.model.preset, list(PRESETS))
    check_choice("model dtype", cfg.model.dtype, list(DTYPE_NAMES))
    check_choice("model kv_cache", cfg.model.kv_cache, list(KV_CACHES))
    if cfg.sweep is not None:
        check_choice("sweep", cfg.sweep, sweep_names())
    for key, slot in known.items():  # the defaults too (each override was checked as it was set)
        check_range(key, getattr(slot.owner, slot.name), slot.range)
    if cfg.stale_after_s <= cfg.heartbeat_s:
        raise ConfigError(f"heartbeat_s ({cfg.heartbeat_s}) must be below stale_after_s ({cfg.stale_after_s})")
    n = cfg.trainer.num_processes
    if cfg.train.batch_prompts % n:
        raise ConfigError(f"train.batch_prompts={cfg.train.batch_prompts} is not a multiple of trainer.num_processes={n}: "
                          "each process trains on an equal share of every step's queries")
    if cfg.launcher == "slurm" and 0 < cfg.slurm.gpus_per_node < n:
        raise ConfigError(f"trainer.num_processes={n} needs a GPU each, but slurm.gpus_per_node={cfg.slurm.gpus_per_node}")
    # Absolute, so that trial subprocesses and the printed commands do not depend on the cwd.
    cfg.run_dir = str(Path(cfg.run_dir).expanduser().resolve())
    cfg.results_dir = str(Path(cfg.results_dir).expanduser().resolve())
    return cfg


def _set(known: dict[str, Slot], key: str, value: Any) -> None:
    slot = known.get(key)
    if slot is None:
        raise _unknown_key(key, [*known, "model"])
    setattr(slot.owner, slot.name, check_setting(key, value, slot))


def flatten(cfg: RunConfig) -> dict[str, Any]:
    """Every setting as `key -> value` (group choices included): MLflow params, fingerprints."""
    return {key: getattr(s.owner, s.name) for key, s in slots(cfg).items()}
