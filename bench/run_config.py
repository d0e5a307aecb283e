"""The run's schema: RunConfig and TrainerConfig, each field with its default, range and help text."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.launch import LAUNCHERS, SlurmConfig
from methods import method_module
from methods.engine.model_config import ModelConfig
from methods.train_config import TrainConfig
from tasks import task_class

REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass
class TrainerConfig:
    """How one run trains (`trainer.<field>=...`); see bench/parallel.py."""

    num_processes: int = field(default=1, metadata={"range": "[1, inf)",
        "help": "processes that train one run together through accelerate (data parallel, one node): one "
                "per GPU, or each on a share of the CPU cores; each takes train.batch_prompts / num_processes "
                "of every step's queries and their gradients are averaged. Methods that train nothing use one"})


def _default_data_dir() -> str | None:
    shared = REPO_ROOT.parent / "shared" / "data"
    return str(shared) if shared.is_dir() else None


def _no_config() -> Any:
    return None  # filled in by RunConfig.__post_init__ from the selected task or method


@dataclass
class RunConfig:
    """One training run (`key=value` on the command line)."""

    task: str = field(default="arithmetic", metadata={
        "help": "task to learn; its options are `task.<field>=...`"})
    method: str = field(default="gfn_tb", metadata={
        "help": "fine-tuning method; its options are `method.<field>=...`"})
    model: ModelConfig = field(default_factory=ModelConfig, metadata={
        "help": "policy LM, whose frozen base is also the reward LM (`model=tiny` picks a preset)"})
    seed: int = field(default=0, metadata={"range": "[0, 4294967295]", "help": "seed of python, numpy and torch for the run"})
    scale: str = field(default="auto", metadata={
        "help": "budget preset: smoke | cpu | paper | auto (cpu without a GPU, paper with one)"})
    launcher: str = field(default="local", metadata={
        "help": "how a sweep runs its trials: " + " | ".join(LAUNCHERS)})
    max_parallel: int = field(default=1, metadata={"range": "[1, inf)",
        "help": "trials of a sweep that run at once (each loads its own model)"})
    threads: int = field(default=0, metadata={"range": "[0, inf)",
        "help": "torch CPU threads per run; 0: all cores for a single run, cores / max_parallel for sweep runs "
                "(threads of one run waiting on each other slow small models many times on a busy machine)"})
    trial_timeout_min: int = field(default=24 * 60, metadata={"range": "[1, inf)",
        "help": "time limit of each local sweep job, in minutes (submitit's local default is 2; "
                "SLURM jobs take slurm.time_min)"})
    slurm: SlurmConfig = field(default_factory=SlurmConfig, metadata={
        "help": "SLURM job settings for launcher=slurm (`slurm=<profile>` picks slurm/<profile>.yaml)"})
    heartbeat_s: float = field(default=30.0, metadata={"range": "(0, inf)",
        "help": "seconds between a sweep worker's heartbeats for its running trial"})
    stale_after_s: float = field(default=300.0, metadata={"range": "(0, inf)",
        "help": "a running trial without a heartbeat for this long is taken for dead and retried "
                "from its last checkpoint"})
    mlflow_server: bool = field(default=False, metadata={
        "help": "serve the MLflow store over HTTP on 127.0.0.1 for the sweep's workers (many local "
                "workers writing one SQLite file directly can hit 'database is locked')"})
    system_metrics: bool = field(default=True, metadata={
        "help": "log CPU, memory (and GPU) use of every run as MLflow system metrics"})
    resume: bool = field(default=False, metadata={
        "help": "require an unfinished sweep to continue (a sweep always continues its studies; "
                "with resume=true, finding none is an error)"})
    sweep: str | None = field(default=None, metadata={
        "help": "run the sweep sweeps/<name>.yaml instead of a single run"})
    data_dir: str | None = field(default_factory=_default_data_dir, metadata={
        "help": "folder of task data files (default: ../shared/data next to the repo, if it exists)"})
    run_dir: str = field(default="runs", metadata={
        "help": "folder for Optuna studies, submitit logs and the default MLflow store"})
    results_dir: str = field(default="results", metadata={
        "help": "folder where sweeps write results/<sweep>/leaderboard.md"})
    train: TrainConfig = field(default_factory=TrainConfig, metadata={
        "help": "training budget and evaluation protocol, shared by all methods"})
    trainer: TrainerConfig = field(default_factory=TrainerConfig, metadata={
        "help": "processes that train each run"})
    task_cfg: Any = field(default_factory=_no_config, metadata={
        "help": "the selected task's Config (set through `task.<field>=...`)", "group": "task"})
    method_cfg: Any = field(default_factory=_no_config, metadata={
        "help": "the selected method's Config (set through `method.<field>=...`)", "group": "method"})

    def __post_init__(self) -> None:
        if self.task_cfg is None:
            self.task_cfg = task_class(self.task).Config()
        if self.method_cfg is None:
            self.method_cfg = method_module(self.method).Config()
