"""A sweep's figures, from MLflow: PNG and PDF under `<results_dir>/<sweep>/`, and artifacts
`figures/` of the sweep's parent run.

- `learning_curves`: the validation metric, mean log reward and loss against steps (bench/curves.py);
- `compute`: each entry's headline test metric against the forward tokens it spent in all
  (training and evaluation, counted by the engine), on a log axis, so that methods that train and
  methods that only sample are compared at equal cost as well as at their own budgets;
- `tradeoff` (continuation, the paper's Figure 3): maximum log-likelihood of a query's samples
  against their embedding diversity, one point per entry (method or decoding baseline).

Every point is the mean over the entry's seeds, with ± one standard error over seeds as error bars.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path

import mlflow

from bench.curves import bands, draw_curves, metric_histories
from bench.finals import FORMATS, display

FIGURES_ARTIFACT = "figures"  # where the parent run keeps them
COMPUTE = "total_forward_tokens"  # the cost axis (bench/training.py)


@dataclass
class Point:
    label: str
    x: float
    y: float
    x_se: float
    y_se: float
    seeds: int


def final_runs(client: mlflow.MlflowClient, experiment_id: str, parent_run_id: str) -> dict[str, list]:
    """entry -> its finished final runs (MLflow runs)."""
    runs = client.search_runs([experiment_id], max_results=10_000, filter_string=(
        f"tags.stage = 'final' and tags.`mlflow.parentRunId` = '{parent_run_id}' and attributes.status = 'FINISHED'"))
    out: dict[str, list] = {}
    for run in runs:
        out.setdefault(run.data.tags.get("entry", run.data.tags.get("method", "?")), []).append(run)
    return dict(sorted(out.items()))


def _mean_se(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0


def points(finals: dict[str, list[dict[str, float]]], x_metric: str, y_metric: str) -> list[Point]:
    """One point per entry whose every seed logged both metrics: the means over seeds ± standard errors."""
    out = []
    for label, runs in finals.items():
        if runs and all(x_metric in m and y_metric in m for m in runs):
            (x, x_se), (y, y_se) = (_mean_se([m[key] for m in runs]) for key in (x_metric, y_metric))
            out.append(Point(label, x, y, x_se, y_se, len(runs)))
    return out


def figure_split(finals: dict[str, list[dict[str, float]]], metric: str) -> str | None:
    """The split a single-number figure reads: the pooled in-distribution queries, else the first
    test split the runs logged `metric` for."""
    logged = {key.rsplit("/", 1)[0] for runs in finals.values() for m in runs for key in m if key.endswith("/" + metric)}
    logged -= {"valid"}
    return "test_id" if "test_id" in logged else min(logged) if logged else None


def draw_points(found: list[Point], x_title: str, y_title: str, title: str, log_x: bool = False):
    """A scatter of `found` with error bars and each point's label beside it; None: no point."""
    if not found:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.0, 4.4))
    for i, p in enumerate(found):
        ax.errorbar([p.x], [p.y], xerr=[p.x_se], yerr=[p.y_se], fmt="o", color=f"C{i}", capsize=3, label=p.label)
        ax.annotate(p.label, (p.x, p.y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(x_title)
    ax.set_ylabel(y_title)
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def compute_figure(finals: dict[str, list[dict[str, float]]], title: str):
    """Headline test metric against total forward tokens; None without compute counts."""
    metric = next((m for m in FORMATS if m != "forward_tokens" and figure_split(finals, m)), None)
    if metric is None:
        return None
    column = figure_split(finals, metric)
    name, scale, _ = display(metric)
    found = [Point(p.label, p.x, p.y * scale, p.x_se, p.y_se * scale, p.seeds)
             for p in points(finals, COMPUTE, f"{column}/{metric}")]
    return draw_points(found, "forward tokens, training + evaluation (log scale)", f"{name}, {column}",
                       f"{title}\n{name} against compute", log_x=True)


def tradeoff_figure(finals: dict[str, list[dict[str, float]]], title: str):
    """The paper's Figure 3: max log-likelihood against embedding diversity; None without both."""
    column = figure_split(finals, "embedding_diversity")
    if column is None:
        return None
    found = points(finals, f"{column}/embedding_diversity", f"{column}/loglik_max")
    return draw_points(found, f"embedding diversity ({column})", f"max log-likelihood ({column})",
                       f"{title}\nlikelihood against diversity")


def save(fig, folder: Path, stem: str) -> list[Path]:
    """`<stem>.png` and `<stem>.pdf` in `folder`; the figure is closed."""
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{stem}.png", folder / f"{stem}.pdf"]
    for path in paths:
        fig.savefig(path, dpi=110)
    plt.close(fig)
    return paths


def write_figures(client: mlflow.MlflowClient, experiment_id: str, parent_run_id: str, out: Path) -> list[Path]:
    """Every figure the sweep's final runs allow, written to the folder `out` and logged to the parent run; their PNGs."""
    parent = client.get_run(parent_run_id).data.tags
    task = parent.get("task", "?")
    title = f"{parent.get('sweep', '?')} (scale {parent.get('scale', '?')}, task {task})"
    runs = final_runs(client, experiment_id, parent_run_id)
    finals = {entry: [dict(run.data.metrics) for run in found] for entry, found in runs.items()}
    run_ids = {entry: [run.info.run_id for run in found] for entry, found in runs.items()}
    figures = {"learning_curves": draw_curves(bands(metric_histories(client, run_ids)), title),
               "compute": compute_figure(finals, title),
               "tradeoff": tradeoff_figure(finals, title) if task == "continuation" else None}
    written = []
    for stem, fig in figures.items():
        if fig is not None:
            paths = save(fig, out, stem)
            for path in paths:
                client.log_artifact(parent_run_id, str(path), FIGURES_ARTIFACT)
            written.append(paths[0])
    return written
