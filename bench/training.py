"""Training and evaluation of one run, in this process, into an MLflow run that bench/trial.py opened.

Metrics: the method's step metrics as `train/<name>`; validation as `valid/<metric>` (during
training and at the end); with test evaluation, each split as `<split>/<metric>` and the
size-weighted means over in-distribution and out-of-distribution splits as `test_id/<metric>`
and `test_ood/<metric>`; `wall_time_s` (everything) and `train_time_s` (the method's `train`).
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
import tempfile
import time
from pathlib import Path
from typing import Callable

import mlflow
import numpy as np
import torch
from tqdm import tqdm

from bench import tracking
from bench.interrupt import StopRequest
from bench.run_config import RunConfig
from methods import method_module
from methods.base import TrainContext
from methods.checkpoint import Checkpointer
from methods.engine.evaluate import evaluate_splits, method_engine
from methods.engine.models import ModelError, load_policy
from methods.parallel import DataParallel
from tasks import task_class
from tasks.base import Example

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
    metrics = {"train_time_s": train_time_s, "train_forward_tokens": train_tokens,
               "train_device_s": (train_time_s - spent["eval_s"]) * parallel.world}
    log.metrics(metrics, cfg.train.steps)
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
    results = run_eval(splits, cfg.train.steps, records=tuple(s.name for s in tests))
    metrics |= _prefixed(results)
    for kind, in_distribution in (("test_id", True), ("test_ood", False)):
        chosen = [(len(splits[s.name]), results[s.name]) for s in tests if s.in_distribution == in_distribution]
        if chosen:
            aggregate = {f"{kind}/{key}": value for key, value in _weighted_means(chosen).items()}
            aggregate[f"{kind}/queries"] = float(sum(n for n, _ in chosen))
            log.metrics(aggregate, cfg.train.steps)
            metrics |= aggregate
    compute = {"eval_forward_tokens": spent["eval_tokens"], "eval_device_s": spent["eval_s"],
               "total_forward_tokens": train_tokens + spent["eval_tokens"]}
    log.metrics(compute, cfg.train.steps)
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
