"""Where runs are recorded: MLflow store, experiment, and code provenance.

`MLFLOW_TRACKING_URI` wins when set (a tracking server for cluster sweeps). Otherwise the store is
`sqlite:///<run_dir>/mlflow.db` with artifacts in `<run_dir>/mlartifacts`. Many processes writing
one SQLite file can hit "database is locked" and, on a fresh file, race on MLflow's schema
migration; so the driver calls `ensure_experiment` before it launches any worker.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import mlflow
import pandas as pd
from mlflow.entities import Metric, RunTag

from bench.config import REPO_ROOT, RunConfig

SINGLE_RUN_EXPERIMENT = "gfn-bench"
RECORDS_DIR = "eval"  # a run's per-query results of its final test evaluation: eval/<split>.jsonl


def tracking_uri(run_dir: str) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(run_dir).resolve() / 'mlflow.db'}"


def _is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://", "databricks"))


def experiment_name(cfg: RunConfig) -> str:
    return cfg.sweep or SINGLE_RUN_EXPERIMENT


def ensure_experiment(cfg: RunConfig) -> str:
    """Point MLflow at the store of `cfg` and return the id of its experiment, creating both."""
    uri = tracking_uri(cfg.run_dir)
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    name = experiment_name(cfg)
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    # Without an explicit location a database-backed store puts artifacts in ./mlruns of
    # whatever the current directory is; a server stores (proxies) artifacts itself.
    location = None if _is_server(uri) else (Path(cfg.run_dir).resolve() / "mlartifacts").as_uri()
    return mlflow.create_experiment(name, artifact_location=location)


class RunLog:
    """Writes to one MLflow run by its id, from any process: the fluent API's active run belongs to
    the process that started it, while a run trained by several processes is recorded by its
    process 0 (bench/parallel.py)."""

    def __init__(self, run_id: str):
        self.run_id, self.client = run_id, mlflow.MlflowClient()

    def metrics(self, values: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(key, float(value), now, step) for key, value in values.items()])

    def tags(self, values: dict[str, str]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(key, str(value)) for key, value in values.items()])

    def table(self, rows: list[dict], name: str) -> None:
        """Rows (query, sample, reward, ...) as the run's table `samples/<name>.json`; none: nothing."""
        if rows:
            self.client.log_table(self.run_id, pd.DataFrame(rows), artifact_file=f"samples/{name}.json")

    def records(self, rows: list[dict], split: str) -> None:
        """Every query's row (query, gold answer, vote, correct, per-query metric values) as the
        artifact `eval/<split>.jsonl`, one JSON object a line: what bench/report.py bootstraps and
        pairs across entries."""
        text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        self.client.log_text(self.run_id, text, f"{RECORDS_DIR}/{split}.jsonl")

    def artifacts(self, folder: str, path: str) -> None:
        self.client.log_artifacts(self.run_id, folder, path)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def ui_hint(uri: str) -> str:
    """The command (or address) that shows the runs of store `uri`."""
    return f"open {uri}" if _is_server(uri) else f"mlflow ui --backend-store-uri {uri}"


def git_sha() -> tuple[str, bool]:
    """(commit of the code, whether the work tree has uncommitted changes); ('unknown', True)
    outside a git checkout or before the first commit."""
    def git(*args: str) -> str:
        # --no-optional-locks: `status` must not refresh the index while others use the repo.
        return subprocess.run(["git", "--no-optional-locks", "-C", str(REPO_ROOT), *args],
                              capture_output=True, text=True, check=True).stdout.strip()

    try:
        sha = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.CalledProcessError):
        return "unknown", True
    return sha, dirty


@contextlib.contextmanager
def serve(run_dir: str, timeout_s: float = 120.0) -> Iterator[str]:
    """Serve the store of `run_dir` on 127.0.0.1 for the duration: a sweep's local workers then
    talk to one server process instead of each writing the SQLite file. Sets MLFLOW_TRACKING_URI
    for this process and the jobs it starts; the server is stopped (by its PID) on exit."""
    backend = tracking_uri(run_dir)
    if _is_server(backend):
        raise ValueError(f"mlflow_server=true, but MLFLOW_TRACKING_URI already names a server ({backend}); "
                         "drop one of them")
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = open(Path(run_dir) / "mlflow-server.log", "ab")
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend, "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1",
         "--artifacts-destination", (Path(run_dir).resolve() / "mlartifacts").as_uri()],
        stdout=log, stderr=subprocess.STDOUT)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the MLflow server did not start; see {log.name}") from None
                time.sleep(0.5)
        previous = os.environ.get("MLFLOW_TRACKING_URI")
        os.environ["MLFLOW_TRACKING_URI"] = uri
        try:
            yield uri
        finally:
            if previous is None:
                os.environ.pop("MLFLOW_TRACKING_URI", None)
            else:
                os.environ["MLFLOW_TRACKING_URI"] = previous
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()
