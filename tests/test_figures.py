"""The sweep's figures from a hand-made MLflow store: what is drawn is checked against the metrics,
recomputed here the slow way, not only that a file exists."""
from __future__ import annotations

import math

import mlflow
import numpy as np
import pytest

from bench import figures

# entry -> seed -> (valid/accuracy by step, train/log_reward by step, final metrics)
HISTORY = {
    "gfn_tb": {
        0: ({0: 0.1, 2: 0.4, 4: 0.6}, {0: -30.0, 1: -20.0, 2: -12.0}, {"test/accuracy": 0.50, "total_forward_tokens": 9.0e6,
            "test/embedding_diversity": 0.30, "test/loglik_max": -12.0}),
        1: ({0: 0.2, 2: 0.2, 4: 0.8}, {0: -28.0, 1: -25.0, 2: -10.0}, {"test/accuracy": 0.70, "total_forward_tokens": 1.1e7,
            "test/embedding_diversity": 0.40, "test/loglik_max": -10.0}),
        2: ({0: 0.0, 2: 0.3}, {0: -31.0, 1: -19.0}, {"test/accuracy": 0.60, "total_forward_tokens": 1.0e7,
            "test/embedding_diversity": 0.35, "test/loglik_max": -11.0}),
    },
    "diverse_beam": {0: ({}, {}, {"test/accuracy": 0.20, "total_forward_tokens": 2.0e5,
                                  "test/embedding_diversity": 0.10, "test/loglik_max": -6.0})},
}


@pytest.fixture
def sweep(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = mlflow.MlflowClient(uri)
    experiment = client.create_experiment("demo", artifact_location=(tmp_path / "art").as_uri())
    parent = client.create_run(experiment, tags={"sweep": "demo", "stage": "sweep", "scale": "smoke",
                                                 "task": "continuation"}).info.run_id
    for entry, seeds in HISTORY.items():
        for seed, (valid, log_reward, final) in seeds.items():
            run = client.create_run(experiment, tags={"stage": "final", "entry": entry, "seed": str(seed),
                                                      "mlflow.parentRunId": parent}).info.run_id
            for step, value in valid.items():
                client.log_metric(run, "valid/accuracy", value, step=step)
            for step, value in log_reward.items():
                client.log_metric(run, "train/log_reward", value, step=step)
            for key, value in final.items():
                client.log_metric(run, key, value, step=4)
            client.set_terminated(run)
    failed = client.create_run(experiment, tags={"stage": "final", "entry": "gfn_tb", "seed": "9", "mlflow.parentRunId": parent})
    client.log_metric(failed.info.run_id, "valid/accuracy", 99.0, step=0)  # a failed final is never drawn
    client.set_terminated(failed.info.run_id, status="FAILED")
    client.set_terminated(parent)
    return client, experiment, parent


def reference_band(client, experiment, parent, entry, metric):
    """step -> (mean, mean - se, mean + se) over the entry's finished finals, straight from MLflow."""
    runs = [r for r in client.search_runs([experiment]) if r.data.tags.get("entry") == entry
            and r.data.tags.get("mlflow.parentRunId") == parent and r.info.status == "FINISHED"]
    by_step = {}
    for run in runs:
        for m in client.get_metric_history(run.info.run_id, metric):
            by_step.setdefault(m.step, []).append(m.value)
    out = {}
    for step, values in sorted(by_step.items()):
        n = len(values)
        mean = sum(values) / n
        se = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n) if n > 1 else 0.0
        out[step] = (mean, mean - se, mean + se)
    return out


def test_learning_curves_plot_the_mean_and_standard_error_band_over_seeds(sweep, tmp_path):
    client, experiment, parent = sweep
    runs = figures.final_runs(client, experiment, parent)
    fig = figures.draw_curves(figures.bands(figures.metric_histories(
        client, {e: [r.info.run_id for r in rs] for e, rs in runs.items()})), "demo")
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["validation accuracy", "mean log R of the step's trajectories"]
    for ax, metric in zip(fig.axes, ("valid/accuracy", "train/log_reward")):
        expected = reference_band(client, experiment, parent, "gfn_tb", metric)
        (line,) = ax.lines  # diverse_beam trains nothing: no line
        assert line.get_label() == "gfn_tb"
        np.testing.assert_allclose(line.get_xydata(), [(s, m) for s, (m, _, _) in expected.items()])
        (band,) = ax.collections
        vertices = {tuple(np.round(v, 9)) for v in band.get_paths()[0].vertices}
        for step, (_, low, high) in expected.items():
            assert (step, round(low, 9)) in vertices and (step, round(high, 9)) in vertices, (metric, step)
    # Step 4 of valid/accuracy: seeds 0 and 1 only (0.6, 0.8): mean 0.7, se 0.1.
    assert reference_band(client, experiment, parent, "gfn_tb", "valid/accuracy")[4] == pytest.approx((0.7, 0.6, 0.8))


def test_compute_and_tradeoff_figures_place_each_entry_at_its_means(sweep):
    client, experiment, parent = sweep
    finals = {e: [dict(r.data.metrics) for r in rs] for e, rs in figures.final_runs(client, experiment, parent).items()}
    expected = {"diverse_beam": ((2.0e5, 0.0), (20.0, 0.0), (0.10, 0.0), (-6.0, 0.0)),
                "gfn_tb": ((1.0e7, 1.0e6 / math.sqrt(3)), (60.0, 10.0 / math.sqrt(3)),
                           (0.35, 0.05 / math.sqrt(3)), (-11.0, 1.0 / math.sqrt(3)))}
    for fig, (xi, yi) in ((figures.compute_figure(finals, "demo"), (0, 1)), (figures.tradeoff_figure(finals, "demo"), (2, 3))):
        (ax,) = fig.axes
        drawn = {c.get_label(): c for c in ax.containers}  # one errorbar per entry
        assert sorted(drawn) == sorted(expected)
        for label, values in expected.items():
            point, _, (x_bar, y_bar) = drawn[label].lines
            np.testing.assert_allclose(point.get_xydata(), [[values[xi][0], values[yi][0]]])
            for bar, (mean, se) in ((x_bar, values[xi]), (y_bar, values[yi])):
                (segment,) = bar.get_segments()
                ends = segment[:, 0] if bar is x_bar else segment[:, 1]
                np.testing.assert_allclose(sorted(ends), [mean - se, mean + se])
    assert figures.compute_figure(finals, "demo").axes[0].get_xscale() == "log"


def test_figures_are_written_as_png_and_pdf_and_logged_to_the_parent_run(sweep, tmp_path):
    client, experiment, parent = sweep
    written = figures.write_figures(client, experiment, parent, tmp_path / "results" / "demo")
    assert [p.name for p in written] == ["learning_curves.png", "compute.png", "tradeoff.png"]
    for png in written:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5_000
        assert png.with_suffix(".pdf").read_bytes()[:5] == b"%PDF-"
    logged = sorted(a.path for a in client.list_artifacts(parent, figures.FIGURES_ARTIFACT))
    assert logged == sorted(f"figures/{stem}.{ext}" for stem in ("learning_curves", "compute", "tradeoff") for ext in ("png", "pdf"))


def test_a_run_with_two_values_at_one_step_counts_once_with_its_last_value(tmp_path):
    """SFT validates its last adapter at its last step, then the harness records the final evaluation
    of the adapter it kept at the same step: the curve shows that final value, from one run, not a
    mean of both counted as two runs."""
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'm.db'}")
    experiment = client.create_experiment("demo", artifact_location=(tmp_path / "art").as_uri())
    run = client.create_run(experiment).info.run_id
    client.log_metric(run, "valid/accuracy", 0.2, step=2, timestamp=1000)
    client.log_metric(run, "valid/accuracy", 0.9, step=2, timestamp=2000)
    client.log_metric(run, "valid/accuracy", 0.1, step=1, timestamp=500)
    histories = figures.metric_histories(client, {"sft": [run]})
    assert histories["sft"]["valid/accuracy"] == [[(1, 0.1), (2, 0.9)]]
    band = figures.bands(histories)["valid/accuracy"]["sft"]
    assert (band.steps, band.mean, band.runs) == ([1, 2], [0.1, 0.9], [1, 1])
