"""Where runs are recorded: MLflow store, experiment, and code provenance.

`MLFLOW_TRACKING_URI` wins when set (a tracking server for cluster sweeps). Otherwise the store is
`sqlite:///<run_dir>/mlflow.db`. Artifacts follow the store: beside a SQLite file
(`<its folder>/mlartifacts`), where a server or any other store keeps them. Many processes writing
one SQLite file can hit "database is locked" and, on a fresh file, race on MLflow's schema
migration; so the driver calls `ensure_experiment` before it launches any worker.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import mlflow
import pandas as pd
from mlflow.entities import Metric, RunTag

from bench.run_config import REPO_ROOT, RunConfig

SINGLE_RUN_EXPERIMENT = "gfn-bench"
RECORDS_DIR = "eval"  # a run's per-query results of its final test evaluation: eval/<split>.jsonl


def tracking_uri(run_dir: str) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(run_dir).resolve() / 'mlflow.db'}"


def _is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://", "databricks"))


def artifact_root(uri: str) -> Path | None:
    """Where the experiments of store `uri` keep their artifacts, when we choose: beside a SQLite
    file (`<folder of mlflow.db>/mlartifacts`; MLflow's default would be ./mlruns of whatever the
    current directory is). None for a server, which stores them itself, and any other store,
    which has its own default."""
    return Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts" if uri.startswith("sqlite:///") else None


class StoreError(RuntimeError):
    """The MLflow store cannot be read or written; the message is one line that says what to do."""


def check_store(uri: str) -> None:
    """StoreError unless store `uri` answers now: a SQLite file that opens for reading and writing
    (MLflow would retry an unopenable one for about 100 s), a server that answers its health check."""
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.closing(sqlite3.connect(f"{db.resolve().as_uri()}?mode=rwc", uri=True, timeout=30)) as con:
                con.execute("pragma schema_version").fetchone()
        except (OSError, sqlite3.Error) as err:
            raise StoreError(f"cannot open the MLflow store {db} for reading and writing "
                             f"({getattr(err, 'strerror', None) or err}); pass another run_dir= or MLFLOW_TRACKING_URI") from None
    elif uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=10):
                pass
        except OSError as err:
            raise StoreError(f"the MLflow server {uri} does not answer ({getattr(err, 'reason', None) or err}); "
                             "start it, or unset MLFLOW_TRACKING_URI to use a local store") from None


def experiment_name(cfg: RunConfig) -> str:
    return cfg.sweep or SINGLE_RUN_EXPERIMENT


def ensure_experiment(cfg: RunConfig) -> str:
    """Point MLflow at the store of `cfg` and return the id of its experiment, creating both;
    StoreError when the store cannot be used."""
    uri = tracking_uri(cfg.run_dir)
    check_store(uri)
    mlflow.set_tracking_uri(uri)
    name = experiment_name(cfg)
    try:
        experiment = mlflow.get_experiment_by_name(name)
        if experiment is None:
            root = artifact_root(uri)
            return mlflow.create_experiment(name, artifact_location=None if root is None else root.as_uri())
    except mlflow.exceptions.MlflowException as err:
        raise StoreError(f"MLflow store {uri}: {' '.join(str(err).split())[:300]}") from None
    if experiment.artifact_location.startswith("mlflow-artifacts:") and not _is_server(uri):
        # Made through a server that proxied its artifacts (before experiments were made on the
        # store itself): only a server can reach them.
        raise StoreError(f"experiment {name!r} of {uri} keeps its artifacts behind an MLflow server "
                         f"({experiment.artifact_location}); run with mlflow_server=true")
    return experiment.experiment_id


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
        raise StoreError(f"mlflow_server=true, but MLFLOW_TRACKING_URI already names a server ({backend}); "
                         "drop one of them")
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = open(Path(run_dir) / "mlflow-server.log", "ab")
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend, "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1",
         "--artifacts-destination", (artifact_root(backend) or Path(run_dir).resolve() / "mlartifacts").as_uri()],
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
                    raise StoreError(f"the MLflow server did not start; see {log.name}") from None
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
