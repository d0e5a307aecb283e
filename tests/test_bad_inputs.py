"""Bad inputs, as a new user and an unlucky cluster user give them: each ends with one `error: ...`
line, a non-zero exit and no traceback, and leaves the MLflow store, the Optuna journal and
`results/` as they were; a resume never loses or corrupts what was there.

Most cases call `bench.run.main` in this process (the same function `python -m bench.run` runs);
the journal, leaderboard, MLflow-server and Ctrl-C cases run real processes.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def env_for(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONIOENCODING": "utf-8",
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'm.db'}", **extra}
    return env


def bench_run(tmp_path: Path, *args: str, timeout: float = 600, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench.run", *args], cwd=tmp_path, env=env_for(tmp_path, **env),
                          capture_output=True, text=True, encoding="utf-8", timeout=timeout, stdin=subprocess.DEVNULL)


def digest(folder: Path) -> dict[str, str]:
    """Every file under `folder` -> a hash of its bytes: what a failed command must leave unchanged."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def parent_runs(tmp_path: Path, sweep: str = "smoke"):
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'm.db'}")
    return mlflow.search_runs(experiment_names=[sweep], filter_string="tags.stage = 'sweep'")


# --- resume never corrupts: real processes ------------------------------------------------------

# One gfn_tb entry of the smoke sweep with its one trial already complete: a run of this is one
# final on the tiny model.
ONE_FINAL = ["sweep=smoke", "method=gfn_tb", "trials=1", "run_dir=runs", "results_dir=results", "system_metrics=false"]


def test_a_journal_cut_mid_line_is_repaired_before_the_resume_appends(tmp_path, monkeypatch):
    import optuna

    from bench.journal import storage
    from bench.sweep_plan import open_study, plan_sweep

    monkeypatch.chdir(tmp_path)
    plan = plan_sweep(dict(arg.split("=", 1) for arg in ONE_FINAL))
    plan.folder.mkdir(parents=True)
    study = open_study(plan, plan.methods[0], storage(plan.storage_path))
    study.tell(study.ask(), 0.5)
    # A node died while writing the next record: the journal ends inside a line.
    with open(plan.storage_path, "ab") as journal:
        journal.write(b'{"op_code":8,"worker_id":"dead","trial_id":0,"user_attr":{"lin')
    before = plan.storage_path.read_bytes()

    result = bench_run(tmp_path, *ONE_FINAL)
    assert result.returncode == 0, result.stderr[-3000:]
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and "cut off mid-write" in warnings[0], result.stderr[-2000:]
    backups = list(plan.folder.glob("optuna.journal.*.partial"))
    assert len(backups) == 1 and backups[0].read_bytes() == before and backups[0].name in warnings[0]
    lines = plan.storage_path.read_bytes().splitlines(keepends=True)
    assert lines[:3] == before.splitlines(keepends=True)[:3]  # the complete records are kept as they were
    for line in lines:  # never a merged line: every record parses, and the file ends with one
        assert line.endswith(b"\n") and isinstance(json.loads(line), dict)
    resumed = optuna.load_study(study_name="smoke.gfn_tb", storage=storage(plan.storage_path))
    assert [t.state.name for t in resumed.trials] == ["COMPLETE"]
    assert "| gfn_tb |" in (tmp_path / "results" / "smoke" / "leaderboard.md").read_text()

    # And it stays runnable: another resume reads the whole journal without an error.
    again = bench_run(tmp_path, *ONE_FINAL)
    assert again.returncode == 0 and "warning" not in again.stderr and "Traceback" not in again.stderr, again.stderr[-2000:]


def test_a_merged_journal_line_stops_the_sweep_with_how_to_repair_it(tmp_path, monkeypatch, capsys):
    """A journal corrupted by an older version (two records on one line) is reported, not read."""
    import bench.run
    from bench.journal import storage
    from bench.sweep_plan import open_study, plan_sweep

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'm.db'}")
    plan = plan_sweep(dict(arg.split("=", 1) for arg in ONE_FINAL))
    plan.folder.mkdir(parents=True)
    study = open_study(plan, plan.methods[0], storage(plan.storage_path))
    study.tell(study.ask(), 0.5)
    lines = plan.storage_path.read_bytes().splitlines(keepends=True)
    lines[2] = lines[2][:20] + lines[3]  # a cut-off record with the next one appended onto it
    plan.storage_path.write_bytes(b"".join(lines))
    before = digest(tmp_path)
    capsys.readouterr()  # Optuna's note on the study made above

    assert bench.run.main(ONE_FINAL) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [f"error: {plan.storage_path}:3: not a journal record (a write cut off and then appended to?); "
                   "copy the file aside, delete line 3 and run again"]
    assert digest(tmp_path) == before


def test_a_resume_whose_finals_all_fail_keeps_the_leaderboard_with_or_without_the_server(tmp_path):
    """The sweep is started with mlflow_server=true and resumed without it; its only final fails
    (the model folder holds no model) both times. The good leaderboard stays, and each invocation's
    parent run is ended."""
    board = tmp_path / "results" / "smoke" / "leaderboard.md"
    board.parent.mkdir(parents=True)
    board.write_text("| entry | a good leaderboard |\n")
    no_model = tmp_path / "not-a-model"
    no_model.mkdir()
    args = ["sweep=smoke", "method=gfn_tb", "trials=0", "run_dir=runs", "results_dir=results", "system_metrics=false",
            f"model.name={no_model}"]

    for server in ("mlflow_server=true", "mlflow_server=false"):
        result = bench_run(tmp_path, *args, server)
        assert result.returncode == 1, result.stderr[-3000:]
        assert "Traceback" not in result.stderr, result.stderr[-3000:]
        assert board.read_text() == "| entry | a good leaderboard |\n"
        assert f"leaderboard not written: no final run of sweep run" in result.stdout
        assert f"{board} keeps the previous one" in result.stdout
        assert not (board.parent / "learning_curves.png").exists()
    parents = parent_runs(tmp_path)
    assert sorted(parents["status"]) == ["FINISHED", "FINISHED"]


# --- one line for every expected failure, nothing changed: in this process -----------------------


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """A folder as a user's looks after a sweep: an MLflow store with a run, the sweep's Optuna
    journal, its leaderboard; every case below must leave each byte of it as it was."""
    import mlflow
    import optuna

    from bench.sweep_plan import plan_sweep

    folder = tmp_path_factory.mktemp("world")
    mlflow.set_tracking_uri(f"sqlite:///{folder / 'runs' / 'mlflow.db'}")
    (folder / "runs").mkdir()
    experiment = mlflow.create_experiment("smoke", artifact_location=(folder / "runs" / "mlartifacts").as_uri())
    with mlflow.start_run(experiment_id=experiment):
        mlflow.log_metric("valid/accuracy", 0.5)
    plan = plan_sweep({"sweep": "smoke", "method": "gfn_tb", "run_dir": str(folder / "runs")})
    plan.folder.mkdir(parents=True)
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(plan.storage_path)))
    study = optuna.create_study(study_name="smoke.gfn_tb", storage=storage, direction="maximize")
    # Made with these settings and another search space than today's.
    study.set_user_attr("settings", json.dumps({**json.loads(plan.methods[0].fingerprint(plan.spec)), "search": []}))
    study.tell(study.ask(), 0.5)
    (folder / "results" / "smoke").mkdir(parents=True)
    (folder / "results" / "smoke" / "leaderboard.md").write_text("| entry | a good leaderboard |\n")
    return folder


@pytest.fixture
def world(template, tmp_path, monkeypatch) -> Path:
    import shutil

    folder = tmp_path / "world"
    shutil.copytree(template, folder)
    monkeypatch.chdir(folder)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the store is ./runs/mlflow.db
    return folder


def write(path: Path, data: bytes | str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return str(path)


def subj_folder(folder: Path) -> None:
    """A good SUBJ data folder: train.2.jsonl, train.jsonl, test.jsonl."""
    rows = [json.dumps({"text": f"review number {i} .", "label": i % 2}) for i in range(8)]
    write(folder / "train.jsonl", "\n".join(rows) + "\n")
    write(folder / "train.2.jsonl", "\n".join(rows[:2]) + "\n")
    write(folder / "test.jsonl", "\n".join(json.dumps({"text": f"test review {i} .", "label": i % 2}) for i in range(3)) + "\n")


HEADER = "storyid,storytitle,sentence1,sentence2,sentence3,sentence4,sentence5\n"
STORY = "id{i},title {i},Ann woke up on day {i}.,She was hungry.,She opened the fridge.,She found eggs.,She ate.\n"
SMOKE = ["model=tiny", "scale=smoke"]


def sweep_file(folder: Path, name: str, data: bytes | str) -> str:
    write(folder / "sweeps" / f"{name}.yaml", data)
    return name


GOOD_SWEEP = """\
description: a good sweep
base: {model: tiny, scale: smoke}
objective: {metric: valid/loglik_mean}
methods:
  gfn_tb: {trials: 1}
final: {seeds: [0]}
"""

# (case id, arguments, files to make: path -> bytes, env, exit code, what the line must hold)
CASES = [
    # values on the command line
    ("steps 0", ["train.steps=0"], {}, 2, "error: train.steps: expected at least 1, got 0"),
    ("steps -1", ["train.steps=-1"], {}, 2, "error: train.steps: expected at least 1, got -1"),
    ("eval temperature -1", ["train.eval_temperature=-1"], {}, 2, "error: train.eval_temperature: expected above 0"),
    ("eval temperature 0", ["train.eval_temperature=0"], {}, 2, "error: train.eval_temperature: expected above 0"),
    ("lora r 0", ["model.lora.r=0"], {}, 2, "error: model.lora.r: expected at least 1, got 0"),
    ("eval samples 0", ["train.eval_samples=0"], {}, 2, "error: train.eval_samples: expected at least 1, got 0"),
    ("arabic-indic digit", ["seed=٣"], {}, 2, "error: seed: expected int, got '٣'"),
    ("key twice", ["seed=1", "seed=2"], {}, 2, "error: seed: given twice ('seed=1' and 'seed=2'); keep one"),
    ("misspelt key", ["train.step=3"], {}, 2, "error: unknown key 'train.step'; did you mean 'train.steps'?"),
    ("no equals sign", ["train.steps"], {}, 2, "error: expected key=value, got 'train.steps'"),
    ("unknown method", ["method=dpo"], {}, 2, "error: unknown method 'dpo'; choose one of:"),
    ("unknown task", ["task=chess"], {}, 2, "error: unknown task 'chess'; choose one of:"),
    ("unknown preset", ["model=huge"], {}, 2, "error: unknown model preset 'huge'"),
    ("100,000-character value", ["method.lr=x" + "9" * 100_000], {}, 2, "error: method.lr: expected float, got 'x999"),
    ("unknown launcher", ["launcher=k8s"], {}, 2, "error: unknown launcher 'k8s'"),
    ("unknown slurm profile", ["launcher=slurm", "slurm=nowhere"], {}, 2, "error: unknown slurm profile 'nowhere'"),
    # sweeps named on the command line
    ("unknown sweep", ["sweep=nope"], {}, 2, "error: unknown sweep 'nope'; choose one of:"),
    ("resume of nothing", ["sweep=gfn_vs_ppo", "resume=true"], {}, 2, "error: resume=true, but there is no sweep to resume"),
    ("negative trials", ["sweep=smoke", "trials=-1"], {}, 2, "error: trials: expected at least 0, got -1"),
    ("no such entry", ["sweep=smoke", "method=sft"], {}, 2, "error: sweep smoke has no entry or method 'sft'"),
    ("changed search space", ["sweep=smoke", "method=gfn_tb"], {}, 2, "made with other settings (search)"),
    # model files
    ("gguf that is text", ["model.gguf=model.gguf"], {"model.gguf": b"not a model\n"}, 2,
     "error: model.gguf is not a GGUF file (it does not start with 'GGUF')"),
    ("gguf missing", ["model.gguf=missing.gguf"], {}, 2, "error: GGUF file not found: missing.gguf"),
    ("model folder missing", ["model.name=./no-model"], {}, 2, "error: model folder './no-model' does not exist"),
    # data files
    ("subj not utf-8 on line 2", ["task=subj", "task.path=subj", "task.n_train=2", "task.n_valid=2"],
     {"subj/train.2.jsonl": b'{"text": "fine .", "label": 0}\n{"text": "caf\xe9 .", "label": 1}\n'}, 2,
     "subj/train.2.jsonl:2: not UTF-8 text (byte 0xe9 at column 14); save the file as UTF-8"),
    ("subj empty file", ["task=subj", "task.path=subj", "task.n_train=2", "task.n_valid=2"],
     {"subj/train.2.jsonl": b""}, 2, "subj/train.2.jsonl has no items"),
    ("subj bad json line", ["task=subj", "task.path=subj", "task.n_train=2", "task.n_valid=2"],
     {"subj/test.jsonl": b'{"text": "a .", "label": 0}\n{"text": \n'}, 2, "subj/test.jsonl:2: invalid JSON"),
    ("subj missing key", ["task=subj", "task.path=subj", "task.n_train=2", "task.n_valid=2"],
     {"subj/test.jsonl": b'{"text": "a ."}\n'}, 2, "subj/test.jsonl:1: missing key 'label'"),
    ("subj path is a file", ["task=subj", "task.path=notes.txt"], {"notes.txt": b"x"}, 2,
     "error: subj: task.path=notes.txt is not a folder"),
    ("stories not utf-8 on line 3", ["task=infilling", "task.path=stories.csv"],
     {"stories.csv": (HEADER + STORY.format(i=0)).encode() + b"id1,t,\xff,b,c,d,e\n"}, 2,
     "stories.csv:3: not UTF-8 text (byte 0xff at column 7)"),
    ("stories without a column", ["task=infilling", "task.path=stories.csv"],
     {"stories.csv": b"storyid,sentence1\nx,y\n"}, 2, "stories.csv:1: header lacks column"),
    ("stories missing", ["task=infilling", "task.path=nothing.csv"], {}, 2, "data file nothing.csv not found"),
    ("prompts not utf-8", ["task=continuation", "task.path=prompts.txt"],
     {"prompts.txt": b"A first prompt.\n\x80 second\n"}, 2, "prompts.txt:2: not UTF-8 text (byte 0x80"),
    # sweep files
    ("sweep not utf-8", ["sweep=broken"], {"sweeps/broken.yaml": GOOD_SWEEP.encode() + b"# \xff\n"}, 2,
     "error: sweeps/broken.yaml: line 7: not UTF-8 text (byte 0xff); save it as UTF-8"),
    ("sweep not yaml", ["sweep=broken"], {"sweeps/broken.yaml": b"description: [unclosed\n"}, 2,
     "error: sweeps/broken.yaml: invalid YAML"),
    ("sweep with a python tag", ["sweep=broken"],
     {"sweeps/broken.yaml": b"description: !!python/object/apply:os.system ['touch pwned']\n"}, 2,
     "error: sweeps/broken.yaml: invalid YAML"),
    ("sweep is a list", ["sweep=broken"], {"sweeps/broken.yaml": b"- a\n- b\n"}, 2,
     "error: sweeps/broken.yaml: expected a mapping"),
    ("sweep empty", ["sweep=broken"], {"sweeps/broken.yaml": b""}, 2,
     "error: sweeps/broken.yaml: missing description, final, methods, objective"),
    ("sweep misspelt key", ["sweep=broken"], {"sweeps/broken.yaml": GOOD_SWEEP.replace("methods:", "metods:").encode()},
     2, "error: sweeps/broken.yaml: unknown key 'metods'; did you mean 'methods'?"),
    ("sweep unknown objective", ["sweep=broken"],
     {"sweeps/broken.yaml": GOOD_SWEEP.replace("valid/loglik_mean", "valid/bleu").encode()}, 2,
     "error: sweeps/broken.yaml: objective.metric: expected valid/<metric>"),
    ("sweep bounds reversed", ["sweep=broken"], {"sweeps/broken.yaml": GOOD_SWEEP.replace(
        "gfn_tb: {trials: 1}", "gfn_tb: {trials: 1, search: {method.lr: {type: float, low: 1.0e-3, high: 1.0e-5}}}").encode()},
     2, "error: sweeps/broken.yaml: methods.gfn_tb.search.method.lr: low (0.001) must be below high (1e-05)"),
    ("sweep searches an unknown key", ["sweep=broken"], {"sweeps/broken.yaml": GOOD_SWEEP.replace(
        "gfn_tb: {trials: 1}", "gfn_tb: {trials: 1, search: {method.lrr: {type: float, low: 0.1, high: 0.2}}}").encode()},
     2, "error: sweeps/broken.yaml: methods.gfn_tb.search.method.lrr: unknown key 'method.lrr'; did you mean 'method.lr'?"),
    ("sweep seeds not a list", ["sweep=broken"],
     {"sweeps/broken.yaml": GOOD_SWEEP.replace("seeds: [0]", "seeds: 0").encode()}, 2,
     "error: sweeps/broken.yaml: final.seeds: expected a non-empty list of integer seeds"),
    ("sweep negative trials", ["sweep=broken"],
     {"sweeps/broken.yaml": GOOD_SWEEP.replace("trials: 1", "trials: -2").encode()}, 2,
     "error: sweeps/broken.yaml: methods.gfn_tb.trials: expected a non-negative integer"),
    # folders and stores
    ("run_dir under a file", ["run_dir=notes.txt/runs"], {"notes.txt": b"x"}, 2,
     "error: run_dir="),
    ("results_dir is a file", ["sweep=smoke", "method=ppo", "results_dir=notes.txt"], {"notes.txt": b"x"}, 2,
     "error: results_dir="),
    ("tracking store under a file", [], {"notes.txt": b"x", "ENV:MLFLOW_TRACKING_URI": b"sqlite:///notes.txt/m.db"}, 1,
     "error: cannot open the MLflow store"),
    ("tracking store in /proc", [], {"ENV:MLFLOW_TRACKING_URI": b"sqlite:////proc/no-such/m.db"}, 1,
     "error: cannot open the MLflow store /proc/no-such/m.db"),
    ("tracking server down", [], {"ENV:MLFLOW_TRACKING_URI": b"http://127.0.0.1:9"}, 1,
     "error: the MLflow server http://127.0.0.1:9 does not answer"),
    ("sweep with its tracking server down", ["sweep=smoke", "method=ppo"],
     {"ENV:MLFLOW_TRACKING_URI": b"http://127.0.0.1:9"}, 1, "error: the MLflow server http://127.0.0.1:9 does not answer"),
]


@pytest.mark.parametrize("args, files, code, line", [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_a_bad_input_is_one_line_and_changes_nothing(world, monkeypatch, capsys, args, files, code, line):
    import bench.config
    import bench.run

    if any(path.startswith("subj/") for path in files):  # a good SUBJ folder with one file replaced
        subj_folder(world / "subj")
    for path, data in files.items():
        if path.startswith("ENV:"):
            monkeypatch.setenv(path.removeprefix("ENV:"), data.decode())
        else:
            write(world / path, data)
    if any(path.startswith("sweeps/") for path in files):  # a sweep file of this case, beside the real ones
        for real in bench.config.SWEEPS_DIR.glob("*.yaml"):
            write(world / "sweeps" / real.name, real.read_bytes())
        monkeypatch.setattr(bench.config, "SWEEPS_DIR", world / "sweeps")
    run_dir = [] if any(a.startswith("run_dir=") for a in args) else ["run_dir=runs"]
    results_dir = [] if any(a.startswith("results_dir=") for a in args) else ["results_dir=results"]
    smoke = [] if any(a.startswith(("model", "sweep=")) for a in args) else SMOKE
    before = digest(world)

    status = bench.run.main([*args, *smoke, *run_dir, *results_dir])
    err = capsys.readouterr().err
    lines = [part for part in err.splitlines() if part.strip()]
    assert status == code, err[-2000:]
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
    assert lines[0].startswith("error: ") and line in lines[0], lines[0][:400]
    assert len(lines[0]) < 400  # values are shortened
    assert digest(world) == before  # store, journal and results as they were


def test_there_are_forty_cases_and_more():
    assert len(CASES) >= 40


def test_help_lists_a_broken_sweep_file_and_still_answers(world, monkeypatch, capsys):
    import bench.config
    import bench.run

    write(world / "sweeps" / "broken.yaml", GOOD_SWEEP.encode() + b"# \xff\n")
    write(world / "sweeps" / "good.yaml", GOOD_SWEEP)
    monkeypatch.setattr(bench.config, "SWEEPS_DIR", world / "sweeps")
    assert bench.run.main(["--help"]) == 0
    out = capsys.readouterr().out
    listed = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ") and line.split()}
    assert "(invalid: sweeps/broken.yaml: line 7: not UTF-8 text (byte 0xff)" in listed["broken"]
    assert listed["good"].split(None, 1)[1] == "a good sweep"


def test_the_calculator_never_executes_what_it_reads():
    from tasks.calculator import calculate

    for expr in ("__import__('os').system('touch pwned')", "2 ** 99999999", "1e308 * 10", "9" * 10_000 + " + 1"):
        assert calculate(expr) is None
    assert not Path("pwned").exists()


# --- fast answers: the command line loads heavy libraries only where a run needs them ------------

HEAVY = ("torch", "transformers", "peft", "mlflow", "optuna", "nltk", "pandas")


def heavy_after(code: str) -> set[str]:
    """The heavy libraries a fresh interpreter has imported after running `code`."""
    probe = f"{code}\nimport sys\nprint('loaded:', *(m for m in {HEAVY!r} if m in sys.modules))"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("MLFLOW_TRACKING_URI", None)
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return set(result.stdout.splitlines()[-1].split()[1:])


def test_the_command_line_and_its_mistakes_import_no_heavy_library():
    assert heavy_after("import bench.run") == set()
    assert heavy_after("import bench.run\nbench.run.main(['sweep=nope', 'seed=1', 'seed=2'])") == set()
    assert heavy_after("import bench.run\nbench.run.main(['sweep=nope'])") == set()
    assert heavy_after("import bench.status\nbench.status.main(['run_dir=runs'])") == set()
    assert heavy_after("import bench.status\nbench.status.main(['sweep=nope'])") == set()
    assert heavy_after("import bench.evaluate\nbench.evaluate.main(['seed=1'])") == set()  # run= is missing
    # --help and a bad value build the run's settings, whose method Config still lives beside the
    # method's torch code: torch, and Optuna for the sweep files' pruners, but nothing else.
    assert heavy_after("import bench.run\nbench.run.main(['--help'])") <= {"torch", "optuna"}
    assert heavy_after("import bench.run\nbench.run.main(['train.steps=0'])") <= {"torch"}
    # A sweep's mistake is found by planning it: Optuna's journal is read, MLflow is not needed.
    assert heavy_after("import bench.run\nbench.run.main(['sweep=smoke', 'train.steps=0'])") <= {"torch", "optuna"}


# --- Ctrl-C: a real process ----------------------------------------------------------------------


def _sigint_as_in_a_terminal() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # a shell starts background commands with SIGINT ignored


def test_ctrl_c_on_a_single_run_is_one_line_exit_130_and_the_run_killed(tmp_path):
    import mlflow

    log = open(tmp_path / "stderr.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "bench.run", "model=tiny", "scale=smoke", "train.steps=100000",
                             "system_metrics=false", "run_dir=runs"], cwd=tmp_path, env=env_for(tmp_path),
                            stdout=subprocess.DEVNULL, stderr=log, stdin=subprocess.DEVNULL,
                            preexec_fn=_sigint_as_in_a_terminal)
    deadline = time.monotonic() + 300
    while "gfn_tb-seed0" not in (tmp_path / "stderr.log").read_text():  # its progress bar: training runs
        assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "stderr.log").read_text()[-2000:]
        time.sleep(0.5)
    time.sleep(2)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130
    err = (tmp_path / "stderr.log").read_text()
    pieces = [piece for line in err.split("\n") for piece in line.split("\r") if piece.strip()]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
    assert pieces[-1] == "error: interrupted (Ctrl-C); the run is recorded as KILLED"
    assert [p for p in pieces if p.startswith("error")] == pieces[-1:]
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'm.db'}")
    runs = mlflow.search_runs(experiment_names=["gfn-bench"])
    assert list(runs["status"]) == ["KILLED"] and list(runs["tags.interrupted"]) == ["keyboard"]


def test_bench_report_keeps_the_leaderboard_when_the_latest_sweep_run_has_no_finished_final(world, capsys):
    """The latest invocation of the sweep (in the world's store) failed every final: rebuilding its
    leaderboard must not replace the good one with an empty table."""
    import mlflow

    import bench.report

    client = mlflow.MlflowClient(f"sqlite:///{world / 'runs' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("smoke").experiment_id
    parent = client.create_run(experiment, tags={"sweep": "smoke", "stage": "sweep"}).info.run_id
    final = client.create_run(experiment, tags={"sweep": "smoke", "stage": "final", "entry": "gfn_tb",
                                                "mlflow.parentRunId": parent})
    client.set_terminated(final.info.run_id, status="FAILED")
    client.set_terminated(parent, status="FINISHED")
    before = digest(world / "results")

    assert bench.report.main(["sweep=smoke", "run_dir=runs", "results_dir=results"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == [f"error: leaderboard not written: no final run of sweep run {parent} finished; "
                   f"{world / 'results' / 'smoke' / 'leaderboard.md'} keeps the previous one"]
    assert digest(world / "results") == before
