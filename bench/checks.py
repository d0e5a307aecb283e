"""What is checked before a run or a sweep writes anything: the folders it will write, the model's
files, the task's data and settings, and the method's own checks (each a one-line ConfigError)."""
from __future__ import annotations

import os
from pathlib import Path

from bench.errors import ConfigError, shown
from bench.run_config import RunConfig
from methods import method_module
from methods.engine.model_config import ModelError, check_model_files
from tasks import task_class


def check_folder(key: str, folder: str) -> None:
    """ConfigError if `folder` cannot be written or made: it, or the nearest of its parents that
    exists, is a file or is not writable. Creates nothing."""
    path = Path(folder)
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise ConfigError(f"{key}={shown(folder)}: {existing} is a file, not a folder; pass another {key}=")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{key}={shown(folder)}: {existing} is not writable; pass another {key}=")


def check_task(cfg: RunConfig) -> None:
    """Look at the model's files and build the task once, so that a missing or malformed model,
    a bad `task.*` value or a bad data file is reported before a run or a sweep starts writing
    anything; then let the method refuse settings that cannot work on it (a method module may
    define `check(cfg, task)`: what one value's range cannot say, such as one setting below another)."""
    try:
        check_model_files(cfg.model)
        task = task_class(cfg.task)(cfg.task_cfg, cfg.data_dir)
        check = getattr(method_module(cfg.method), "check", None)
        if check is not None:
            check(cfg.method_cfg, task)
    except (ValueError, OSError, ModelError) as err:
        raise ConfigError(str(err)) from None
