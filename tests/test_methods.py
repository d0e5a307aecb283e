"""Every method trains on the tiny model: its LoRA parameters move and its losses stay finite."""
import math

import pytest
import torch

from methods import METHODS, method_module
from methods.base import TrainConfig, TrainContext
from methods.engine.engine import Engine
from tasks.arithmetic import ArithmeticTask, Config

BUDGET = TrainConfig(steps=2, batch_prompts=2, samples_per_prompt=2, eval_every=0, batch_size=8)


def run(policy, method: str, budget: TrainConfig = BUDGET, **overrides):
    task = ArithmeticTask(Config(n_demos=4, n_train=8, n_valid=4, n_test=4, max_actions=12), None)
    logged = []
    ctx = TrainContext(policy, task, Engine(policy, task, budget.batch_size), budget, seed=0,
                       log_metrics=lambda m, step: logged.append((step, m)), evaluate=lambda step: {})
    module = method_module(method)
    cfg = module.Config(**overrides)
    cfg.warmup_frac = 0.0  # full learning rate from the first step, so that two steps move the weights
    module.train(ctx, cfg)
    return logged


@pytest.mark.parametrize("method,overrides", [
    ("gfn_tb", {"loss": "tb"}), ("gfn_tb", {"loss": "subtb"}), ("gfn_tb", {"loss": "vargrad"}), ("ppo", {}),
])
def test_method_updates_lora_and_stays_finite(tiny_policy, method, overrides):
    assert method in METHODS
    before = [p.detach().clone() for p in tiny_policy.trainable_parameters()]
    logged = run(tiny_policy, method, **overrides)
    assert [step for step, _ in logged] == [0, 1]
    assert all(math.isfinite(m["loss"]) for _, m in logged)
    moved = sum((p.detach() - b).abs().sum().item() for p, b in zip(tiny_policy.trainable_parameters(), before))
    assert moved > 0
    assert not tiny_policy.model.training, "rollouts and scoring must run without dropout"


def test_tb_learns_its_log_z_head(tiny_policy):
    """log Z(x) starts at logz_init (a zero weight) and moves with its own learning rate."""
    logged = run(tiny_policy, "gfn_tb", loss="tb", logz_init=0.0)
    assert logged[0][1]["log_z"] == 0.0 and logged[1][1]["log_z"] != 0.0


def test_gfn_trains_on_replayed_trajectories(tiny_policy):
    """With replay forced, every query that has buffer items is trained on replayed rows."""
    logged = run(tiny_policy, "gfn_tb", loss="subtb", p_replay=1.0)
    assert all(m["buffer_size"] >= 1 and math.isfinite(m["loss"]) for _, m in logged)


def test_nan_loss_stops_the_run_with_a_clear_error(tiny_policy):
    with pytest.raises(FloatingPointError, match="non-finite loss"):
        run(tiny_policy, "gfn_tb", loss="tb", logz_init=float("nan"))


@pytest.mark.parametrize("method,overrides", [("gfn_tb", {"loss": "subtb"}), ("gfn_tb", {"loss": "vargrad"}), ("ppo", {})])
def test_gradient_accumulation_over_micro_batches(tiny_policy, method, overrides):
    """Rows of different lengths split over several micro-batches (batch_size < rows per step)."""
    budget = TrainConfig(steps=1, batch_prompts=3, samples_per_prompt=2, eval_every=0, batch_size=2)
    logged = run(tiny_policy, method, budget, **overrides)
    assert math.isfinite(logged[0][1]["loss"])
