"""Every numeric setting has a declared range, checked before a run or sweep writes anything.

A bad value is one `error: ...` line naming the key, exit 2, no traceback and no run store. Values
are typed from ASCII only, a key is given once, and a long value is shortened in the message.
"""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import types
import typing
from pathlib import Path

import pytest

import bench.run
from bench.config import Range, build_config, check_setting, parse_overrides, slots
from bench.launch import profile_names
from bench.run_config import RunConfig
from bench.scales import SCALES
from bench.errors import ConfigError
from methods import METHODS, method_module
from tasks import TASKS, task_class

REPO = Path(__file__).resolve().parents[1]


def cli(*args: str) -> RunConfig:
    return build_config([(None, parse_overrides(args))])


def main_in(tmp_path: Path, monkeypatch, capsys, *args: str) -> tuple[int, list[str]]:
    """`python -m bench.run ARGS run_dir=runs results_dir=results` in this process (its main(), as
    `__main__` calls it), from an empty folder: (exit status, stderr lines)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the store would live in tmp_path/runs
    code = bench.run.main([*args, "run_dir=runs", "results_dir=results"])
    return code, capsys.readouterr().err.splitlines()


def bench_run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONIOENCODING": "utf-8"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([sys.executable, "-m", "bench.run", *args, "model=tiny", "scale=smoke",
                           "run_dir=runs", "results_dir=results"],
                          cwd=cwd, env=env, capture_output=True, text=True, encoding="utf-8", timeout=300)


# --- bad values through the command line ------------------------------------------------------

BAD = [
    (["train.steps=0"], "train.steps"),
    (["train.steps=-1"], "train.steps"),
    (["train.eval_temperature=-1"], "train.eval_temperature"),
    (["train.eval_temperature=0"], "train.eval_temperature"),
    (["train.eval_temperature=1e999"], "train.eval_temperature"),  # inf
    (["model.lora.r=0"], "model.lora.r"),
    (["model.lora.dropout=1.5"], "model.lora.dropout"),
    (["train.eval_samples=0"], "train.eval_samples"),
    (["train.eval_prompts=0"], "train.eval_prompts"),
    (["train.samples_per_prompt=0"], "train.samples_per_prompt"),
    (["train.batch_prompts=0"], "train.batch_prompts"),
    (["train.batch_size=0"], "train.batch_size"),
    (["train.log_samples=-1"], "train.log_samples"),
    (["seed=٣"], "seed"),  # Arabic-Indic 3, which int() accepts
    (["seed=-1"], "seed"),
    (["seed=1", "seed=2"], "seed"),
    (["method.p_replay=1.5"], "method.p_replay"),
    (["method.p_tempered=-0.1"], "method.p_tempered"),
    (["method.pf_temp_low=3"], "method.pf_temp_low"),
    (["method.lr=-1e-4"], "method.lr"),
    (["method.lr=nan"], "method.lr"),
    (["method.warmup_frac=2"], "method.warmup_frac"),
    (["method.reward_temp_start=0"], "method.reward_temp_start"),
    (["method.max_grad_norm=0"], "method.max_grad_norm"),
    (["method.buffer_size=0"], "method.buffer_size"),
    (["method=ppo", "method.gamma=1.5"], "method.gamma"),
    (["method=ppo", "method.ppo_epochs=0"], "method.ppo_epochs"),
    (["method=ppo", "method.kl_coef=-0.1"], "method.kl_coef"),
    (["method=sft", "method.batch_size=0"], "method.batch_size"),
    (["method=sft", "method.epochs=0"], "method.epochs"),
    (["method=prompting", "method.top_p=0"], "method.top_p"),
    (["method=prompting", "method.temperature=0"], "method.temperature"),
    (["method=prompting", "method.beams=0"], "method.beams"),
    (["task.max_actions=0"], "task.max_actions"),
    (["task.n_train=-1"], "task.n_train"),
    (["task=subj", "task.wrong_label_penalty=5"], "task.wrong_label_penalty"),
    (["trainer.num_processes=0"], "trainer.num_processes"),
    (["heartbeat_s=0"], "heartbeat_s"),
]


@pytest.mark.parametrize("args, key", BAD, ids=[" ".join(args) for args, _ in BAD])
def test_a_bad_value_is_one_line_exit_2_and_writes_nothing(tmp_path, monkeypatch, capsys, args, key):
    code, err = main_in(tmp_path, monkeypatch, capsys, *args, "model=tiny", "scale=smoke")  # today: cheap if it runs
    assert code == 2
    assert len(err) == 1 and err[0].startswith(f"error: {key}: "), err
    assert list(tmp_path.iterdir()) == []  # no MLflow store, no checkpoint, no results


@pytest.mark.parametrize("args, line", [
    (["train.steps=0"], "error: train.steps: expected at least 1, got 0"),
    (["seed=٣"], "error: seed: expected int, got '٣'"),
])
def test_the_real_process_exits_2_with_one_line(tmp_path, args, line):
    result = bench_run(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [line]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("arg, line", [
    ("train.steps=0", "train.steps: expected at least 1, got 0"),
    ("train.eval_temperature=0", "train.eval_temperature: expected above 0, got 0.0"),
    ("method.p_replay=1.5", "method.p_replay: expected in [0, 1], got 1.5"),
    ("model.lora.dropout=1", "model.lora.dropout: expected in [0, 1), got 1.0"),
    ("method.lr=1e999", "method.lr: expected a finite number above 0, got inf"),
    ("threads=-1", "threads: expected at least 0, got -1"),
])
def test_the_message_names_key_value_and_range(arg, line):
    with pytest.raises(ConfigError) as err:
        cli(arg)
    assert str(err.value) == line


def test_a_bad_value_from_a_sweep_layer_names_its_source():
    with pytest.raises(ConfigError) as err:
        build_config([("sweeps/x.yaml: base", {"train.steps": 0})])
    assert str(err.value) == "sweeps/x.yaml: base: train.steps: expected at least 1, got 0"


# --- ASCII digits, keys given once, long values -------------------------------------------------


@pytest.mark.parametrize("arg", ["seed=٣", "seed=３", "seed=1_000", "train.steps=²", "method.lr=١e-4",
                                 "method.lr=0.٥", "method.lr=infinity", "method.lr=1_0.0"])
def test_numbers_take_ascii_digits_only(arg):
    key, value = arg.split("=")
    with pytest.raises(ConfigError) as err:
        cli(arg)
    assert str(err.value).startswith(f"{key}: expected ")


def test_ascii_numbers_still_parse():
    cfg = cli("seed=+3", "method.lr=1e-4", "method.p_replay=.5", "method.max_grad_norm=2.", "train.steps=007")
    assert (cfg.seed, cfg.method_cfg.lr, cfg.method_cfg.p_replay, cfg.method_cfg.max_grad_norm) == (3, 1e-4, 0.5, 2.0)
    assert cfg.train.steps == 7


@pytest.mark.parametrize("args, message", [
    (["seed=1", "seed=2"], "seed: given twice ('seed=1' and 'seed=2'); keep one"),
    (["seed=1", "seed=1"], "seed: given twice ('seed=1' and 'seed=1'); keep one"),
    (["train.steps=3", " train.steps=4"], "train.steps: given twice ('train.steps=3' and ' train.steps=4'); keep one"),
    (["model=tiny", "model.preset=smollm2-135m"],
     "model.preset: given twice ('model=tiny' and 'model.preset=smollm2-135m'); keep one"),
    (["slurm=local", "slurm.profile=example-hpc"],
     "slurm.profile: given twice ('slurm=local' and 'slurm.profile=example-hpc'); keep one"),
])
def test_a_key_given_twice_is_an_error(args, message):
    with pytest.raises(ConfigError) as err:
        parse_overrides(args)
    assert str(err.value) == message


LONG = "9" * 100_000


@pytest.mark.parametrize("arg, start", [
    (f"seed={LONG}", "seed: expected int, got '999"),
    (f"method.lr=x{LONG}", "method.lr: expected float, got 'x999"),
    (f"model={LONG}", "unknown model preset '999"),
    (f"task={LONG}", "unknown task '999"),
    (f"x{LONG}=1", "unknown key 'x999"),
    (f"train.steps{LONG}", "expected key=value, got 'train.steps999"),
    (f"task.source={LONG}", "arithmetic: source='999"),
])
def test_a_long_value_is_shortened_in_the_message(tmp_path, monkeypatch, capsys, arg, start):
    code, err = main_in(tmp_path, monkeypatch, capsys, arg)
    assert code == 2 and len(err) == 1
    assert err[0].startswith(f"error: {start}") and "..." in err[0], err[0][:300]
    assert len(err[0]) < 300
    assert list(tmp_path.iterdir()) == []


def test_a_long_duplicate_is_shortened():
    with pytest.raises(ConfigError) as err:
        parse_overrides([f"seed={LONG}", "seed=2"])
    assert str(err.value).startswith("seed: given twice ('seed=999") and len(str(err.value)) < 200


# --- every numeric field declares its range ----------------------------------------------------


def _config_classes() -> list[type]:
    """RunConfig and every dataclass under it, every method's and every task's Config."""
    todo = [RunConfig] + [method_module(m).Config for m in METHODS] + [task_class(t).Config for t in TASKS]
    seen: list[type] = []
    while todo:
        cls = todo.pop()
        if cls in seen:
            continue
        seen.append(cls)
        todo += [tp for tp in typing.get_type_hints(cls).values() if dataclasses.is_dataclass(tp)]
    return seen


def _numeric(tp) -> bool:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if tp in (int, float):
        return True
    return typing.get_origin(tp) in (typing.Union, types.UnionType, list) and any(map(_numeric, args))


def test_every_numeric_field_declares_a_range_its_default_lies_in():
    classes = _config_classes()
    assert {c.__name__ for c in classes} >= {"RunConfig", "TrainConfig", "TrainerConfig", "ModelConfig", "LoRAConfig",
                                             "SlurmConfig", "Config"}
    for cls in classes:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            where = f"{cls.__module__}.{cls.__name__}.{f.name}"
            if not _numeric(hints[f.name]):
                assert "range" not in f.metadata, f"{where} is not a number but declares a range"
                continue
            assert "range" in f.metadata, f"{where} declares no range (metadata={{'help': ..., 'range': '[1, inf)'}})"
            rng = Range.parse(f.metadata["range"])
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            assert default is None or rng.contains(default), f"{where}: default {default!r} outside {rng.text}"


def test_every_task_method_and_scale_builds_within_range():
    """The task YAMLs' method_defaults and the scale presets lie in range too."""
    for task in TASKS:
        for method in METHODS:
            for scale in SCALES:
                cli(f"task={task}", f"method={method}", f"scale={scale}")
    for profile in profile_names():
        cli("launcher=slurm", f"slurm={profile}")


@pytest.mark.parametrize("text, inside, outside, described", [
    ("[1, inf)", [1, 7], [0, -1, float("inf")], "at least 1"),
    ("(0, inf)", [1e-9, 3.0], [0.0, -1.0, float("nan"), float("inf")], "above 0"),
    ("[0, 1]", [0.0, 1.0, 0.5], [-0.1, 1.01], "in [0, 1]"),
    ("(0, 1]", [1.0], [0.0], "in (0, 1]"),
    ("(-inf, 0]", [-50.0, 0.0], [0.1, float("-inf")], "at most 0"),
    ("(-inf, inf)", [-1e9, 1e9], [float("nan"), float("inf")], "any number"),
])
def test_ranges(text, inside, outside, described):
    rng = Range.parse(text)
    assert all(rng.contains(v) for v in inside) and not any(rng.contains(v) for v in outside)
    assert rng.describe() == described and rng.text == text


@pytest.mark.parametrize("text", ["1..", "[1, inf]", "[-inf, 0)", "(2, 1)", "[1, 1)", "1, 2"])
def test_a_malformed_range_is_refused(text):
    with pytest.raises(ValueError):
        Range.parse(text)


def test_help_shows_the_ranges():
    text = bench.run.help_text(cli("method=gfn_tb"))
    lines = {line.split()[0]: line for line in text.splitlines() if line.startswith("  ") and line.split()}
    assert "int ≥ 1 = " in lines["train.steps"]
    assert "float > 0 = " in lines["train.eval_temperature"]
    assert "float in [0, 1] = " in lines["method.p_replay"]
    assert "float or null = " in lines["method.logz_init"]  # any number: nothing to add
    assert "str = " in lines["method.loss"]


# --- sweep search spaces -----------------------------------------------------------------------


def test_check_setting_refuses_a_search_bound_outside_the_range():
    known = slots(cli())
    assert check_setting("method.p_replay", 1.0, known["method.p_replay"]) == 1.0
    with pytest.raises(ConfigError, match=r"^method.p_replay: expected in \[0, 1\], got 1.5$"):
        check_setting("method.p_replay", 1.5, known["method.p_replay"])
    with pytest.raises(ConfigError, match=r"^method.lr: expected float, got 'x'$"):
        check_setting("method.lr", "x", known["method.lr"])


SEARCH_OUTSIDE = """\
description: test
objective: {metric: valid/accuracy}
methods:
  gfn_tb:
    trials: 1
    search:
      method.p_replay: {type: float, low: 0.0, high: 1.5}
final: {seeds: [0]}
"""


def test_a_search_space_outside_the_range_is_refused_at_planning(tmp_path, monkeypatch):
    import bench.config
    import bench.sweep_plan

    monkeypatch.setattr(bench.config, "SWEEPS_DIR", tmp_path)
    (tmp_path / "t.yaml").write_text(SEARCH_OUTSIDE)
    with pytest.raises(ConfigError, match=r"methods.gfn_tb.search.method.p_replay: method.p_replay: expected in \[0, 1\], got 1.5"):
        bench.sweep_plan.plan_sweep({"sweep": "t"})
