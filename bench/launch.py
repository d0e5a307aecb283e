"""Where sweep jobs run: this process, local subprocesses, or a SLURM cluster (all through submitit).

`launcher=slurm` takes its job settings from a cluster profile, `slurm/<profile>.yaml` (chosen with
`slurm=<profile>`), a flat mapping of the `SlurmConfig` fields below; any of them can be changed
per run with `slurm.<field>=...`. The K workers of a sweep (`max_parallel`) are one job array.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import submitit
import yaml

MAX_REQUEUES = 100
PROFILES_DIR = Path(__file__).resolve().parents[1] / "slurm"
LAUNCHERS: dict[str, str] = {
    "local": "each job in its own subprocess on this machine (submitit cluster='local')",
    "debug": "jobs in this process, one after the other (submitit cluster='debug'); a failing run opens pdb",
    "slurm": "SLURM jobs: the sweep's workers are one job array (profile: slurm=<name>, see slurm/)",
}


@dataclass
class SlurmConfig:
    """Job settings for `launcher=slurm` (`slurm.<field>=...`; defaults from the profile)."""

    profile: str = field(default="local", metadata={
        "help": "cluster profile slurm/<profile>.yaml that sets the fields below (`slurm=<profile>`)"})
    partition: str | None = field(default=None, metadata={"help": "partition (sbatch --partition)"})
    account: str | None = field(default=None, metadata={"help": "account to charge (sbatch --account)"})
    qos: str | None = field(default=None, metadata={"help": "quality of service (sbatch --qos)"})
    constraint: str | None = field(default=None, metadata={"help": "node features (sbatch --constraint)"})
    gpus_per_node: int = field(default=0, metadata={"range": "[0, inf)", "help": "GPUs per job"})
    cpus_per_task: int = field(default=1, metadata={"range": "[1, inf)", "help": "CPU cores per job"})
    mem_gb: int = field(default=8, metadata={"range": "[1, inf)", "help": "memory per job, GiB"})
    time_min: int = field(default=60, metadata={"range": "[1, inf)",
        "help": "time limit of a job in minutes; a job that reaches it checkpoints and is requeued"})
    signal_delay_s: int = field(default=90, metadata={"range": "[0, inf)",
        "help": "seconds before the time limit at which the job is told to checkpoint (SIGUSR2); "
                "must exceed one training step plus saving a checkpoint"})
    setup: list[str] = field(default_factory=list, metadata={
        "help": "shell lines run before each job, e.g. 'module load cuda' or 'source .venv/bin/activate'"})


def profile_names() -> list[str]:
    return sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))


def load_profile(name: str) -> dict[str, Any]:
    """`slurm.<field> -> value` overrides of profile `name`; ValueError names the file and key."""
    path = PROFILES_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"unknown slurm profile {name!r}; choose one of: {', '.join(profile_names())} "
                         f"(or add slurm/{name}.yaml)")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"slurm/{path.name}: invalid YAML: {' '.join(str(err).split())}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"slurm/{path.name}: expected a mapping of job settings, got {type(raw).__name__}")
    known = {f.name for f in fields(SlurmConfig)} - {"profile"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"slurm/{path.name}: unknown key '{unknown[0]}'; allowed: {', '.join(sorted(known))}")
    return {f"slurm.{key}": value for key, value in raw.items()}


def executor(launcher: str, folder: Path, name: str, timeout_min: int, slurm: SlurmConfig,
             array_parallelism: int) -> submitit.AutoExecutor:
    """A submitit executor whose logs go to `folder/<job id>/`."""
    # A worker lives through many trials and may reach its time limit many times; each time it
    # checkpoints and is requeued (submitit's default gives up after 3).
    ex = submitit.AutoExecutor(folder=str(folder / "%j"), cluster=launcher, slurm_max_num_timeout=MAX_REQUEUES)
    if launcher != "slurm":
        ex.update_parameters(timeout_min=timeout_min, name=name)
        return ex
    extra = {key: value for key, value in (("slurm_partition", slurm.partition), ("slurm_account", slurm.account),
                                           ("slurm_qos", slurm.qos), ("slurm_constraint", slurm.constraint))
             if value}
    ex.update_parameters(
        name=name, timeout_min=slurm.time_min, gpus_per_node=slurm.gpus_per_node, cpus_per_task=slurm.cpus_per_task,
        mem_gb=slurm.mem_gb, slurm_signal_delay_s=slurm.signal_delay_s, slurm_setup=list(slurm.setup),
        slurm_array_parallelism=array_parallelism, **extra)
    return ex
