"""Task YAML files (tasks/<name>.yaml): every task has one that matches its module, and the loader
rejects what would break a task, above all a prompt that could show the hidden answer."""
import dataclasses
from pathlib import Path

import pytest

from tasks import TASKS, task_class
from tasks.base import Example
from tasks.spec import TaskSpecError, load_spec, parse_spec, render

VALID = """\
task: {name}
version: 1
description: a toy task
policy_prompt: "Q: {{query}} ({{given}})"
reward_prompt: "{{query}}"
observation: " A: {{answer}}."
generation: {{allowed_chars: null, stop_on_newline: true}}
metrics: [accuracy]
"""


def write(tmp_path: Path, text: str, name: str = "toy") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(text.format(name=name), encoding="utf-8")
    return path


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_task_has_a_yaml_and_a_config_with_help(name):
    spec = load_spec(name)
    assert spec.task == name and spec.version >= 1 and spec.description
    assert all(f.metadata.get("help") for f in dataclasses.fields(task_class(name).Config))


def test_templates_fill_visible_fields(tmp_path):
    spec = parse_spec(write(tmp_path, VALID))
    ex = Example(query="2 + 2", answer="4", given="hint")
    assert render(spec.policy_prompt, ex) == "Q: 2 + 2 (hint)"
    assert render(spec.observation, ex) == " A: 4."
    assert render(spec.policy_prompt, Example("x", "y")) == "Q: x ()"  # no given: empty


@pytest.mark.parametrize("key", ["policy_prompt", "reward_prompt"])
def test_a_prompt_that_shows_the_answer_is_rejected(tmp_path, key):
    text = VALID.replace(f'{key}: "', f'{key}: "{{{{answer}}}} ', 1)
    with pytest.raises(TaskSpecError, match=f"{key}: uses answer"):
        parse_spec(write(tmp_path, text))


@pytest.mark.parametrize("change, message", [
    (("task: {name}", "task: other"), "must be the file's name"),
    (("version: 1", "version: one"), "version: expected an integer"),
    (("metrics: [accuracy]", "metrics: [accuracy]\nprompt: x"), "unknown key prompt"),
    # A task's settings and their defaults are its Config's, stated once there.
    (("metrics: [accuracy]", "metrics: [accuracy]\ndefaults: {{n_train: 3}}"), "unknown key defaults"),
    (("stop_on_newline: true", "stop_on_newline: true, stop: [x]"), "generation: unknown key stop"),
    # A metric's direction is declared once, in methods/engine/metrics.py.
    (("metrics: [accuracy]", "metrics:\n  - {{name: accuracy, higher_is_better: true}}"),
     "metrics\\[0\\]: expected a metric name \\(its direction is declared in methods/engine/metrics.py"),
    (("metrics: [accuracy]", "metrics: [accuracy, accuracy]"), "a metric is listed twice"),
    (('observation: " A: {{answer}}."', 'observation: " A: {{label}}."'), "observation: uses label"),
    (("metrics: [accuracy]", "metrics: [accuracy]\nmethod_defaults: [p_replay]"), "method_defaults: expected a mapping"),
    (("metrics: [accuracy]", "metrics: [accuracy]\nmethod_defaults: {{p_replay: [0.5]}}"), "method_defaults.p_replay: expected a"),
])
def test_malformed_files_name_the_file_and_key(tmp_path, change, message):
    with pytest.raises(TaskSpecError, match=f"toy.yaml: .*{message}"):
        parse_spec(write(tmp_path, VALID.replace(*change)))


def test_the_seed_prompt_may_show_the_answer_and_is_optional(tmp_path):
    """Only the base LM reads it (to sample replay seeds), so it may use {answer} like the observation."""
    assert parse_spec(write(tmp_path, VALID)).seed_prompt is None
    spec = parse_spec(write(tmp_path, VALID + 'seed_prompt: "Q: {{query}} is {{answer}} because"\n'))
    assert render(spec.seed_prompt, Example("x", "y")) == "Q: x is y because"
    with pytest.raises(TaskSpecError, match="seed_prompt: uses nope"):
        parse_spec(write(tmp_path, VALID + 'seed_prompt: "{{nope}}"\n'))


def test_method_defaults_are_read_as_given(tmp_path):
    spec = parse_spec(write(tmp_path, VALID + "method_defaults: {{p_replay: 0.5, buffer_size: 100}}\n"))
    assert spec.method_defaults == {"p_replay": 0.5, "buffer_size": 100}
    assert parse_spec(write(tmp_path, VALID)).method_defaults == {}
