"""Re-evaluate a trained run on new data: `python -m bench.evaluate run=<MLflow run id> [...]`.

It rebuilds the run's configuration from its MLflow params, loads its saved adapter (a method that
trains nothing, prompting or best-of-N, is set up again from its settings instead), evaluates with
the shared protocol (methods/engine/evaluate.py: `train.eval_samples` samples per query at
`train.eval_temperature`, seeded by `seed`) and records a new MLflow run in the trained run's
experiment, its child (tag `mlflow.parentRunId`) with tags `stage=evaluation`, `evaluated_run`
and `evaluation` (the name of what was evaluated). Without `questions=` it evaluates what the
run's own final evaluation did (the validation split and the task's test splits, `task.*`
overrides applied): with the same settings and seed it reproduces the run's test metrics. With
`questions=PATH` it evaluates the questions of that file (arithmetic: a JSON list or JSON lines
of `{"question": "5 + 9 - 3", "answer": 11}`), checked item by item before anything is loaded.
bench/finals.py shows these runs as extra leaderboard columns.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from bench.checks import check_task
from bench.config import build_config, flatten, parse_overrides
from bench.errors import ConfigError
from bench.run_config import RunConfig
from methods import method_module
from methods.engine.model_config import ModelError
from tasks import task_class
from tasks.base import Example, EvalSplit
from tasks.data import DataError

if TYPE_CHECKING:
    import mlflow

    from methods.engine.engine import Engine

# What may change between the trained run and its re-evaluation: the data and the protocol's
# sampling, never what was trained.
EVALUATION_KEYS = ("seed", "threads", "model.device", "model.kv_cache", "train.eval_prompts", "train.eval_samples",
                   "train.eval_temperature", "train.batch_size")
USAGE = ("python -m bench.evaluate run=<MLflow run id> [questions=PATH] [name=LABEL] [run_dir=...] "
         "[task.<field>=...] [" + "=...] [".join(EVALUATION_KEYS) + "=...]")


class EvaluateError(RuntimeError):
    """The run cannot be re-evaluated; the message says why."""


def _trained_run(run_dir: str | None, run_id: str) -> tuple[mlflow.MlflowClient, mlflow.entities.Run]:
    """(a client of the store, the FINISHED run `run_id` in it); ConfigError if there is none."""
    # MLflow, torch and the engine are imported where they are used, not at the top: a mistake on
    # the command line is answered without them (as in bench/run.py).
    import mlflow

    from bench import tracking

    uri = tracking.tracking_uri(run_dir or "runs")
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise ConfigError(f"no MLflow store at {uri}; pass the trained run's run_dir= (or MLFLOW_TRACKING_URI)")
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient(uri)
    try:
        trained = client.get_run(run_id)
    except mlflow.exceptions.MlflowException:
        raise ConfigError(f"no MLflow run {run_id} in {uri}; pass the run_dir= of its store") from None
    if trained.info.status != "FINISHED":
        raise ConfigError(f"run {run_id} ended {trained.info.status}, not FINISHED: it has no final policy to evaluate")
    return client, trained


def run_config(run: mlflow.entities.Run, overrides: dict[str, str], run_dir: str | None) -> RunConfig:
    """The trained run's configuration (its params) with the evaluation's overrides on top."""
    params = dict(run.data.params)
    if "method" not in params or "task" not in params:
        raise ConfigError(f"run {run.info.run_id} has no run configuration among its params (not a run of bench.run)")
    params.pop("sweep", None)  # the sweep file need not exist here; the run is evaluated on its own
    for key in overrides:
        if not (key.startswith("task.") or key in EVALUATION_KEYS):
            raise ConfigError(f"{key}= cannot change in a re-evaluation; usage: {USAGE}")
    layers = [(f"run {run.info.run_id}", params), (None, overrides)]
    if run_dir is not None:
        layers.append((None, {"run_dir": run_dir}))
    cfg = build_config(layers)
    check_task(cfg)
    return cfg


def evaluation_splits(cfg: RunConfig, task, questions: list[Example] | None, name: str) -> tuple[dict[str, list[Example]], list[EvalSplit]]:
    """(every split evaluated, in sampling order; the test splits among them). The task's splits
    are those of bench/training.py's final evaluation, in its order and sizes: sampling draws from one
    stream over all of them, so the same splits with the same seed give the same samples."""
    if questions is not None:
        split = EvalSplit(name, questions[: cfg.train.eval_prompts], in_distribution=False)
        return {split.name: split.examples}, [split]
    tests = [EvalSplit(s.name, s.examples[: cfg.train.eval_prompts], s.in_distribution) for s in task.eval_splits()]
    return {"valid": task.validation_examples()[: cfg.train.eval_prompts]} | {s.name: s.examples for s in tests}, tests


def set_up_policy(cfg: RunConfig, run_id: str, engine: Engine) -> None:
    """The trained adapter of run `run_id`; a method that trains nothing is set up again instead
    (best-of-N loads the policy it samples from)."""
    from bench.training import adapter_folder
    from methods.base import TrainContext

    method = method_module(cfg.method)
    if getattr(method, "TRAINS", True):
        engine.policy.load_adapter_weights(adapter_folder(run_id))
        return
    ctx = TrainContext(policy=engine.policy, task=engine.task, engine=engine, train=cfg.train, seed=cfg.seed,
                       log_metrics=lambda metrics, step: None, evaluate=lambda step: {}, adapter_folder=adapter_folder)
    method.train(ctx, cfg.method_cfg)


def evaluate_run(client: mlflow.MlflowClient, run_id: str, cfg: RunConfig, questions: list[Example] | None,
                 name: str) -> tuple[str, dict[str, float]]:
    """Evaluate the trained run and record the evaluation as its child run; (new run id, metrics)."""
    import torch

    from bench import tracking
    from bench.training import _weighted_means, run_tags, seed_everything
    from methods.engine.evaluate import evaluate_splits, method_engine
    from methods.engine.models import load_policy

    trained = client.get_run(run_id)
    torch.set_num_threads(cfg.threads or os.cpu_count() or 1)
    seed_everything(cfg.seed)
    task = task_class(cfg.task)(cfg.task_cfg, cfg.data_dir)
    policy = load_policy(cfg.model, cfg.seed)
    # The evaluated engine as the run's own: prompting's prompts and decoding (method_engine).
    engine = method_engine(policy, task, cfg.train.batch_size, method_module(cfg.method), cfg.method_cfg)
    set_up_policy(cfg, run_id, engine)
    splits, tests = evaluation_splits(cfg, task, questions, name)
    started = time.monotonic()
    results = evaluate_splits(engine, splits, samples=cfg.train.eval_samples, temperature=cfg.train.eval_temperature,
                              seed=cfg.seed, select=getattr(method_module(cfg.method), "select", None))

    eval_device_s = time.monotonic() - started
    tags = run_tags(cfg, "evaluation", trained.data.tags.get("trial") or None, trained.data.tags.get("entry"))
    tags |= {"sweep": trained.data.tags.get("sweep", ""), "evaluated_run": run_id, "evaluation": name,
             "mlflow.parentRunId": run_id, "test_splits": ",".join(s.name for s in tests),
             "test_splits_ood": ",".join(s.name for s in tests if not s.in_distribution)}
    run = client.create_run(trained.info.experiment_id, run_name=f"evaluation-{name}-{trained.info.run_name}", tags=tags)
    log = tracking.RunLog(run.info.run_id)
    try:
        for key, value in flatten(cfg).items():
            client.log_param(run.info.run_id, key, "null" if value is None else value)
        metrics = {}
        for prefix, result in results.items():
            values = result.metrics | {"queries": float(len(splits[prefix]))}
            metrics |= {f"{prefix}/{key}": value for key, value in values.items()}
            if any(s.name == prefix for s in tests):
                log.records(result.rows, prefix)
        for kind, in_distribution in (("test_id", True), ("test_ood", False)):
            chosen = [(len(s.examples), results[s.name].metrics) for s in tests if s.in_distribution == in_distribution]
            if questions is None and chosen:
                metrics |= {f"{kind}/{key}": value for key, value in _weighted_means(chosen).items()}
                metrics[f"{kind}/queries"] = float(sum(n for n, _ in chosen))
        metrics |= {"eval_forward_tokens": float(engine.forward_tokens), "eval_device_s": eval_device_s}
        log.metrics(metrics, 0)
    except BaseException:
        client.set_terminated(run.info.run_id, status="FAILED")
        raise
    client.set_terminated(run.info.run_id, status="FINISHED")
    return run.info.run_id, metrics


def main(argv: list[str]) -> int:
    try:
        overrides = parse_overrides(argv)
        run_id = overrides.pop("run", None)
        if run_id is None:
            raise ConfigError(f"run=<MLflow run id> is required; usage: {USAGE}")
        questions_path, name, run_dir = overrides.pop("questions", None), overrides.pop("name", None), overrides.pop("run_dir", None)
        client, trained = _trained_run(run_dir, run_id)
        cfg = run_config(trained, overrides, run_dir)
        questions = None
        if questions_path is not None:
            task = task_class(cfg.task)(cfg.task_cfg, cfg.data_dir)
            if not hasattr(task, "read_questions"):
                raise ConfigError(f"task {cfg.task} reads no question file; evaluate on its splits (task.* settings)")
            questions = task.read_questions(questions_path)
        name = name or (Path(questions_path).stem if questions_path else "task")
    except (ConfigError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        new_id, metrics = evaluate_run(client, run_id, cfg, questions, name)
    except ModelError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    width = max(len(key) for key in metrics)
    print("\n".join(f"{key:<{width}}  {value:.4g}" for key, value in sorted(metrics.items())))
    from bench import tracking

    hint = tracking.ui_hint(tracking.tracking_uri(run_dir or "runs"))
    print(f"evaluation run {new_id} (child of {run_id}, evaluation={name}); {hint}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
