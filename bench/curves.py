"""Learning curves of a sweep's final runs, from MLflow: one panel per step metric of CURVES that
the runs have (the validation metric, the mean log reward of the step's trajectories, the loss),
one line per leaderboard entry: the mean over its seeds at each step, with a band of ± one
standard error over the seeds that logged that step (no band where only one did)."""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

import mlflow

# What the learning-curve figure may show: (metric, panel title), in panel order. Of the
# validation metrics only the first one the runs have is drawn (tasks without accuracy have
# log-likelihood).
VALIDATION = [("valid/accuracy", "validation accuracy"), ("valid/loglik_mean", "validation log-likelihood")]
CURVES = VALIDATION + [("train/log_reward", "mean log R of the step's trajectories"), ("train/loss", "loss")]

Histories = dict[str, dict[str, list[list[tuple[int, float]]]]]  # label -> metric -> one (step, value) series per run


@dataclass
class Band:
    """One label's line on one panel: per step, the mean over runs and mean ∓ its standard error."""

    steps: list[int]
    mean: list[float]
    low: list[float]
    high: list[float]
    runs: list[int]  # runs that logged each step


def metric_histories(client: mlflow.MlflowClient, run_ids: dict[str, list[str]]) -> Histories:
    """label -> metric -> one (step, value) series per run, for the metrics of CURVES. A run that
    logged a metric twice at one step (SFT validates its last adapter at its last step, where the
    harness then records the final evaluation of the adapter it kept) counts once, with the value
    logged last, as MLflow's own latest value does."""
    out: Histories = {}
    for label, ids in run_ids.items():
        for run_id in ids:
            for metric, _ in CURVES:
                history = sorted(client.get_metric_history(run_id, metric), key=lambda m: (m.step, m.timestamp))
                series = list({m.step: m.value for m in history}.items())  # in step order, the last value of each
                if series:
                    out.setdefault(label, {}).setdefault(metric, []).append(series)
    return out


def band(runs: list[list[tuple[int, float]]]) -> Band:
    """The mean over `runs` at each step any of them logged, ∓ the standard error over those runs."""
    by_step: dict[int, list[float]] = {}
    for series in runs:
        for step, value in series:
            by_step.setdefault(step, []).append(value)
    out = Band([], [], [], [], [])
    for step in sorted(by_step):
        values = by_step[step]
        mean = statistics.fmean(values)
        se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0
        out.steps.append(step)
        out.mean.append(mean)
        out.low.append(mean - se)
        out.high.append(mean + se)
        out.runs.append(len(values))
    return out


def bands(histories: Histories) -> dict[str, dict[str, Band]]:
    """metric -> label -> its band, for the panels drawn: the metrics of CURVES some run has, of
    the validation metrics only the first."""
    present = [m for m, _ in CURVES if any(m in h for h in histories.values())]
    validation = [m for m, _ in VALIDATION if m in present][:1]
    panels = [m for m in present if m in validation or m not in dict(VALIDATION)]
    return {metric: {label: band(per_metric[metric]) for label, per_metric in sorted(histories.items()) if metric in per_metric}
            for metric in panels}


def draw_curves(panels: dict[str, dict[str, Band]], title: str):
    """The figure (matplotlib) of `bands`' panels; None: nothing to draw. Each label keeps one
    colour across panels (prompting rows have no train/* curves)."""
    if not panels:
        return None
    import matplotlib
    matplotlib.use("Agg")  # files only: no display on a cluster node
    import matplotlib.pyplot as plt

    labels = sorted({label for lines in panels.values() for label in lines})
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, (metric, lines) in zip(axes[0], panels.items()):
        for label, line in lines.items():
            color = f"C{labels.index(label)}"
            ax.plot(line.steps, line.mean, color=color, label=label, marker="o" if len(line.steps) < 8 else None)
            if max(line.runs) > 1:
                ax.fill_between(line.steps, line.low, line.high, color=color, alpha=0.2, linewidth=0)
        ax.set_title(dict(CURVES)[metric], fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    labelled = {}  # every label once, from whichever panel has it
    for ax in axes[0]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            labelled.setdefault(label, handle)
    axes[0][0].legend(list(labelled.values()), list(labelled), fontsize=8)
    fig.suptitle(title + " (mean over seeds, band: ± standard error)", fontsize=10)
    fig.tight_layout()
    return fig
