"""Resumable training: a run stopped after a checkpoint and resumed in a fresh process-like state
(new policy, new optimizer, global RNGs and the run's seed changed) logs the same metrics as a run
that never stopped, and its step counter continues."""
import random

import numpy as np
import pytest
import torch

from methods import method_module
from methods.base import TrainConfig, TrainContext
from methods.checkpoint import (CHECKPOINT_FILE, CheckpointError, Checkpointer, capture_state, restore_state)
from methods.engine.engine import Engine
from methods.engine.models import ModelConfig, load_policy
from tasks.arithmetic import ArithmeticTask, Config

STEPS = 6
BUDGET = TrainConfig(steps=STEPS, batch_prompts=2, samples_per_prompt=2, eval_every=0, batch_size=8)
METHODS = [("gfn_tb", {"loss": "tb", "p_replay": 0.5}), ("gfn_tb", {"loss": "subtb", "p_replay": 0.5}),
           ("ppo", {}), ("sft", {})]


class Crash(Exception):
    pass


def scripted_validation(step):
    """Validation metrics by step: SFT evaluates after steps 2, 4 and 6 (every 2 epochs of one
    step), and the best, after step 4, comes before the crash of the tests below."""
    return {"valid/accuracy": 0.9 if step == 4 else 0.5}


def run(method, overrides, checkpoints=None, seed=0, crash_at=None, budget=BUDGET):
    """Train a fresh tiny policy; the logged (step, metrics), and the policy. `crash_at`: raise
    from log_metrics at that step, as a preempted job would die mid-run."""
    policy = load_policy(ModelConfig(preset="tiny", device="cpu"), seed=0)  # base weights: not checkpointed
    if seed != 0:  # a new process: global RNGs that owe nothing to the interrupted run
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
    task = ArithmeticTask(Config(n_demos=4, n_train=8, n_valid=4, n_test=4, max_actions=12), None)
    logged = []

    def log_metrics(metrics, step):
        if step == crash_at:
            raise Crash
        logged.append((step, metrics))

    ctx = TrainContext(policy, task, Engine(policy, task, budget.batch_size), budget, seed=seed,
                       log_metrics=log_metrics, evaluate=scripted_validation, checkpoints=checkpoints)
    module = method_module(method)
    cfg = module.Config(**overrides)
    cfg.warmup_frac = 0.5  # the learning rate still moves across the checkpoint: the schedule must resume
    try:
        module.train(ctx, cfg)
    except Crash:
        pass
    return logged, policy


@pytest.mark.parametrize("method,overrides", METHODS, ids=["gfn_tb-tb", "gfn_tb-subtb", "ppo", "sft"])
def test_resumed_run_repeats_the_uninterrupted_one(tmp_path, method, overrides):
    straight, _ = run(method, overrides)
    assert [step for step, _ in straight] == list(range(STEPS))

    # Checkpoints after steps 1 and 3; the run dies in step 4, after its optimizer step.
    before_crash, _ = run(method, overrides, Checkpointer(tmp_path, every=2), crash_at=4)
    assert [step for step, _ in before_crash] == [0, 1, 2, 3]
    assert [m for _, m in before_crash] == [pytest.approx(m, abs=1e-6, rel=0) for _, m in straight[:4]]

    resumed, _ = run(method, overrides, Checkpointer(tmp_path, every=2), seed=12345)
    assert [step for step, _ in resumed] == [4, 5]  # continues after the checkpoint of step 3
    assert [m for _, m in resumed] == [pytest.approx(m, abs=1e-6, rel=0) for _, m in straight[4:]]


def test_sft_resume_keeps_the_best_adapter_found_before_the_stop(tmp_path):
    """The best adapter (after step 4) is in the checkpoint: the resumed run, whose own
    evaluation after step 6 is worse, still ends with it."""
    straight, trained = run("sft", {})
    run("sft", {}, Checkpointer(tmp_path, every=2), crash_at=4)
    resumed, policy = run("sft", {}, Checkpointer(tmp_path, every=2), seed=12345)
    assert straight[-1][1]["best_step"] == resumed[-1][1]["best_step"] == 4
    for p, q in zip(trained.trainable_parameters(), policy.trainable_parameters()):
        assert torch.allclose(p, q, atol=1e-6, rtol=0)


def test_gfn_resume_restores_the_replay_buffer(tmp_path):
    """Replay only (p_replay=1): after the resume, every step is trained on the buffer's items,
    so losses match only when the buffer and the sampling rng come back exactly."""
    overrides = {"loss": "subtb", "p_replay": 1.0}
    straight, _ = run("gfn_tb", overrides)
    run("gfn_tb", overrides, Checkpointer(tmp_path, every=2), crash_at=2)
    resumed, _ = run("gfn_tb", overrides, Checkpointer(tmp_path, every=2), seed=7)
    assert [step for step, _ in resumed] == [2, 3, 4, 5]
    assert straight[1][1]["buffer_size"] > 0  # the checkpoint after step 1 holds a buffer to replay
    assert [m for _, m in resumed] == [pytest.approx(m, abs=1e-6, rel=0) for _, m in straight[2:]]


def test_a_finished_run_saves_its_last_step_and_resumes_to_nothing(tmp_path):
    # every=4 over 6 steps: saves after step 3 and after the last step (5), which is not a multiple of 4.
    _, trained = run("sft", {}, Checkpointer(tmp_path, every=4))
    assert Checkpointer(tmp_path, every=4).load()["step"] == STEPS - 1
    logged, resumed = run("sft", {}, Checkpointer(tmp_path, every=4), seed=3)
    assert logged == []
    for p, q in zip(trained.trainable_parameters(), resumed.trainable_parameters()):
        assert torch.equal(p, q)


def test_checkpoint_of_another_method_is_refused_in_one_line(tmp_path):
    run("sft", {}, Checkpointer(tmp_path, every=1), budget=TrainConfig(steps=1, batch_prompts=1, samples_per_prompt=1,
                                                                        eval_every=0, batch_size=8))
    with pytest.raises(CheckpointError) as err:
        run("ppo", {}, Checkpointer(tmp_path, every=1))
    message = str(err.value)
    assert "\n" not in message and str(tmp_path / CHECKPOINT_FILE) in message
    assert "value_head" in message and "delete it" in message and "run_dir" in message


def test_due_every_n_steps_and_at_the_last_step(tmp_path):
    assert [s for s in range(5) if Checkpointer(tmp_path, every=2).due(s, steps=5)] == [1, 3, 4]
    assert [s for s in range(6) if Checkpointer(tmp_path, every=3).due(s, steps=6)] == [2, 5]
    assert not any(Checkpointer(tmp_path, every=0).due(s, steps=5) for s in range(5))
    with pytest.raises(ValueError, match="checkpoint_every"):
        Checkpointer(tmp_path, every=-1)


def test_load_without_a_checkpoint_is_none(tmp_path):
    assert Checkpointer(tmp_path, every=1).load() is None
    assert Checkpointer(tmp_path / "not-yet-created", every=1).load() is None


def test_save_replaces_the_checkpoint_and_ignores_leftover_temp_files(tmp_path):
    checkpoints = Checkpointer(tmp_path, every=1)
    checkpoints.save(1, {"x": torch.tensor([1.0])})
    checkpoints.save(3, {"x": torch.tensor([3.0])})
    (tmp_path / f".{CHECKPOINT_FILE}.killed-mid-save.tmp").write_bytes(b"half a checkpoint")
    saved = checkpoints.load()
    assert saved["step"] == 3 and torch.equal(saved["state"]["x"], torch.tensor([3.0]))
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".tmp")) == [CHECKPOINT_FILE]


def test_a_failed_save_keeps_the_previous_checkpoint(tmp_path):
    checkpoints = Checkpointer(tmp_path, every=1)
    checkpoints.save(1, {"x": torch.tensor([1.0])})
    with pytest.raises(Exception):  # a lambda cannot be pickled: the save fails midway
        checkpoints.save(3, {"x": torch.tensor([3.0]), "unsaveable": lambda: None})
    assert checkpoints.load()["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == [CHECKPOINT_FILE]  # its temporary file removed


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_checkpoint_is_one_line_naming_the_file_and_the_fix(tmp_path, damage):
    checkpoints = Checkpointer(tmp_path, every=1)
    checkpoints.save(1, {"x": torch.zeros(1000)})
    data = checkpoints.path.read_bytes()
    checkpoints.path.write_bytes(b"not a checkpoint" if damage == "garbage" else data[: len(data) // 2])
    with pytest.raises(CheckpointError) as err:
        checkpoints.load()
    message = str(err.value)
    assert "\n" not in message and str(checkpoints.path) in message
    assert "delete it" in message and "run_dir" in message


def test_state_round_trips_the_global_and_owned_rngs(tmp_path):
    policy = load_policy(ModelConfig(preset="tiny", device="cpu"), seed=0)
    own_rng, generator = random.Random(5), torch.Generator().manual_seed(5)
    random.gauss(0, 1)  # python and numpy keep a cached Gaussian in their state: it must survive too
    np.random.standard_normal()
    parts = {"rng": own_rng, "generator": generator}
    checkpoints = Checkpointer(tmp_path, every=1)
    checkpoints.save(0, capture_state(policy, parts))

    def draws():
        return (random.random(), random.gauss(0, 1), np.random.rand(), np.random.standard_normal(),
                torch.rand(1).item(), own_rng.random(), torch.rand(1, generator=generator).item())

    expected = draws()
    for p in policy.trainable_parameters():  # the adapter moves on after the save
        p.data.add_(1.0)
    restore_state(policy, parts, checkpoints.load()["state"])  # loaded with weights_only=True
    assert draws() == expected
    fresh = load_policy(ModelConfig(preset="tiny", device="cpu"), seed=0)
    for p, q in zip(policy.trainable_parameters(), fresh.trainable_parameters()):
        assert torch.equal(p, q)
