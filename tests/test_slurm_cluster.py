"""The SLURM cluster profiles and the development cluster of slurm/dev-cluster/.

The cluster tests need a running SLURM (`slurm/dev-cluster/start.sh`, which .ci/run starts) and skip
with the reason otherwise; they submit two tiny jobs and take 1-6 s (sacct lags most just after the
cluster starts).
"""
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PROFILE_TYPES = {
    "partition": str, "account": str, "gpus_per_node": int, "cpus_per_task": int, "mem_gb": int,
    "time_min": int, "qos": str, "constraint": str, "setup": list,
}
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED"}
SACCT_TIMEOUT_S = 60


def _load_profile(name: str) -> dict:
    return yaml.safe_load((REPO / "slurm" / f"{name}.yaml").read_text())


@pytest.mark.parametrize("name", ["local", "example-hpc"])
def test_profiles_hold_exactly_the_documented_keys(name):
    profile = _load_profile(name)
    assert set(profile) == set(PROFILE_TYPES)
    for key, value in profile.items():
        # Unset options are null: the job then goes without that sbatch flag.
        assert value is None or isinstance(value, PROFILE_TYPES[key]), (key, value)
    assert all(isinstance(line, str) for line in profile["setup"])


@pytest.fixture(scope="module")
def slurm_cluster() -> None:
    if shutil.which("sbatch") is None:
        pytest.skip("sbatch is not on PATH: start the dev cluster with slurm/dev-cluster/start.sh (as root)")
    # scontrol ping answers at once when slurmctld is down, where sinfo retries for about 9 s.
    for check in (["scontrol", "ping"], ["sinfo", "-h"]):
        try:
            answer = subprocess.run(check, capture_output=True, text=True, timeout=10)
        except subprocess.TimeoutExpired:
            pytest.skip(f"{check[0]} got no answer in 10 s: start SLURM with slurm/dev-cluster/start.sh")
        if answer.returncode != 0:
            # scontrol puts "... is DOWN" first on stdout; errors end with a "fatal:" line on stderr.
            lines = answer.stdout.strip().splitlines() or answer.stderr.strip().splitlines()[-1:]
            reason = lines[0] if lines else "no output"
            pytest.skip(f"SLURM is not up ({check[0]}: {reason}); start it with slurm/dev-cluster/start.sh")


def _sbatch(*args: str) -> str:
    submitted = subprocess.run(["sbatch", "--parsable", *args], capture_output=True, text=True, timeout=30)
    assert submitted.returncode == 0, submitted.stderr
    return submitted.stdout.strip().split(";")[0]  # "<id>" or "<id>;<cluster>"


def _final_accounting(job_ids: list[str], expected_rows: int) -> dict[str, tuple[str, str]]:
    """JobID -> (State, ExitCode) from sacct, once all `expected_rows` allocations have ended.

    A job that starts and ends between two slurmctld->slurmdbd messages reaches the database twice:
    its start record already carries the final State but no ExitCode (0:0), and its completion
    record adds the ExitCode and the End time. So a row counts as ended only once End is set.
    """
    deadline = time.monotonic() + SACCT_TIMEOUT_S
    rows: dict[str, tuple[str, str, str]] = {}
    while time.monotonic() < deadline:
        listing = subprocess.run(
            ["sacct", "-n", "-X", "-P", "-j", ",".join(job_ids), "-o", "JobID,State,ExitCode,End"],
            capture_output=True, text=True, timeout=30)
        assert listing.returncode == 0, listing.stderr
        rows = {job: (state, code, end) for job, state, code, end in
                (line.split("|") for line in listing.stdout.splitlines() if line)}
        if len(rows) == expected_rows and all(state in FINAL_STATES and end not in ("", "Unknown")
                                              for state, _, end in rows.values()):
            return {job: (state, code) for job, (state, code, _) in rows.items()}
        time.sleep(0.2)
    pytest.fail(f"jobs {job_ids} not finished in sacct after {SACCT_TIMEOUT_S} s (last: {rows}); "
                "see the cluster logs (slurm/dev-cluster/start.sh prints where they are)")


def test_array_job_completes_and_sacct_records_exit_codes(slurm_cluster, tmp_path):
    profile = _load_profile("local")
    # The local profile's settings must be ones the dev cluster accepts.
    array = _sbatch("--array=0-1", "--chdir", str(tmp_path), "--output", str(tmp_path / "%A_%a.out"),
                    "--partition", profile["partition"], "--account", profile["account"],
                    "--cpus-per-task", str(profile["cpus_per_task"]), "--mem", f"{profile['mem_gb']}G",
                    "--time", str(profile["time_min"]),
                    "--wrap", "echo task $SLURM_ARRAY_TASK_ID of $SLURM_ARRAY_JOB_ID")
    failing = _sbatch("--output", "/dev/null", "--wrap", "exit 3")

    rows = _final_accounting([array, failing], expected_rows=3)

    assert rows == {f"{array}_0": ("COMPLETED", "0:0"), f"{array}_1": ("COMPLETED", "0:0"),
                    failing: ("FAILED", "3:0")}
    for task in (0, 1):
        assert (tmp_path / f"{array}_{task}.out").read_text() == f"task {task} of {array}\n"
