"""One training run: what a single run, a sweep trial and a final seed all execute (in this process
or in a submitit job), from its MLflow run to its final metrics. `run_trial` opens or resumes the
run, tags it, trains and evaluates (`train_and_evaluate` here, or bench/parallel.py for several
processes, each of which runs `train_and_evaluate`) and ends it FINISHED, KILLED (pruned,
interrupted) or FAILED. The run's config goes from here into `method.train(ctx, cfg.method_cfg)`.

Metrics: the method's step metrics as `train/<name>`; validation as `valid/<metric>` (during
training and at the end); with test evaluation, each split as `<split>/<metric>` and the
size-weighted means over in-distribution and out-of-distribution splits as `test_id/<metric>`
and `test_ood/<metric>`; `wall_time_s` (everything), `train_time_s` (the method's `train`) and
`train_steps` (the optimizer steps it ran: 0 for a method that does not train; SFT may stop
before `train.steps`). The final numbers are recorded at step `train_steps` (`train.steps` for a
method that does not train).
Compute, on one axis for every method: the tokens through forward passes (counted by the engine,
methods/engine/engine.py) during training, as the step metric `train/forward_tokens` (so far,
all processes) and in total `train_forward_tokens`, and during evaluations (validation and test)
`eval_forward_tokens`, their sum `total_forward_tokens`, and the device-seconds of each
(`train_device_s`: training time less its validations, times the processes;
`eval_device_s`: evaluation time, one process).
The final test evaluation also keeps every query's result (`eval/<split>.jsonl`, for the
leaderboard's intervals and paired comparisons) and names the splits in tags `test_splits` and
`test_splits_ood` (comma-separated, in the task's order).
"""
from __future__ import annotations

import dataclasses
import os
import random
import re
import socket
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable

import mlflow
import numpy as np
import torch
from tqdm import tqdm

from bench import tracking
from bench.config import flatten
from bench.interrupt import Interrupted, StopRequest, StoppingCheckpointer
from bench.parallel import train_in_processes
from bench.pruning import Pruned
from bench.run_config import RunConfig
from methods import method_module
from methods.base import TrainContext
from methods.checkpoint import Checkpointer
from methods.engine.evaluate import evaluate_splits, method_engine
from methods.engine.models import ModelError, load_policy
from methods.parallel import DataParallel
from tasks import task_class
from tasks.base import Example
from tasks.spec import load_spec

ADAPTER_ARTIFACT = "adapter"  # where a run's trained LoRA adapter is stored among its artifacts
# Step metrics shown on the progress bar: bar label -> metric a method logs.
_POSTFIX = {"loss": "loss", "logR": "log_reward"}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _weighted_means(results: list[tuple[int, dict[str, float]]]) -> dict[str, float]:
    """Mean of each metric over splits, weighted by the number of queries evaluated per split."""
    total = sum(n for n, _ in results)
    return {key: sum(n * metrics[key] for n, metrics in results) / total
            for key in results[0][1]} if total else {}


def run_tags(cfg: RunConfig, stage: str, trial_number: int | str | None, entry: str | None = None) -> dict[str, str]:
    """`entry` is the sweep row a run belongs to (by default its method); `trial_number` is the
    Optuna trial a run tunes or re-runs, or "untuned" for the final of an entry with trials 0."""
    sha, dirty = tracking.git_sha()
    return {
        "method": cfg.method, "entry": entry or cfg.method, "task": cfg.task, "model": cfg.model.name or cfg.model.gguf or cfg.model.preset,
        "seed": str(cfg.seed), "trial": "" if trial_number is None else str(trial_number),
        "stage": stage, "sweep": cfg.sweep or "", "scale": cfg.scale,
        "git_sha": sha, "git_dirty": str(dirty).lower(), "hostname": socket.gethostname(),
        "task_version": str(load_spec(cfg.task).version),
    }


def run_trial(cfg: RunConfig, *, stage: str = "single", parent_run_id: str | None = None,
              trial_number: int | str | None = None, evaluate_test: bool = True, entry: str | None = None,
              run_id: str | None = None, checkpoint_dir: Path | None = None,
              on_run_started: Callable[[str], None] | None = None,
              on_evaluate: Callable[[int, dict[str, float]], None] | None = None) -> dict[str, float]:
    """Train `cfg.method` on `cfg.task`, evaluate, record everything; return the final metrics.

    `run_id`: continue this MLflow run (a resumed trial) instead of starting one; with
    `checkpoint_dir` the training state is saved there every `train.checkpoint_every` steps and
    training continues from the latest checkpoint found there. A stop request (SIGUSR2, SIGTERM;
    see bench.interrupt) ends the run KILLED after its next checkpoint and raises `Interrupted`.
    `on_run_started` gets the run's id as soon as it exists. `on_evaluate(step, metrics)` is called
    after each validation during training (a sweep's pruner, bench/pruning.py); when it raises
    `Pruned`, the run ends KILLED, tagged `pruned=true` and `pruned_step`, and `Pruned` is raised.
    """
    started = time.monotonic()
    experiment_id = tracking.ensure_experiment(cfg)
    name = f"{entry or cfg.method}-seed{cfg.seed}" + (
        "" if trial_number is None else f"-trial{trial_number}" if isinstance(trial_number, int) else f"-{trial_number}")
    if run_id is None:
        tags = run_tags(cfg, stage, trial_number, entry)
        if parent_run_id:
            # The tag (not start_run(nested=True)) is what makes a child across processes.
            tags["mlflow.parentRunId"] = parent_run_id
        mlflow.start_run(experiment_id=experiment_id, run_name=f"{stage}-{name}", tags=tags,
                         log_system_metrics=cfg.system_metrics)
        mlflow.log_params({key: "null" if value is None else value for key, value in flatten(cfg).items()})
    else:
        mlflow.start_run(run_id=run_id, log_system_metrics=cfg.system_metrics)  # status back to RUNNING
        mlflow.set_tags({"resumed": "true", "hostname": socket.gethostname()})
    run_id = mlflow.active_run().info.run_id
    if on_run_started is not None:
        on_run_started(run_id)
    try:
        if cfg.trainer.num_processes > 1 and getattr(method_module(cfg.method), "TRAINS", True):
            if on_evaluate is not None:  # plan_sweep refuses a pruner with several processes
                raise ValueError("on_evaluate needs the run's evaluations in this process (trainer.num_processes=1)")
            metrics = train_in_processes(cfg, train_and_evaluate, run_id=run_id, name=name, evaluate_test=evaluate_test,
                                         leave_bar=stage == "single", checkpoint_dir=checkpoint_dir)
        else:
            checkpoints = None if checkpoint_dir is None else StoppingCheckpointer(checkpoint_dir, cfg.train.checkpoint_every)
            metrics = train_and_evaluate(cfg, name, evaluate_test=evaluate_test, leave_bar=stage == "single",
                                         checkpoints=checkpoints, log=tracking.RunLog(run_id), on_evaluate=on_evaluate)
        metrics["wall_time_s"] = time.monotonic() - started
        mlflow.log_metric("wall_time_s", metrics["wall_time_s"], step=int(metrics.get("train_steps") or cfg.train.steps))
    except Pruned as pruned:
        # KILLED, not FINISHED: the run stopped before its budget and has no final evaluation, so
        # a search for FINISHED runs still finds only whole ones (as for an interrupted run, which
        # carries `interrupted` instead of `pruned`); not FAILED: nothing went wrong.
        mlflow.set_tags({"pruned": "true", "pruned_step": str(pruned.step)})
        mlflow.log_metric("wall_time_s", time.monotonic() - started, step=pruned.step)
        mlflow.end_run(status="KILLED")
        raise
    except (KeyboardInterrupt, Interrupted) as stop:
        mlflow.set_tag("interrupted", getattr(stop, "reason", "keyboard"))
        mlflow.end_run(status="KILLED")
        raise
    except Exception as err:
        mlflow.set_tag("error", f"{type(err).__name__}: {err}"[:5000])
        mlflow.log_text(traceback.format_exc(), "error.txt")
        mlflow.end_run(status="FAILED")
        raise
    mlflow.end_run(status="FINISHED")
    return metrics


def train_and_evaluate(cfg: RunConfig, name: str, *, evaluate_test: bool, leave_bar: bool,
                       checkpoints: Checkpointer | None, log: tracking.RunLog,
                       parallel: DataParallel | None = None,
                       on_evaluate: Callable[[int, dict[str, float]], None] | None = None) -> dict[str, float]:
    """Train and evaluate in this process, recording into `log`'s run. With several processes
    (`parallel`, bench/parallel.py) each trains on its share of every step; process 0 records and
    evaluates, and returns the metrics (the others return {})."""
    parallel = parallel or DataParallel()
    threads = cfg.threads or (max(1, (os.cpu_count() or 1) // cfg.max_parallel) if cfg.sweep else 0)
    if parallel.world > 1:  # the processes of a run share its cores
        threads = max(1, (threads or os.cpu_count() or 1) // parallel.world)
    if threads:
        torch.set_num_threads(threads)
    seed_everything(cfg.seed)
    task = task_class(cfg.task)(cfg.task_cfg, cfg.data_dir)
    policy = load_policy(cfg.model, cfg.seed)  # the same seed everywhere: every process starts from one adapter
    if parallel.is_main:
        log.tags({f"provenance.{key}": value for key, value in policy.provenance.items()}
                 | ({"provenance.processes": str(parallel.world)} if parallel.world > 1 else {}))
    method = method_module(cfg.method)
    engine = method_engine(policy, task, cfg.train.batch_size, method, cfg.method_cfg)
    valid = task.validation_examples()[: cfg.train.eval_prompts]
    spent = {"eval_tokens": 0, "eval_s": 0.0}  # what evaluations cost, kept apart from training

    def run_eval(splits: dict[str, list[Example]], step: int, records: tuple[str, ...] = ()) -> dict[str, dict[str, float]]:
        """`records`: splits whose every query's row is kept (`eval/<split>.jsonl`), not only the first few."""
        # A method with a test-time selection rule (best-of-N) replaces the majority vote.
        tokens_before, started = engine.forward_tokens, time.monotonic()
        results = evaluate_splits(engine, splits, samples=cfg.train.eval_samples,
                                  temperature=cfg.train.eval_temperature, seed=cfg.seed,
                                  select=getattr(method, "select", None))
        spent["eval_tokens"] += engine.forward_tokens - tokens_before
        spent["eval_s"] += time.monotonic() - started
        # `queries` travels with the metrics: a standard error over queries needs their number.
        metrics = {prefix: result.metrics | {"queries": float(len(splits[prefix]))} for prefix, result in results.items()}
        for prefix, result in results.items():
            log.metrics({f"{prefix}/{key}": value for key, value in metrics[prefix].items()}, step)
            log.table(result.rows[: cfg.train.log_samples], f"{prefix}_step{step}")
            if prefix in records:
                log.records(result.rows, prefix)
        return metrics

    bar = tqdm(total=cfg.train.steps, desc=name, unit="step", leave=leave_bar, disable=not parallel.is_main)

    def log_metrics(metrics: dict[str, float], step: int) -> None:
        metrics = parallel.mean(metrics | {"forward_tokens": engine.forward_tokens - spent["eval_tokens"]})
        if not parallel.is_main:  # every process calls this each step: the run logs the mean
            return
        metrics["forward_tokens"] *= parallel.world  # the training tokens so far, of all processes
        log.metrics({f"train/{key}": float(value) for key, value in metrics.items()}, step)
        bar.update(step + 1 - bar.n)  # steps count from 0: after step s, s + 1 are done
        shown = {label: f"{metrics[key]:.3g}" for label, key in _POSTFIX.items() if key in metrics}
        bar.set_postfix(step=step, **shown)

    def evaluate(step: int) -> dict[str, float]:
        # Process 0 evaluates its copy (all copies are equal); the others wait for it.
        metrics = _prefixed(run_eval({"valid": valid}, step)) if parallel.is_main else {}
        parallel.barrier()
        if on_evaluate is not None:
            on_evaluate(step, metrics)  # may raise Pruned: training stops at this step
        return metrics

    share = cfg.train
    if parallel.world > 1:
        share = dataclasses.replace(cfg.train, batch_prompts=cfg.train.batch_prompts // parallel.world)
    ctx = TrainContext(
        policy=policy, task=task, engine=engine, train=share, seed=parallel.seed(cfg.seed),
        log_metrics=log_metrics,
        evaluate=evaluate,
        log_samples=lambda rows, step: log.table(rows, f"train_step{step}") if parallel.is_main else None,
        checkpoints=checkpoints,
        adapter_folder=adapter_folder,
        parallel=parallel,
    )
    train_started = time.monotonic()
    try:
        method.train(ctx, cfg.method_cfg)
    finally:
        bar.close()
    train_time_s = time.monotonic() - train_started
    StopRequest.check()  # a request during the last step: its checkpoint is written, stop before evaluating
    train_tokens = parallel.mean({"tokens": engine.forward_tokens - spent["eval_tokens"]})["tokens"] * parallel.world
    if not parallel.is_main:
        return {}
    # The final numbers sit at the last step the method ran (SFT may stop before train.steps);
    # a method that does not train records them at train.steps.
    final_step = ctx.steps_done or cfg.train.steps
    metrics = {"train_time_s": train_time_s, "train_forward_tokens": train_tokens,
               "train_device_s": (train_time_s - spent["eval_s"]) * parallel.world, "train_steps": ctx.steps_done}
    log.metrics(metrics, final_step)
    if not policy.adapter_is_identity():
        # The trained policy, for `method=best_of_n method.policy=<this run's id>` and for users.
        with tempfile.TemporaryDirectory() as folder:
            policy.save_adapter(folder)
            log.artifacts(folder, ADAPTER_ARTIFACT)
    # Validation and test splits share one sampling pass.
    splits = {"valid": valid}
    tests = task.eval_splits() if evaluate_test else []
    splits |= {split.name: split.examples[: cfg.train.eval_prompts] for split in tests}
    if tests:  # the test splits as the task declares them, for the leaderboard's columns
        log.tags({"test_splits": ",".join(s.name for s in tests),
                  "test_splits_ood": ",".join(s.name for s in tests if not s.in_distribution)})
    results = run_eval(splits, final_step, records=tuple(s.name for s in tests))
    metrics |= _prefixed(results)
    for kind, in_distribution in (("test_id", True), ("test_ood", False)):
        chosen = [(len(splits[s.name]), results[s.name]) for s in tests if s.in_distribution == in_distribution]
        if chosen:
            aggregate = {f"{kind}/{key}": value for key, value in _weighted_means(chosen).items()}
            aggregate[f"{kind}/queries"] = float(sum(n for n, _ in chosen))
            log.metrics(aggregate, final_step)
            metrics |= aggregate
    compute = {"eval_forward_tokens": spent["eval_tokens"], "eval_device_s": spent["eval_s"],
               "total_forward_tokens": train_tokens + spent["eval_tokens"]}
    log.metrics(compute, final_step)
    return metrics | compute


def adapter_folder(ref: str) -> str:
    """`ref` if it is a folder, else the adapter of MLflow run `ref` (downloaded to a temporary folder)."""
    if Path(ref).is_dir():
        return ref
    if not re.fullmatch(r"[0-9a-f]{32}", ref):
        raise ModelError(f"policy {ref!r} is neither a folder nor an MLflow run id (32 hex digits)")
    try:
        run = mlflow.get_run(ref)
    except mlflow.exceptions.MlflowException:
        raise ModelError(f"no MLflow run {ref} in {mlflow.get_tracking_uri()}; pass run_dir= (or "
                         "MLFLOW_TRACKING_URI) of the store that holds it") from None
    try:
        return mlflow.artifacts.download_artifacts(run_id=ref, artifact_path=ADAPTER_ARTIFACT,
                                                   dst_path=tempfile.mkdtemp(prefix="gfn-bench-adapter-"))
    except (mlflow.exceptions.MlflowException, OSError):
        raise ModelError(f"run {ref} ({run.data.tags.get('method', '?')}) saved no adapter; only runs that "
                         "train one (gfn_tb, ppo, sft) do") from None


def _prefixed(results: dict[str, dict[str, float]]) -> dict[str, float]:
    return {f"{prefix}/{key}": value for prefix, metrics in results.items() for key, value in metrics.items()}
