"""The arithmetic task: split hygiene, the paper's files, prompts, tool and answers."""
import dataclasses
import json
import os
import shutil
import time
from pathlib import Path

import pytest

from tasks import task_class
from tasks.arithmetic import REFERENCE_DIR, ArithmeticTask, Config, normalize_answer
from tasks.calculator import chain_value

SHARED_DATA = Path(os.environ.get("GFN_BENCH_SHARED_DATA",
                                  Path(__file__).resolve().parents[2] / "shared" / "data"))
needs_shared_data = pytest.mark.skipif(
    not (SHARED_DATA / REFERENCE_DIR).is_dir(),
    reason=f"paper's arithmetic files not found at {SHARED_DATA / REFERENCE_DIR} "
           f"(set GFN_BENCH_SHARED_DATA to the shared data folder)")


@pytest.fixture(scope="module")
def task():
    return ArithmeticTask(Config())


@pytest.fixture(scope="module")
def reference():
    return ArithmeticTask(Config(source="reference"), data_dir=str(SHARED_DATA))


def n_operands(query):
    return query.count("+") + query.count("-") + 1


def all_splits(task):
    named = {"demos+train": task.demonstrations() + task.train_examples(),
             "valid": task.validation_examples()}
    named.update({split.name: split.examples for split in task.eval_splits()})
    return named


# --- generator ---------------------------------------------------------------------------------
def test_registered():
    assert task_class("arithmetic") is ArithmeticTask
    assert ArithmeticTask.Config is Config
    assert all(f.metadata.get("help") for f in dataclasses.fields(Config))


def test_sizes_and_operand_counts(task):
    cfg = Config()
    assert len(task.demonstrations()) == cfg.n_demos
    assert len(task.train_examples()) == cfg.n_train
    assert len(task.validation_examples()) == cfg.n_valid
    for examples in (task.demonstrations(), task.train_examples(), task.validation_examples()):
        counts = [n_operands(ex.query) for ex in examples]
        assert set(counts) == {3, 4} and abs(counts.count(3) - counts.count(4)) <= 1
    splits = {split.name: split for split in task.eval_splits()}
    assert list(splits) == ["test_3op", "test_4op", "test_5op"]
    for name, size, in_distribution in (("test_3op", 3, True), ("test_4op", 4, True),
                                        ("test_5op", 5, False)):
        assert len(splits[name].examples) == cfg.n_test
        assert splits[name].in_distribution is in_distribution
        assert {n_operands(ex.query) for ex in splits[name].examples} == {size}


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_no_question_in_two_splits_or_twice_in_one(seed):
    task = ArithmeticTask(Config(data_seed=seed))
    seen = set()
    for name, examples in all_splits(task).items():
        queries = [ex.query for ex in examples]
        assert len(set(queries)) == len(queries), f"duplicate question within {name}"
        assert not seen & set(queries), f"{name} shares questions with an earlier split"
        seen |= set(queries)
    assert all(count == 0 for count in task.overlap_report().values())


def test_whole_3_operand_space_can_be_used():
    # 4000 distinct 3-operand questions: 1000 + 1000 + 1000 (halves of the mixed splits) + 1000
    task = ArithmeticTask(Config(n_demos=2000, n_train=2000, n_valid=2000, n_test=1000))
    assert len({ex.query for ex in task.eval_splits()[0].examples}) == 1000


def test_too_many_questions_is_a_clear_error():
    # default mixed splits take 25 + 500 + 100 three-operand questions
    with pytest.raises(ValueError, match=r"demos 25 \+ train 500 \+ valid 100 \+ test_3op 3400 "
                                         r"= 4025 distinct 3-operand questions, but only 4000"):
        ArithmeticTask(Config(n_test=3400))


def test_deterministic_per_seed(task):
    again = ArithmeticTask(Config())
    other = ArithmeticTask(Config(data_seed=1))
    assert all_splits(again) == all_splits(task)
    for name, examples in all_splits(other).items():
        assert examples != all_splits(task)[name], name


def test_answers_and_demo_rationales(task):
    for examples in all_splits(task).values():
        assert all(ex.answer == str(chain_value(ex.query)) for ex in examples)
    assert all(ex.rationale is None for ex in task.train_examples() + task.validation_examples())
    for demo in task.demonstrations():
        assert task.extract_answer(demo.rationale) == demo.answer
        pieces = task.segments(demo.rationale)
        assert "".join(text for text, _ in pieces) == demo.rationale
        tool_outputs = [text for text, is_tool in pieces if is_tool]
        assert len(tool_outputs) == n_operands(demo.query) - 1
        assert tool_outputs[-1] == f" {demo.answer}"


def test_generation_is_fast():
    start = time.perf_counter()
    ArithmeticTask(Config(data_seed=3))
    assert time.perf_counter() - start < 0.5


@pytest.mark.parametrize("change", [
    {"source": "paper"}, {"n_train": -1}, {"min_actions": 10, "max_actions": 5},
    {"reward_shots": 51}, {"n_demos": 2}, {"policy_shots": 4, "n_demos": 3},
])
def test_bad_config(change):
    with pytest.raises(ValueError):
        ArithmeticTask(Config(**change))


# --- text -----------------------------------------------------------------------------------
def test_prompts_and_observation():
    demo_task = ArithmeticTask(Config(reward_shots=2, policy_shots=1))
    demos = demo_task.demonstrations()
    ex = demo_task.train_examples()[0]
    question = f"Question: {ex.query} = ? Answer:"

    def worked(d):
        return f"Question: {d.query} = ? Answer:{d.rationale}. The answer is {d.answer}.\n"

    assert demo_task.reward_prompt(ex) == worked(demos[0]) + worked(demos[1]) + question
    # The policy's demonstrations end where its own samples end (". The answer is" is not its text).
    assert demo_task.policy_prompt(ex) == f"Question: {demos[0].query} = ? Answer:{demos[0].rationale}\n" + question
    assert demo_task.observation(ex) == f". The answer is {ex.answer}."
    assert ArithmeticTask(Config()).policy_prompt(ex) == question


def test_worked_example_format(task):
    ex = task.demonstrations()[0]
    assert task.reward_prompt(ex).startswith(
        f"Question: {ex.query} = ? Answer: {ex.query[:5]} = ")


def test_engine_attributes(task):
    assert task.allowed_chars == " ,.0123456789=+-"
    assert task.stop_on_newline is True
    assert (task.min_actions, task.max_actions) == (5, 40)


def test_tool():
    task = ArithmeticTask(Config(n_demos=3, n_train=0, n_valid=0, n_test=0))
    assert task.tool(" 5 + 9 =") == " 14"
    assert task.tool("Question: 5 + 9 - 3 + 8 = ? Answer: 5 + 9 =") == " 14"
    assert task.tool(" 5 + 9 = 14, 14 - 3 =") == " 11"
    assert task.tool(" 6 - 0 - 4 =") is None  # one operation per call, as in the paper
    assert task.tool(" 5 - 9 = -4, -4 - 3 =") == " -7"
    assert task.tool(" 5 + 9 = 14, 14 - 3") is None  # no trailing "="
    assert task.tool(" 5 + 9") is None
    assert task.tool(" 5 + 9 = ") is None  # fires on the "=" token only
    for junk in ("=", " =", ",=", " 5 + =", " 5 + 9 = 14 =", "__import__('os') =", "9**9**9 =",
                 "1" * 10_000 + " =", "", None):
        assert task.tool(junk) is None


def test_segments_follow_the_tool(task):
    assert task.segments(" 5 + 9 = 14, 14 - 3 = 11, 11 + 8 = 19") == [
        (" 5 + 9 =", False), (" 14", True), (", 14 - 3 =", False), (" 11", True),
        (", 11 + 8 =", False), (" 19", True)]
    # a wrong number after "=" was written by the policy, not the tool
    assert task.segments(" 5 + 9 = 15") == [(" 5 + 9 = 15", False)]
    # the tool fired, then the policy went on
    assert task.segments(" 1 + 2 = 3, 3 +") == [(" 1 + 2 =", False), (" 3", True),
                                               (", 3 +", False)]
    assert task.segments("") == []


@pytest.mark.parametrize("sample, answer", [
    (" 6 - 0 = 6, 6 - 4 = 2, 2 - 8 = -6", "-6"),
    (" 5 + 9 = 14, 14 - 3 = 11, 11 + 8 = 19", "19"),
    (" 1 + 2 = +3", "3"),
    (" 1 + 2 = 3, 3 + 5", "3"),  # cut short: the last "=" still carries 3
    (" 1 + 2 = 03.", "3"),
    (" 1 + 2", None),
    (" 1 + 2 =", None),
    (" 1 + 2 = ,", None),
    ("", None),
    (None, None),
])
def test_extract_answer(task, sample, answer):
    assert task.extract_answer(sample) == answer


def test_normalize_answer():
    assert normalize_answer("+5") == normalize_answer(" 5") == normalize_answer("5") == "5"
    assert normalize_answer("-0") == "0"
    assert normalize_answer("5.0") is None
    assert normalize_answer("\u0665") is None


# --- the paper's files -------------------------------------------------------------------------
@needs_shared_data
def test_reference_loads(reference):
    assert len(reference.demonstrations()) == 50
    assert len(reference.validation_examples()) == 200
    assert len(reference.train_examples()) == 800  # the 1000 'hw' items minus valid
    train = {ex.query for ex in reference.train_examples()}
    assert not train & {ex.query for ex in reference.validation_examples()}
    splits = {split.name: split for split in reference.eval_splits()}
    assert [len(s.examples) for s in splits.values()] == [500, 500, 500]
    assert [s.in_distribution for s in splits.values()] == [True, True, False]
    first = reference.demonstrations()[0]
    assert first.query == "6 - 0 - 4 - 8" and first.answer == "-6"
    assert first.rationale == " 6 - 0 = 6, 6 - 4 = 2, 2 - 8 = -6"  # tool outputs rebuilt
    for demo in reference.demonstrations():
        assert "".join(text for text, _ in reference.segments(demo.rationale)) == demo.rationale
        assert reference.extract_answer(demo.rationale) == demo.answer


@needs_shared_data
def test_reference_overlap_is_reported_not_removed(reference):
    report = reference.overlap_report()
    # paper.md section 5, defect 5: 85 and 50 shared with 'hw'; also 15 and 6 with the demos
    assert report["test_3op/train"] == 85 and report["test_3op/demos"] == 15
    assert report["test_4op/train"] == 50 and report["test_4op/demos"] == 6
    assert report["test_3op"] == 100 and report["test_4op"] == 56 and report["test_5op"] == 0
    assert report["test_3op/repeats"] == 26 and report["test_4op/repeats"] == 1
    assert all(report[f"{split}/valid"] == 0 for split in ("test_3op", "test_4op", "test_5op"))


@needs_shared_data
def test_reference_valid_depends_on_seed(reference):
    other = ArithmeticTask(Config(source="reference", data_seed=1), data_dir=str(SHARED_DATA))
    assert other.validation_examples() != reference.validation_examples()
    assert other.eval_splits() == reference.eval_splits()


def test_reference_missing_data():
    with pytest.raises(FileNotFoundError, match="data_dir=None"):
        ArithmeticTask(Config(source="reference"))
    with pytest.raises(FileNotFoundError, match=r"arithmetic_ref.*data_dir='/nonexistent'"):
        ArithmeticTask(Config(source="reference"), data_dir="/nonexistent")


@needs_shared_data
@pytest.mark.parametrize("corrupt, message", [
    (lambda items: items[:3] + [{"str_query": "Question: 1 + 2 = ? Answer:"}] + items[3:],
     r"1digit_3_op\+-_test\.json item 3: missing key num_sol"),
    (lambda items: items[:7] + [{"str_query": "Question: 1 + 2 = ? Answer:", "num_sol": 4}],
     r"1digit_3_op\+-_test\.json item 7: num_sol 4"),
    (lambda items: items[:2] + [{"str_query": "1 + 2", "num_sol": 3}],
     r"1digit_3_op\+-_test\.json item 2: str_query"),
    (lambda items: items[:5] + ["oops"], r"1digit_3_op\+-_test\.json item 5: not a JSON object"),
])
def test_reference_corrupt_item(tmp_path, corrupt, message):
    data_dir = tmp_path / "data"
    shutil.copytree(SHARED_DATA / REFERENCE_DIR, data_dir / REFERENCE_DIR)
    path = data_dir / REFERENCE_DIR / "1digit_3_op+-_test.json"
    items = json.loads(path.read_text())
    path.chmod(0o644)
    path.write_text(json.dumps(corrupt(items)))
    with pytest.raises(ValueError, match=message):
        ArithmeticTask(Config(source="reference"), data_dir=str(data_dir))


@needs_shared_data
def test_reference_bad_json_and_rationale(tmp_path):
    data_dir = tmp_path / "data"
    shutil.copytree(SHARED_DATA / REFERENCE_DIR, data_dir / REFERENCE_DIR)
    demos_path = data_dir / REFERENCE_DIR / "1digit_34_op+-_train_50.json"
    demos_path.chmod(0o644)
    items = json.loads(demos_path.read_text())
    items[4]["str_rationale"] = "5 - 9 =, 4 - 3 ="
    demos_path.write_text(json.dumps(items))
    with pytest.raises(ValueError, match=r"train_50\.json item 4: str_rationale"):
        ArithmeticTask(Config(source="reference"), data_dir=str(data_dir))
    demos_path.write_text("[{")
    with pytest.raises(ValueError, match=r"train_50\.json is not valid JSON"):
        ArithmeticTask(Config(source="reference"), data_dir=str(data_dir))
