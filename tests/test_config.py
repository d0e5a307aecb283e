"""Override parsing, layering and validation of RunConfig (no training, no files written)."""
from __future__ import annotations

import dataclasses
import typing

import pytest

from bench.config import build_config, flatten, parse_overrides, slots, sweep_names
from bench.run_config import RunConfig
from bench.scales import SCALES
from bench.sweep_file import load_spec
from bench.sweep_plan import plan_sweep
from bench.errors import ConfigError
from methods import METHODS, method_module
from tasks import TASKS, task_class


def cli(*args: str) -> RunConfig:
    return build_config([(None, parse_overrides(args))])


def test_values_are_parsed_by_field_type():
    cfg = cli("seed=3", "method.lr=3e-4", "method.seed_buffer=false", "model.name=some/model",
              "model.lora.target_modules=[q_proj,k_proj]", "data_dir=null", "train.eval_temperature=1")
    assert cfg.seed == 3
    assert cfg.method_cfg.lr == pytest.approx(3e-4) and isinstance(cfg.method_cfg.lr, float)
    assert cfg.method_cfg.seed_buffer is False
    assert cfg.model.name == "some/model"
    assert cfg.model.lora.target_modules == ["q_proj", "k_proj"]
    assert cfg.data_dir is None
    assert cfg.train.eval_temperature == 1.0 and isinstance(cfg.train.eval_temperature, float)
    assert cli("model.lora.target_modules=[]").model.lora.target_modules == []
    assert cli("model.name='null'").model.name == "null"  # quotes keep a literal string


@pytest.mark.parametrize("arg, message", [
    ("seed=1.5", "seed: expected int, got '1.5'"),
    ("method.lr=abc", "method.lr: expected float, got 'abc'"),
    ("method.seed_buffer=maybe", "method.seed_buffer: expected bool, got 'maybe'"),
    ("seed=null", "seed: expected int, got 'null'"),
    ("model.lora.target_modules=q_proj", "model.lora.target_modules: expected list of str, got 'q_proj'"),
])
def test_wrong_type_names_the_key(arg, message):
    with pytest.raises(ConfigError) as err:
        cli(arg)
    assert str(err.value) == message


def test_group_selection_switches_the_dataclass():
    cfg = cli("method=ppo", "method.kl_coef=0.2", "task=arithmetic", "task.n_train=100", "model=tiny")
    assert type(cfg.method_cfg) is method_module("ppo").Config
    assert cfg.method_cfg.kl_coef == 0.2
    assert cfg.task_cfg.n_train == 100
    assert cfg.model.preset == "tiny"
    # The group choice is made over all layers first, so its keys may come before it.
    assert cli("method.kl_coef=0.3", "method=ppo").method_cfg.kl_coef == 0.3
    with pytest.raises(ConfigError, match="unknown key 'method.kl_coef'"):
        cli("method=gfn_tb", "method.kl_coef=0.2")


def test_precedence_defaults_scale_sweep_cli_trial():
    default_steps = RunConfig().train.steps
    assert cli("scale=paper").train.steps == SCALES["paper"]["train.steps"] != default_steps
    sweep_layer = ("sweeps/x.yaml: base", {"scale": "smoke", "train.steps": 7, "train.batch_size": 5})
    cfg = build_config([sweep_layer])
    assert (cfg.scale, cfg.train.steps, cfg.train.batch_size) == ("smoke", 7, 5)
    assert cfg.train.eval_prompts == SCALES["smoke"]["train.eval_prompts"]
    cfg = build_config([sweep_layer, (None, {"train.steps": "9", "scale": "cpu"})])
    assert (cfg.scale, cfg.train.steps) == ("cpu", 9)  # command line beats the sweep
    assert cfg.train.eval_prompts == SCALES["cpu"]["train.eval_prompts"]
    cfg = build_config([sweep_layer, (None, {"method.lr": "1e-3"}), ("trial", {"method.lr": 2e-5})])
    assert cfg.method_cfg.lr == 2e-5  # an Optuna suggestion beats the command line


def test_task_yaml_sets_the_paper_method_defaults_of_its_task():
    gfn = cli("method=gfn_tb", "task=subj").method_cfg
    assert (gfn.reward_temp_start, gfn.reward_temp_end, gfn.reward_temp_horizon_frac) == (1.2, 1.0, 0.15)
    assert (gfn.p_replay, gfn.p_tempered, gfn.buffer_size, gfn.warmup_frac) == (0.5, 0.25, 100, 0.1)
    # ppo has the schedule and the warm-up, and no replay buffer: those keys are skipped for it.
    ppo = cli("method=ppo", "task=subj").method_cfg
    assert (ppo.reward_temp_start, ppo.reward_temp_end, ppo.reward_temp_horizon_frac, ppo.warmup_frac) == (1.2, 1.0, 0.15, 0.1)
    continuation = cli("method=gfn_tb", "task=continuation").method_cfg
    assert (continuation.reward_temp_start, continuation.reward_temp_end, continuation.reward_temp_horizon_frac,
            continuation.p_replay, continuation.p_tempered) == (1.0, 0.8, 0.375, 0.25, 0.5)
    infilling = cli("method=gfn_tb", "task=infilling").method_cfg
    assert (infilling.reward_temp_start, infilling.reward_temp_end, infilling.reward_temp_horizon_frac) == (1.1, 0.85, 0.05)


def test_task_method_defaults_sit_below_scale_sweep_and_command_line(monkeypatch):
    assert cli("task=subj", "method.reward_temp_start=1.5").method_cfg.reward_temp_start == 1.5
    monkeypatch.setitem(SCALES["smoke"], "method.p_replay", 0.9)
    assert cli("task=subj", "scale=smoke").method_cfg.p_replay == 0.9
    cfg = build_config([("sweeps/x.yaml: base", {"task": "subj", "method.buffer_size": 7})])
    assert (cfg.method_cfg.buffer_size, cfg.method_cfg.p_replay) == (7, 0.5)


def test_an_unknown_key_in_a_tasks_method_defaults_is_an_error(monkeypatch):
    subj = task_class("subj")
    spec = dataclasses.replace(subj.spec, method_defaults={**subj.spec.method_defaults, "p_replai": 0.5})
    monkeypatch.setattr(subj, "spec", spec)
    with pytest.raises(ConfigError) as err:
        cli("task=subj", "method=sft")
    assert str(err.value) == ("tasks/subj.yaml: method_defaults: unknown key 'p_replai' (no method has it); "
                              "did you mean 'p_replay'?")
    monkeypatch.setattr(subj, "spec", dataclasses.replace(spec, method_defaults={"p_replay": "often"}))
    with pytest.raises(ConfigError, match=r"^tasks/subj.yaml: method_defaults: method.p_replay: expected float"):
        cli("task=subj")


def test_auto_scale_is_resolved():
    assert cli().scale == "cpu"  # the tests run without a GPU


def test_unknown_key_suggests_the_closest():
    with pytest.raises(ConfigError, match=r"unknown key 'train.stepz'; did you mean 'train.steps'\?"):
        cli("train.stepz=3")
    with pytest.raises(ConfigError, match=r"unknown key 'method.learning_rate'"):
        cli("method.learning_rate=3")


@pytest.mark.parametrize("arg, message", [
    ("sweep=nope", f"unknown sweep 'nope'; choose one of: {', '.join(sweep_names())}"),
    ("method=nope", f"unknown method 'nope'; choose one of: {', '.join(sorted(METHODS))}"),
    ("task=nope", f"unknown task 'nope'; choose one of: {', '.join(sorted(TASKS))}"),
    ("model=nope", "unknown model preset 'nope'; choose one of: smollm2-135m, tiny"),
    ("scale=nope", "unknown scale 'nope'; choose one of: smoke, cpu, paper, auto"),
    ("launcher=nope", "unknown launcher 'nope'; choose one of: local, debug, slurm"),
    ("model.kv_cache=graphs", "unknown model kv_cache 'graphs'; choose one of: auto, dynamic, static, compiled"),
    ("seed", "expected key=value, got 'seed'"),
])
def test_unknown_choices(arg, message):
    with pytest.raises(ConfigError) as err:
        cli(arg)
    assert str(err.value) == message


def test_every_field_has_a_type_a_default_and_help():
    configs = [RunConfig] + [method_module(m).Config for m in METHODS] + [task_class(t).Config for t in TASKS]
    seen = set()
    while configs:
        cls = configs.pop()
        if cls in seen:
            continue
        seen.add(cls)
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            assert f.name in hints, f"{cls.__name__}.{f.name} has no type"
            assert f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING, \
                f"{cls.__name__}.{f.name} has no default"
            assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help"
            if dataclasses.is_dataclass(hints[f.name]):
                configs.append(hints[f.name])
    for method in METHODS:
        assert all(slot.help for slot in slots(cli(f"method={method}")).values())


def test_flatten_lists_every_setting():
    flat = flatten(cli("method=ppo", "model=tiny"))
    assert flat["method"] == "ppo" and flat["model.preset"] == "tiny"
    assert {"method.kl_coef", "task.n_train", "train.steps", "model.lora.r", "seed"} <= set(flat)


def test_sweep_files_are_valid_and_plans_apply_layers(tmp_path):
    for name in ("gfn_vs_ppo", "smoke"):
        assert load_spec(name).description
    # run_dir: planning checks a sweep's stored study, and ./runs may hold one from `make run`.
    plan = plan_sweep({"sweep": "smoke", "train.steps": "2", "run_dir": str(tmp_path)})
    assert [m.name for m in plan.methods] == ["gfn_tb", "ppo"]
    assert plan.seeds == [0] and plan.cfg.scale == "smoke"
    for method in plan.methods:
        assert method.trials == 2
        assert method.config.model.preset == "tiny" and method.config.train.steps == 2
        assert method.config.sweep == "smoke"
    plan = plan_sweep({"sweep": "gfn_vs_ppo", "scale": "paper", "method": "ppo", "run_dir": str(tmp_path)})
    assert [(m.name, m.trials) for m in plan.methods] == [("ppo", 20)] and plan.seeds == [0, 1, 2]
    assert {p.key for p in plan.methods[0].search} == {"method.lr", "method.kl_coef"}


def test_sweep_cli_values_are_checked_against_every_method():
    with pytest.raises(ConfigError, match=r"^method.lr: expected float, got 'abc'$"):
        plan_sweep({"sweep": "smoke", "method.lr": "abc"})
    with pytest.raises(ConfigError, match="unknown key 'method.loss'"):
        plan_sweep({"sweep": "smoke", "method.loss": "tb"})  # gfn_tb has it, ppo does not


@pytest.fixture
def sweeps_dir(tmp_path, monkeypatch):
    import bench.config

    monkeypatch.setattr(bench.config, "SWEEPS_DIR", tmp_path)
    return tmp_path


GOOD = """\
description: test
objective: {metric: valid/accuracy}
methods:
  gfn_tb:
    trials: {cpu: 3}
    search:
      method.lr: {type: float, low: 1.0e-5, high: 1e-3, log: true}
final: {seeds: [0]}
"""


@pytest.mark.parametrize("replace, message", [
    (("description", "descripton"), "sweeps/t.yaml: unknown key 'descripton'; did you mean 'description'?"),
    (("valid/accuracy", "test_id/accuracy"), "sweeps/t.yaml: objective.metric: expected valid/<metric>"),
    (("gfn_tb:", "nope:"), "sweeps/t.yaml: methods.nope: unknown method 'nope'"),
    (("low: 1.0e-5", "low: 1.0e-2"), "sweeps/t.yaml: methods.gfn_tb.search.method.lr: low (0.01) must be below high"),
    (("type: float", "type: floot"), "type must be float, int or categorical, got 'floot'"),
    (("method.lr:", "method.lrr:"), "methods.gfn_tb.search.method.lrr: unknown key 'method.lrr'; did you mean 'method.lr'?"),
    (("method.lr:", "method.seed_buffer:"), "methods.gfn_tb.search.method.seed_buffer: method.seed_buffer: expected bool"),
    (("{cpu: 3}", "{paper: 3}"), "sweeps/t.yaml: methods.gfn_tb.trials: no value for scale 'cpu'"),
    (("{cpu: 3}", "-1"), "methods.gfn_tb.trials: expected a non-negative integer"),
    (("seeds: [0]", "seeds: []"), "final.seeds: expected a non-empty list of integer seeds"),
    (("methods:", "base: {run_dir: x, method: ppo}\nmethods:"), "sweeps/t.yaml: base: 'method' cannot be set here"),
    (("description: test", "description: [oops"), "sweeps/t.yaml: invalid YAML"),
    (("    search:", "    fixed: {method.lr: 1.0e-4}\n    search:"),
     "sweeps/t.yaml: methods.gfn_tb: names method.lr in both fixed and search; keep one"),
    (("    search:", "    fixed: {method.lr: {cpu: 1.0e-4}, method.loss: tb}\n    search:\n"
                     "      method.loss: {type: categorical, choices: [tb, subtb]}"),
     "sweeps/t.yaml: methods.gfn_tb: names method.loss, method.lr in both fixed and search; keep one"),
])
def test_sweep_file_errors(sweeps_dir, replace, message):
    (sweeps_dir / "t.yaml").write_text(GOOD.replace(*replace))
    with pytest.raises(ConfigError) as err:
        plan_sweep({"sweep": "t"})
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_every_shipped_sweep_plans_at_every_scale(shared_data, tmp_path):
    for name in sweep_names():
        for scale in ("smoke", "cpu", "paper"):
            plan = plan_sweep({"sweep": name, "scale": scale, "data_dir": str(shared_data),
                               "run_dir": str(tmp_path / "runs")})
            assert plan.methods and plan.cfg.scale == scale, (name, scale)


def test_shared_layers_may_set_a_key_an_entry_searches(sweeps_dir):
    """base and tasks.<task> hold every entry's value; an entry's search replaces it in its trials."""
    (sweeps_dir / "t.yaml").write_text(GOOD.replace("methods:", "base: {method.lr: 2.0e-4}\n"
                                                    "tasks: {arithmetic: {method.lr: 3.0e-4}}\nmethods:"))
    plan = plan_sweep({"sweep": "t"})
    assert plan.methods[0].config.method_cfg.lr == 3.0e-4
    assert plan.methods[0].config_for(("trial", {"method.lr": 1e-5})).method_cfg.lr == 1e-5


def test_good_sweep_file(sweeps_dir):
    (sweeps_dir / "t.yaml").write_text(GOOD)
    plan = plan_sweep({"sweep": "t"})
    assert plan.spec.direction == "maximize"  # from the metric's higher_is_better
    assert plan.methods[0].trials == 3


def test_untuned_values_apply_only_where_the_entry_is_not_tuned(sweeps_dir):
    recipe = GOOD.replace("{cpu: 3}", "{cpu: 0, paper: 20}").replace(
        "    search:", "    untuned: {method.lr: {cpu: 1.0e-3, paper: 5.0e-4}}\n    search:")
    (sweeps_dir / "t.yaml").write_text(recipe)
    assert plan_sweep({"sweep": "t"}).methods[0].config_for().method_cfg.lr == 1e-3
    tuned = plan_sweep({"sweep": "t", "scale": "paper"}).methods[0]
    assert tuned.trials == 20 and tuned.config_for().method_cfg.lr == 1e-4  # the default, below the search
    assert plan_sweep({"sweep": "t", "method.lr": "2e-3"}).methods[0].config_for().method_cfg.lr == 2e-3  # command line wins
    (sweeps_dir / "t.yaml").write_text(recipe.replace("untuned: {method.lr:", "untuned: {method.loss: tb, method.lr:"))
    assert plan_sweep({"sweep": "t"}).methods[0].config_for().method_cfg.loss == "tb"  # any key, not only searched
    assert plan_sweep({"sweep": "t", "scale": "paper"}).methods[0].config_for().method_cfg.loss == "subtb"
    (sweeps_dir / "t.yaml").write_text(recipe.replace("    untuned:", "    fixed: {method.loss: tb}\n    untuned: {method.loss: vargrad}\n    unused:"))
    with pytest.raises(ConfigError, match="unknown key 'unused'"):
        plan_sweep({"sweep": "t"})
    (sweeps_dir / "t.yaml").write_text(recipe.replace("    untuned: {", "    fixed: {method.loss: tb}\n    untuned: {method.loss: vargrad, "))
    with pytest.raises(ConfigError, match="names method.loss in both fixed and untuned; keep one"):
        plan_sweep({"sweep": "t"})


def test_trials_0_plans_an_untuned_entry(sweeps_dir):
    (sweeps_dir / "t.yaml").write_text(GOOD.replace("{cpu: 3}", "{cpu: 0, paper: 20}"))
    assert [m.trials for m in plan_sweep({"sweep": "t"}).methods] == [0]
    assert [m.trials for m in plan_sweep({"sweep": "t", "scale": "paper"}).methods] == [20]
    (sweeps_dir / "t.yaml").write_text(GOOD)
    assert [m.trials for m in plan_sweep({"sweep": "t", "trials": "0"}).methods] == [0]
    with pytest.raises(ConfigError, match="^trials: expected at least 0, got -1$"):
        plan_sweep({"sweep": "t", "trials": "-1"})
