"""Learning curves of a sweep's final runs, from MLflow: `<results_dir>/<sweep>/learning_curves.png`,
one panel per step metric of CURVES, one line per leaderboard entry (the mean over its seeds)."""
from __future__ import annotations

import statistics
from pathlib import Path

import mlflow

# What the learning-curve figure shows: (metric, panel title), one panel each.
CURVES = [("train/log_reward", "mean log R of the step's trajectories"), ("train/sample_length", "actions per sample"),
          ("train/loss", "loss"), ("valid/accuracy", "validation accuracy")]


def metric_histories(client: mlflow.MlflowClient, run_ids: dict[str, list[str]]) -> dict[str, dict[str, list[list[tuple[int, float]]]]]:
    """label -> metric -> one (step, value) series per run, for the metrics of CURVES."""
    out: dict[str, dict[str, list[list[tuple[int, float]]]]] = {}
    for label, ids in run_ids.items():
        for run_id in ids:
            for metric, _ in CURVES:
                series = sorted((m.step, m.value) for m in client.get_metric_history(run_id, metric))
                if series:
                    out.setdefault(label, {}).setdefault(metric, []).append(series)
    return out


def plot_histories(histories: dict[str, dict[str, list[list[tuple[int, float]]]]], path: Path, title: str) -> Path | None:
    """One panel per metric of CURVES that some run has, one line per label (the mean over its
    runs at each step, each run's own series thin behind it). PNG at `path`; None: nothing to draw."""
    import matplotlib
    matplotlib.use("Agg")  # files only: no display on a cluster node
    import matplotlib.pyplot as plt

    panels = [(m, t) for m, t in CURVES if any(m in h for h in histories.values())]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, (metric, panel_title) in zip(axes[0], panels):
        for i, (label, per_metric) in enumerate(sorted(histories.items())):
            runs = per_metric.get(metric, [])
            if not runs:
                continue
            color = f"C{i}"
            by_step: dict[int, list[float]] = {}
            for series in runs:
                if len(runs) > 1:
                    ax.plot(*zip(*series), color=color, alpha=0.25, linewidth=0.8)
                for step, value in series:
                    by_step.setdefault(step, []).append(value)
            steps = sorted(by_step)
            ax.plot(steps, [statistics.fmean(by_step[s]) for s in steps], color=color, label=label,
                    marker="o" if len(steps) < 8 else None)
        ax.set_title(panel_title, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    labelled = {}  # every label once, from whichever panel has it (prompting rows have no train/* curves)
    for ax in axes[0]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            labelled.setdefault(label, handle)
    axes[0][0].legend(list(labelled.values()), list(labelled), fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_curves(client: mlflow.MlflowClient, experiment_id: str, parent_run_id: str, results_dir: Path,
                 sweep: str) -> Path | None:
    """`<results_dir>/<sweep>/learning_curves.png` from the sweep's finished final runs."""
    runs = client.search_runs([experiment_id], filter_string=(
        f"tags.stage = 'final' and tags.`mlflow.parentRunId` = '{parent_run_id}' and attributes.status = 'FINISHED'"))
    run_ids: dict[str, list[str]] = {}
    for run in runs:
        tags = run.data.tags
        run_ids.setdefault(tags.get("entry", tags.get("method", "?")), []).append(run.info.run_id)
    parent = client.get_run(parent_run_id).data.tags
    return plot_histories(metric_histories(client, run_ids), results_dir / sweep / "learning_curves.png",
                          f"{sweep}: final runs (scale {parent.get('scale', '?')}, task {parent.get('task', '?')})")
