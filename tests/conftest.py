import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared data folder (`../shared/data` beside the checkout, or $GFN_BENCH_SHARED_DATA)."""
    path = Path(os.environ.get("GFN_BENCH_SHARED_DATA") or REPO.parent / "shared" / "data")
    if not path.is_dir():
        pytest.skip(f"shared data folder not found at {path} (set GFN_BENCH_SHARED_DATA)")
    return path


@pytest.fixture
def tiny_policy():
    from methods.engine.models import ModelConfig, load_policy

    return load_policy(ModelConfig(preset="tiny"), seed=0)


@pytest.fixture(autouse=True)
def _no_mlflow_store_of_another_test(monkeypatch):
    """mlflow.set_tracking_uri (bench.tracking calls it for every run) sets a process-wide URI and
    MLFLOW_TRACKING_URI in os.environ, which monkeypatch does not undo: a later test would read and
    write the store of the test before it (the paper report wrote the repository's results/ so).
    Every test starts with neither."""
    import mlflow

    mlflow.set_tracking_uri(None)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
