"""A sweep's last stage: each entry's best trial, its final runs over seeds, then the leaderboard and figures."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator

import mlflow
import optuna
import submitit
from optuna.trial import TrialState
from tqdm import tqdm

from bench import figures, journal, report
from bench.interrupt import Interrupted, StopRequest
from bench.run_config import RunConfig
from bench.sweep_jobs import Job, Pool
from bench.sweep_plan import SweepPlan
from bench.training import run_trial


# The `trial` tag of an untuned entry's final runs, and its parent-run param `best/<entry>`.
UNTUNED = "untuned"
UNTUNED_PARAM = "untuned (trials: 0)"


class FinalRun(submitit.helpers.Checkpointable):
    """One final (seed) run as a job that survives a time limit: it checkpoints into `folder`
    and, requeued, continues the same MLflow run from there."""

    def __init__(self, cfg: RunConfig, folder: Path, kwargs: dict[str, Any]):
        self.cfg, self.folder, self.kwargs = cfg, folder, kwargs

    def __call__(self) -> dict[str, float]:
        StopRequest.install()
        id_file = self.folder / "mlflow_run_id"
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            return run_trial(self.cfg, **self.kwargs, checkpoint_dir=self.folder / "checkpoint",
                             run_id=id_file.read_text().strip() if id_file.exists() else None,
                             on_run_started=id_file.write_text)
        except Interrupted:
            StopRequest.hand_back()  # a time limit: submitit requeues this job (and exits)
            raise


def best_trials(plan: SweepPlan, studies: dict[str, optuna.Study], client: mlflow.MlflowClient,
                 parent_id: str, bar: tqdm) -> dict[str, optuna.trial.FrozenTrial]:
    """Each tuned entry's best trial; an entry with trials 0 is recorded as untuned (even when its
    study holds trials from an earlier invocation with a budget: 0 means no tuning)."""
    best = {}
    for method in plan.methods:
        study = studies[method.name]
        if method.trials > 0:  # the leaderboard's count of the entry's trials, across invocations
            client.log_param(parent_id, f"trials/{method.name}", journal.tally(study))
        if method.trials == 0:
            client.log_param(parent_id, f"best/{method.name}", UNTUNED_PARAM)
            bar.write(f"{method.name}: untuned (trials 0): its finals use the entry's settings "
                      f"and, for searched keys, the values below the search")
            continue
        if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            continue
        best[method.name] = study.best_trial
        client.log_metric(parent_id, f"best/{method.name}", study.best_value)
        for key, value in study.best_params.items():
            client.log_param(parent_id, f"best/{method.name}/{key}", value)
        bar.write(f"{method.name}: best trial {journal.lineage(study.best_trial)}, "
                  f"{plan.spec.metric}={study.best_value:.4g} {study.best_params}")
    return best


def run_finals(plan: SweepPlan, best: dict[str, optuna.trial.FrozenTrial], pool: Pool,
                parent_id: str, bar: tqdm) -> list[str]:
    failures: list[str] = []

    def done(label: str) -> Callable[[dict[str, float]], None]:
        return lambda result: bar.write(f"{label}: done")

    def failed(label: str) -> Callable[[str], None]:
        def record(error: str) -> None:
            failures.append(label)
            bar.write(f"{label}: FAILED: {error}")
        return record

    def jobs() -> Iterator[Job]:
        for method in plan.methods:
            if method.trials == 0:  # untuned: the entry's own layers, no suggestions
                tuned, trial_number = [], UNTUNED
            elif method.name in best:
                trial = best[method.name]
                tuned = [(f"optuna trial {trial.number}", trial.params)]
                trial_number = trial.user_attrs.get(journal.LINEAGE, trial.number)
            else:
                continue
            for seed in plan.seeds:
                label = f"{method.name} final seed {seed}"
                cfg = method.config_for(*tuned, ("final", {"seed": seed}))
                run = FinalRun(cfg, plan.folder / "finals" / parent_id / f"{method.name}-seed{seed}",
                               {"stage": "final", "parent_run_id": parent_id, "entry": method.name,
                                "trial_number": trial_number, "evaluate_test": True})
                yield Job(run, on_result=done(label), on_error=failed(label))

    pool.run(jobs())
    bar.update(bar.total - bar.n)  # methods without a best trial have no finals to run
    return failures


def publish(plan: SweepPlan, client: mlflow.MlflowClient, experiment_id: str, parent_id: str) -> bool:
    """Write and print the sweep's leaderboard and figures; False (and the last good one kept) when it has no runs."""
    out = Path(plan.cfg.results_dir) / plan.results_folder
    board = report.build_leaderboard(client, experiment_id, parent_id)
    if not board.runs:  # a leaderboard of nothing would replace the last good one
        print(report.kept_message(out, parent_id))
        return False
    path = report.write_leaderboard(board, out)
    drawn = figures.write_figures(client, experiment_id, parent_id, out)
    print(board.markdown)
    print(f"\nleaderboard: {path} (and .tex, .csv)" + "".join(f"\nfigure: {f} (and .pdf)" for f in drawn))
    return True
