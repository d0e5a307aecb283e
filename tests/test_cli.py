"""`python -m bench.run` as a user runs it: a mistake is one line on stderr, exit 2, no files."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import bench.config
import bench.run
from bench.config import sweep_names

REPO = Path(__file__).resolve().parents[1]


def bench_run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("MLFLOW_TRACKING_URI", None)  # the default store would live in cwd/runs
    return subprocess.run([sys.executable, "-m", "bench.run", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("args, message", [
    (["sweep=nope"], f"error: unknown sweep 'nope'; choose one of: {', '.join(sweep_names())}"),
    (["sweep=smoke", "method.lr=abc"], "error: method.lr: expected float, got 'abc'"),
    (["sweep=smoke", "train.steps=0"], "error: train.steps: expected at least 1, got 0"),
    (["sweep=smoke", "model.kv_cache=cuda"], "error: unknown model kv_cache 'cuda'; choose one of: auto, dynamic, static, compiled"),
])
def test_mistakes_exit_2_with_one_line_and_write_nothing(tmp_path, args, message):
    result = bench_run(*args, "run_dir=runs", "results_dir=results", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [message]
    assert list(tmp_path.iterdir()) == []


def test_help_lists_sweeps_methods_tasks(tmp_path):
    result = bench_run("--help", "method=ppo", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for expected in ("gfn_vs_ppo", "smoke", "gfn_tb", "ppo", "arithmetic", "smollm2-135m", "tiny",
                     "paper", "train.steps", "model.lora.r", "method.kl_coef", "task.n_train"):
        assert expected in out
    assert list(tmp_path.iterdir()) == []


def test_help_shows_the_tasks_method_defaults(tmp_path):
    result = bench_run("--help", "task=subj", "method=gfn_tb", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "values include tasks/subj.yaml method_defaults" in result.stdout
    line = next(line for line in result.stdout.splitlines() if line.strip().startswith("method.reward_temp_start "))
    assert "float > 0 = 1.2 " in line


CONFLICT = """\
description: an entry that fixes and searches the same key
base: {model: tiny}
objective: {metric: valid/accuracy}
methods:
  gfn_tb:
    trials: 1
    fixed: {method.loss: subtb}
    search:
      method.loss: {type: categorical, choices: [subtb, tb]}
final: {seeds: [0]}
"""


def test_a_key_both_fixed_and_searched_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    """In this process, to read the sweep from tmp_path: the same main() as `python -m bench.run`."""
    sweeps = tmp_path / "sweeps"
    sweeps.mkdir()
    (sweeps / "conflict.yaml").write_text(CONFLICT)
    monkeypatch.setattr(bench.config, "SWEEPS_DIR", sweeps)
    monkeypatch.chdir(tmp_path)
    assert bench.run.main(["sweep=conflict", "run_dir=runs", "results_dir=results"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: sweeps/conflict.yaml: methods.gfn_tb: names method.loss in both fixed and search; keep one"]
    assert [p.name for p in tmp_path.iterdir()] == ["sweeps"]
