"""Resumable training: the latest training state of a run, kept as one file in its folder.

A method names the objects that carry its state (optimizer, LR schedule, heads, replay buffer,
its `random.Random`s and `torch.Generator`s) in one dict, restores them with `ctx.resume` before
its loop and has them saved by `ctx.end_step` at the end of each step (methods/base.py). The LoRA
parameters and the global RNGs (python, numpy, torch CPU and CUDA) are always saved.

The file holds plain containers of tensors, numbers and strings only, so it loads with
`torch.load(weights_only=True)`: nothing in it can run code.
"""
from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, Union

import numpy as np
import torch

if TYPE_CHECKING:
    from methods.engine.models import Policy

CHECKPOINT_FILE = "checkpoint.pt"
FORMAT = 1  # bump when the layout of the saved dict changes
WHAT_TO_DO = "delete it to train this run from step 0, or pass another run_dir"


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read or does not fit the run; the message is one actionable line."""


class HasStateDict(Protocol):
    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> Any: ...


Stateful = Union[random.Random, torch.Generator, HasStateDict]


class Checkpointer:
    """Saves and loads the latest training state of one run in `folder`, every `every` steps
    (0: never) and at the last step."""

    def __init__(self, folder: Path, every: int):
        if every < 0:
            raise ValueError(f"train.checkpoint_every must be 0 (never) or more, got {every}")
        self.folder, self.every = Path(folder), every

    @property
    def path(self) -> Path:
        return self.folder / CHECKPOINT_FILE

    def due(self, step: int, steps: int) -> bool:
        """Whether to save after `step` (counted from 0) of a run of `steps` steps."""
        return self.every > 0 and ((step + 1) % self.every == 0 or step + 1 == steps)

    def save(self, step: int, state: dict[str, Any]) -> None:
        """Replace the checkpoint with `state` after `step`; readers see the old file or the new
        one, never a partial one (temporary file in the same folder, fsync, rename)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=f".{CHECKPOINT_FILE}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save({"format": FORMAT, "step": step, "state": state}, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        # The rename is durable (survives a node crash) only once the folder entry is on disk.
        folder_fd = os.open(self.folder, os.O_RDONLY)
        try:
            os.fsync(folder_fd)
        finally:
            os.close(folder_fd)

    def load(self) -> dict[str, Any] | None:
        """{"step": the last completed step, "state": what `save` was given}, or None without a checkpoint."""
        if not self.path.is_file():
            return None
        try:
            saved = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as err:
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise CheckpointError(f"cannot read checkpoint {self.path} ({reason}); {WHAT_TO_DO}") from None
        if not isinstance(saved, dict) or saved.get("format") != FORMAT:
            raise CheckpointError(f"checkpoint {self.path} is not in format {FORMAT}; {WHAT_TO_DO}")
        return {"step": saved["step"], "state": saved["state"]}


# --- state <-> plain containers ----------------------------------------------------------------

def capture_state(policy: Policy, parts: dict[str, Stateful]) -> dict[str, Any]:
    return {
        "adapter": {name: p.detach().cpu() for name, p in policy.model.named_parameters() if p.requires_grad},
        "parts": {name: _capture(obj) for name, obj in parts.items()},
        "rng": {
            "python": _python_rng_state(random.getstate()),
            "numpy": _numpy_rng_state(np.random.get_state()),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        },
    }


def restore_state(policy: Policy, parts: dict[str, Stateful], state: dict[str, Any]) -> None:
    """Inverse of `capture_state`; CheckpointError when the state was saved by another method or model."""
    if set(state["parts"]) != set(parts):
        raise CheckpointError(f"it holds {', '.join(sorted(state['parts']))} but this method trains "
                              f"{', '.join(sorted(parts))} (saved by another method?)")
    params = {name: p for name, p in policy.model.named_parameters() if p.requires_grad}
    saved = state["adapter"]
    misfit = sorted(set(params) ^ set(saved)) or [n for n in params if params[n].shape != saved[n].shape]
    if misfit:
        raise CheckpointError(f"its adapter differs from this model's (another model or LoRA setting? e.g. {misfit[0]})")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(saved[name])
    for name, obj in parts.items():
        _restore(obj, state["parts"][name])
    rng = state["rng"]
    random.setstate(_python_rng_tuple(rng["python"]))
    np.random.set_state(_numpy_rng_tuple(rng["numpy"]))
    torch.set_rng_state(rng["torch"])
    if torch.cuda.is_available() and rng["cuda"]:
        torch.cuda.set_rng_state_all(rng["cuda"][: torch.cuda.device_count()])


def _capture(obj: Stateful) -> Any:
    if isinstance(obj, random.Random):
        return _python_rng_state(obj.getstate())
    if isinstance(obj, torch.Generator):
        return obj.get_state()
    return obj.state_dict()


def _restore(obj: Stateful, state: Any) -> None:
    if isinstance(obj, random.Random):
        obj.setstate(_python_rng_tuple(state))
    elif isinstance(obj, torch.Generator):
        obj.set_state(state)
    else:
        obj.load_state_dict(state)


def _python_rng_state(state: tuple) -> dict[str, Any]:
    version, internal, gauss_next = state
    return {"version": version, "internal": list(internal), "gauss_next": gauss_next}


def _python_rng_tuple(state: dict[str, Any]) -> tuple:
    return state["version"], tuple(state["internal"]), state["gauss_next"]


def _numpy_rng_state(state: tuple) -> dict[str, Any]:
    name, keys, pos, has_gauss, cached_gaussian = state
    return {"name": name, "keys": keys.tolist(), "pos": pos, "has_gauss": has_gauss, "cached_gaussian": cached_gaussian}


def _numpy_rng_tuple(state: dict[str, Any]) -> tuple:
    return (state["name"], np.array(state["keys"], dtype=np.uint32), state["pos"], state["has_gauss"],
            state["cached_gaussian"])
