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
