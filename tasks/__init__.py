"""Task registry: name -> (module path, class name). Adding a task is one module, its YAML file
(tasks/<name>.yaml, read by tasks/spec.py) and one line here."""
from __future__ import annotations

import importlib

TASKS: dict[str, str] = {
    "arithmetic": "tasks.arithmetic:ArithmeticTask",
    "infilling": "tasks.infilling:InfillingTask",
    "subj": "tasks.subj:SubjTask",
    "continuation": "tasks.continuation:ContinuationTask",
}


def task_class(name: str):
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; choose one of: {', '.join(sorted(TASKS))}")
    module, cls = TASKS[name].split(":")
    return getattr(importlib.import_module(module), cls)
