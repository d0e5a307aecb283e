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
metrics:
  - {{name: accuracy, higher_is_better: true}}
defaults: {{}}
"""


def write(tmp_path: Path, text: str, name: str = "toy") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(text.format(name=name), encoding="utf-8")
    return path


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_task_has_a_yaml_that_matches_its_config(name):
    spec = load_spec(name)
    cls = task_class(name)
    assert spec.task == name and spec.version >= 1 and spec.description
    fields = dataclasses.fields(cls.Config)
    assert {f.name for f in fields} == set(spec.defaults)
    assert all(f.metadata.get("help") for f in fields)
    # The YAML's defaults are the Config's defaults.
    assert {f.name: f.default for f in fields} == spec.defaults


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
    (("defaults: {{}}", "defaults: {{}}\nprompt: x"), "unknown key prompt"),
    (("stop_on_newline: true", "stop_on_newline: true, stop: [x]"), "generation: unknown key stop"),
    (("higher_is_better: true", "higher_is_better: yes please"), "metrics\\[0\\]"),
    (('observation: " A: {{answer}}."', 'observation: " A: {{label}}."'), "observation: uses label"),
    (("defaults: {{}}", "defaults: {{}}\nmethod_defaults: [p_replay]"), "method_defaults: expected a mapping"),
    (("defaults: {{}}", "defaults: {{}}\nmethod_defaults: {{p_replay: [0.5]}}"), "method_defaults.p_replay: expected a"),
])
def test_malformed_files_name_the_file_and_key(tmp_path, change, message):
    with pytest.raises(TaskSpecError, match=f"toy.yaml: .*{message}"):
        parse_spec(write(tmp_path, VALID.replace(*change)))


def test_defaults_must_match_the_config_exactly(tmp_path):
    @dataclasses.dataclass
    class Config:
        size: int = dataclasses.field(default=1, metadata={"help": "a size"})

    spec = parse_spec(write(tmp_path, VALID.replace("defaults: {{}}", "defaults: {{colour: red}}")))
    with pytest.raises(TaskSpecError, match="unknown: colour; missing: size"):
        spec.check_defaults(Config)


def test_the_seed_prompt_may_show_the_answer_and_is_optional(tmp_path):
    """Only the base LM reads it (to sample replay seeds), so it may use {answer} like the observation."""
    assert parse_spec(write(tmp_path, VALID)).seed_prompt is None
    spec = parse_spec(write(tmp_path, VALID + 'seed_prompt: "Q: {{query}} is {{answer}} because"\n'))
    assert render(spec.seed_prompt, Example("x", "y")) == "Q: x is y because"
    with pytest.raises(TaskSpecError, match="seed_prompt: uses nope"):
        parse_spec(write(tmp_path, VALID + 'seed_prompt: "{{nope}}"\n'))


def test_method_defaults_are_read_as_given(tmp_path):
    spec = parse_spec(write(tmp_path, VALID.replace("defaults: {{}}", "defaults: {{}}\nmethod_defaults: {{p_replay: 0.5, buffer_size: 100}}")))
    assert spec.method_defaults == {"p_replay": 0.5, "buffer_size": 100}
    assert parse_spec(write(tmp_path, VALID)).method_defaults == {}
