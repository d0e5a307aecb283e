"""Warm-up and reward temperature are fractions of the run: every budget runs the whole schedule."""
import pytest
import torch

from methods.base import RewardTemperature, warmup_schedule, warmup_steps
from methods import gfn_tb, ppo, sft


@pytest.mark.parametrize("steps", [3, 30, 2000])
def test_reward_temperature_reaches_its_end_within_the_run(steps):
    cfg = RewardTemperature(reward_temp_start=1.1, reward_temp_end=0.5, reward_temp_horizon_frac=0.075)
    temps = [cfg.reward_temperature(s, steps) for s in range(steps)]
    assert temps[0] == pytest.approx(1.1)
    assert temps[-1] == pytest.approx(0.5)
    assert all(a >= b - 1e-12 for a, b in zip(temps, temps[1:]))  # never rises
    if steps == 2000:  # the paper's 150 steps of 2,000
        assert temps[75] == pytest.approx(1.1 - 0.6 * 75 / (0.075 * 1999))
        assert temps[150] == pytest.approx(0.5)


@pytest.mark.parametrize("steps", [3, 30])
def test_a_horizon_of_the_whole_run_ends_at_the_last_step(steps):
    cfg = RewardTemperature(reward_temp_start=1.0, reward_temp_end=0.8, reward_temp_horizon_frac=1.0)
    assert cfg.reward_temperature(steps - 2, steps) > 0.8
    assert cfg.reward_temperature(steps - 1, steps) == pytest.approx(0.8)


@pytest.mark.parametrize("steps, expected", [(3, 1), (30, 1), (2000, 20)])
def test_warmup_completes_within_the_run(steps, expected):
    assert warmup_steps(0.01, steps) == expected
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = warmup_schedule(optimizer, 0.01, steps)
    rates = []
    for _ in range(steps):
        rates.append(schedule.get_last_lr()[0])
        optimizer.step()
        schedule.step()
    assert rates[expected - 1] == pytest.approx(1.0)  # the last warm-up step trains at the full rate
    assert rates[0] == pytest.approx(1.0 / expected)
    assert warmup_steps(0.5, 3) == 2 and warmup_steps(1.0, 3) == 3


@pytest.mark.parametrize("frac", [-0.1, 1.5])
def test_fractions_outside_0_1_are_refused(frac):
    with pytest.raises(ValueError, match="warmup_frac"):
        warmup_steps(frac, 10)
    with pytest.raises(ValueError, match="reward_temp_horizon_frac"):
        RewardTemperature(reward_temp_horizon_frac=frac).reward_temperature(0, 10)


def test_every_trainable_method_takes_the_warmup_as_a_fraction():
    for module in (gfn_tb, ppo, sft):
        assert module.Config().warmup_frac == 0.01
        assert not hasattr(module.Config(), "warmup_steps")
