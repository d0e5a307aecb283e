"""bench.perf on the tiny model: its report, and its paper-style reward loop against the engine's one pass.

Speed is never asserted here (the benchmark shows it); these tests check that the benchmark runs,
compares equal work, and refuses bad input."""
import re

import torch

from bench import perf
from bench.paper_reference import paper_per_token_rewards
from methods.engine.engine import Engine
from methods.engine.rollout import Trajectories
from tasks.arithmetic import ArithmeticTask, Config


def test_the_paper_style_reward_loop_equals_the_one_pass_reward(tiny_policy):
    task = ArithmeticTask(Config(n_train=8, n_valid=2, n_test=2, max_actions=12), None)
    engine = Engine(tiny_policy, task, batch_size=3)
    examples = task.train_examples()[:4] + task.demonstrations()[:2]
    traj = engine.sample(examples[:4], [1.5] * 4, torch.Generator().manual_seed(0))
    demos = engine.demonstrations(examples[4:])  # rows with calculator outputs
    demos.example_idx = [4, 5]
    traj = Trajectories.concat([traj, demos])
    fast = engine.log_reward(traj, examples, per_prefix=True)
    slow = paper_per_token_rewards(engine, traj, examples)
    for b, ends in enumerate(traj.state_ends()):
        torch.testing.assert_close(fast[b, :len(ends)].cpu(), slow[b, :len(ends)], atol=1e-4, rtol=0)


def test_the_benchmark_writes_its_report(tmp_path, capsys):
    """With the decode table (compiled left out: Inductor takes seconds on a CPU, and
    tests/test_static_decode.py runs it)."""
    out = tmp_path / "perf.md"
    assert perf.main(["--model", "tiny", "--batch-sizes", "4", "--device", "cpu", "--out", str(out),
                      "--decode", "dynamic,static"]) == 0
    text = out.read_text()
    assert "| 4 |" in text and "**whole step**" in text and "commit" in text and "kv_cache dynamic" in text
    diff = float(re.search(r"max \|log R - paper's log R\| over all states = (\d\.\de[+-]\d+)", text).group(1))
    assert diff < 1e-3
    assert re.search(r"\| float32 \| 4 \| dynamic \| \d+ \| [\d.]+ \| \d+ \| 1\.00× \| [\d.]+ \| 0 / 4 \|", text)
    assert re.search(r"\| float32 \| 4 \| static \| \d+ \| [\d.]+ \| \d+ \| [\d.]+× \| [\d.]+ \| 0 / 4 \|", text)


def test_the_decode_table_skips_cells_past_its_budget(tmp_path):
    out = tmp_path / "perf.md"
    assert perf.main(["--model", "tiny", "--batch-sizes", "4", "--device", "cpu", "--out", str(out), "--no-reference",
                      "--decode", "static", "--decode-budget", "0"]) == 0
    assert "| float32 | 4 | static | skipped: past the time budget |" in out.read_text()


def test_bad_batch_sizes_exit_2_with_one_line(capsys):
    assert perf.main(["--model", "tiny", "--batch-sizes", "6", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("bench.perf: --batch-sizes '6'")


def test_an_unknown_decode_way_exits_2_with_one_line(capsys):
    assert perf.main(["--model", "tiny", "--decode", "dynamic,graphs", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["bench.perf: --decode 'dynamic,graphs': give some of dynamic, static, compiled, or none"]


def test_harness_timers_count_the_outermost_call_once_and_restore_what_they_wrap():
    import time as clock

    from bench.overhead import HarnessTimers

    class Store:
        def inner(self):
            clock.sleep(0.02)

        def outer(self):
            self.inner()
            clock.sleep(0.02)

    original = Store.outer
    timers = HarnessTimers()
    timers.wrap(Store, "outer", "a")
    timers.wrap(Store, "inner", "b")
    Store().outer()
    Store().inner()
    assert timers.calls == {"a: Store.outer": 1, "b: Store.inner": 1}  # inner inside outer counted for outer only
    assert timers.seconds["a: Store.outer"] >= 0.04 and 0.02 <= timers.seconds["b: Store.inner"] < 0.04
    timers.restore()
    assert Store.outer is original


def test_the_overhead_benchmark_times_a_real_sweep_run(tmp_path):
    """A smoke-scale final in a temporary store: every harness call the run makes is counted (one
    checkpoint at its last step, one metric batch per step), and nothing stays wrapped."""
    import mlflow

    from bench import overhead
    start_run = mlflow.start_run
    out = tmp_path / "harness.md"
    assert overhead.main(["sweep=smoke", "method=gfn_tb", "scale=smoke", "--out", str(out)]) == 0
    text = out.read_text()
    assert "| checkpoints: Checkpointer.save | 1 |" in text
    metric_batches = int(re.search(r"\| mlflow: RunLog.metrics \| (\d+) \|", text).group(1))
    assert metric_batches >= 3  # at least one per training step
    assert re.search(r"\*\*harness, in the run\*\* \| \| \*\*[\d.]+\*\* \| \*\*[\d.]+%\*\*", text)
    assert mlflow.start_run is start_run
