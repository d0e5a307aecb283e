"""One run trained by several processes (`trainer.num_processes`, bench/parallel.py), on CPUs with gloo.

The gradient average is checked against the gradient of the whole batch in one process; the
harness is run as a user would (real processes, the tiny model, a real MLflow store) for training,
resuming, an agreed stop and the death of the trial's process.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import mlflow
import psutil
import pytest
import torch

from bench.config import build_config
from bench.interrupt import StoppingCheckpointer
from bench.parallel import RankCheckpointer
from bench.errors import ConfigError
from methods.checkpoint import Checkpointer, CheckpointError

REPO = Path(__file__).resolve().parents[1]
RUN = ["task=arithmetic", "method=gfn_tb", "model=tiny", "scale=smoke", "trainer.num_processes=2",
       "train.batch_prompts=2", "system_metrics=false", "train.eval_prompts=2", "threads=1"]

# One run in this process, as a sweep worker runs a trial: stop requests honoured, checkpoints in argv[1].
DRIVER = textwrap.dedent("""
    import json, os, sys
    from pathlib import Path
    from bench.config import build_config, parse_overrides
    from bench.interrupt import Interrupted, StopRequest
    from bench.training import run_trial

    cfg = build_config([(None, parse_overrides(sys.argv[2:]))])
    StopRequest.install()
    try:
        metrics = run_trial(cfg, stage="single", checkpoint_dir=Path(sys.argv[1]), run_id=os.environ.get("RUN_ID"))
    except Interrupted as stop:
        print("INTERRUPTED", json.dumps([stop.reason, stop.step]))
        sys.exit(3)
    print("METRICS", json.dumps(metrics))
""")

# Two ranks average the gradients of their own halves of a batch (argv: result file).
AVERAGE = textwrap.dedent("""
    import json, sys, torch
    from accelerate import PartialState
    from methods.parallel import DataParallel

    parallel = DataParallel(PartialState(cpu=True))
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    x = torch.randn(6, 3)
    rows = x[parallel.rank * 3:(parallel.rank + 1) * 3]
    model(rows).pow(2).mean().backward()
    parallel.average_gradients(list(model.parameters()))
    mean = parallel.mean({"rank": float(parallel.rank)})
    json.dump({"grads": [p.grad.tolist() for p in model.parameters()], "mean": mean,
               "seeds": parallel.gather(parallel.seed(7))}, open(sys.argv[1] + str(parallel.rank), "w"))
    parallel.state.destroy_process_group()
""")


def env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'm.db'}"}


def start(tmp_path: Path, *overrides: str, run_id: str | None = None) -> subprocess.Popen:
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    extra = {"RUN_ID": run_id} if run_id else {}
    return subprocess.Popen([sys.executable, str(script), str(tmp_path / "checkpoint"), *RUN,
                             f"run_dir={tmp_path}", *overrides],
                            cwd=tmp_path, env=env(tmp_path) | extra, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen, timeout: float = 240) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def the_run(tmp_path: Path):
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'm.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("gfn-bench").experiment_id])
    return client, run


def loss_steps(client, run_id: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, "train/loss"))


def rank_processes(driver_pid: int) -> list[psutil.Process]:
    try:
        children = psutil.Process(driver_pid).children()
    except psutil.NoSuchProcess:
        return []
    return [p for p in children if "bench.parallel" in " ".join(p.cmdline())]


def saved(tmp_path: Path) -> dict:
    return torch.load(tmp_path / "checkpoint" / "checkpoint.pt", weights_only=True)


def test_averaged_gradients_are_the_gradients_of_the_whole_batch(tmp_path):
    script = tmp_path / "average.py"
    script.write_text(AVERAGE)
    port = str(29000 + os.getpid() % 1000)
    ranks = [subprocess.Popen([sys.executable, str(script), str(tmp_path / "rank")],
                              env=env(tmp_path) | {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "WORLD_SIZE": "2",
                                                   "RANK": str(r), "LOCAL_RANK": str(r), "GLOO_SOCKET_IFNAME": "lo"})
             for r in range(2)]
    assert [p.wait(timeout=120) for p in ranks] == [0, 0]
    results = [json.loads((tmp_path / f"rank{r}").read_text()) for r in range(2)]

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    x = torch.randn(6, 3)
    model(x).pow(2).mean().backward()  # equal halves: the mean of the halves' means
    for result in results:
        for got, p in zip(result["grads"], model.parameters()):
            assert torch.allclose(torch.tensor(got), p.grad, atol=1e-6)
        assert result["mean"] == {"rank": 0.5}
        seeds = result["seeds"]
        assert seeds[0] == 7 and seeds[1] != 7  # process 0 keeps the run's seed, the others get their own
    assert results[0]["seeds"] == results[1]["seeds"]


def test_two_processes_train_one_run_and_continue_it_from_their_checkpoint(tmp_path):
    code, out = finish(start(tmp_path, "train.steps=4", "train.checkpoint_every=2"))
    assert code == 0, out[-3000:]
    client, run = the_run(tmp_path)
    assert run.info.status == "FINISHED"
    assert loss_steps(client, run.info.run_id) == [0, 1, 2, 3]  # one value per step: process 0 logs the mean
    assert run.data.tags["provenance.processes"] == "2"
    assert "adapter" in [a.path for a in client.list_artifacts(run.info.run_id)]

    state = saved(tmp_path)
    assert state["step"] == 3
    first, second = state["state"]["processes"]
    assert first["adapter"].keys() == second["adapter"].keys()
    for name in first["adapter"]:  # averaged gradients: the copies took the same steps
        assert torch.equal(first["adapter"][name], second["adapter"][name]), name
    assert any(first["adapter"][n].any() for n in first["adapter"] if "lora_B" in n)  # and they did train
    assert first["parts"]["queries"] != second["parts"]["queries"]  # each draws its own queries

    code, out = finish(start(tmp_path, "train.steps=6", "train.checkpoint_every=2", run_id=run.info.run_id))
    assert code == 0, out[-3000:]
    client, run = the_run(tmp_path)
    assert run.info.status == "FINISHED" and run.data.tags["resumed"] == "true"
    assert loss_steps(client, run.info.run_id) == [0, 1, 2, 3, 4, 5]  # continued, not restarted
    assert saved(tmp_path)["step"] == 5


def test_a_stop_request_reaching_one_process_stops_them_all_at_one_checkpoint(tmp_path):
    driver = start(tmp_path, "train.steps=500", "train.checkpoint_every=0")
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:  # until the processes are training
        ranks = rank_processes(driver.pid)
        client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'm.db'}")
        experiment = (tmp_path / "m.db").exists() and client.get_experiment_by_name("gfn-bench")
        runs = client.search_runs([experiment.experiment_id]) if experiment else []
        if len(ranks) == 2 and runs and loss_steps(client, runs[0].info.run_id):
            break
        assert driver.poll() is None, driver.communicate()[0][-3000:]
        time.sleep(0.5)
    else:
        raise AssertionError("the run did not start training")
    os.kill(ranks[1].pid, signal.SIGUSR2)  # the time-limit signal, to the second process only

    code, out = finish(driver, timeout=120)
    assert code == 3, out[-3000:]
    reason, step = json.loads(out.split("INTERRUPTED", 1)[1].splitlines()[0])
    assert reason == "requeue"
    client, run = the_run(tmp_path)
    assert run.info.status == "KILLED" and run.data.tags["interrupted"] == "requeue"
    state = saved(tmp_path)  # checkpoint_every=0: only the stop wrote one
    assert state["step"] == step and len(state["state"]["processes"]) == 2
    assert max(loss_steps(client, run.info.run_id)) == step
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in ranks)


def test_the_processes_of_a_run_die_with_its_trial_process(tmp_path):
    driver = start(tmp_path, "train.steps=500")
    deadline = time.monotonic() + 180
    while len(ranks := rank_processes(driver.pid)) < 2:
        assert time.monotonic() < deadline and driver.poll() is None, "the rank processes did not start"
        time.sleep(0.2)
    driver.kill()  # SIGKILL: no handler runs in the trial's process
    driver.communicate()
    gone, alive = psutil.wait_procs(ranks, timeout=20)
    assert not alive, [p.pid for p in alive]


def test_a_checkpoint_of_another_process_count_is_refused(tmp_path):
    Checkpointer(tmp_path, 1).save(0, {"adapter": {}})  # written by a one-process run

    class TwoProcesses:
        rank, world, is_main = 0, 2, True

    with pytest.raises(CheckpointError, match="written by 1 process.*trainer.num_processes=1"):
        RankCheckpointer(tmp_path, 1, TwoProcesses()).load()
    Checkpointer(tmp_path, 1).save(0, {"processes": [{"adapter": {}}, {"adapter": {}}]})  # by two processes
    with pytest.raises(CheckpointError, match="written by 2 processes.*trainer.num_processes=2"):
        StoppingCheckpointer(tmp_path, 1).load()


@pytest.mark.parametrize("overrides, message", [
    (["trainer.num_processes=0"], "trainer.num_processes: expected at least 1"),
    (["trainer.num_processes=3", "train.batch_prompts=4"], "not a multiple of trainer.num_processes=3"),
    (["trainer.num_processes=4", "train.batch_prompts=4", "launcher=slurm", "slurm=local", "slurm.gpus_per_node=2"], "needs a GPU each"),
])
def test_process_counts_that_cannot_work_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        build_config([(None, dict(o.split("=", 1) for o in overrides))])
