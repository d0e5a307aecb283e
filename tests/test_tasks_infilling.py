"""Story infilling: the shipped stories, splits, prompts that never show the 4th sentence, CSV
errors with line numbers, and the evaluation's reference metrics on the tiny model."""
import csv

import pytest
import torch

from methods.engine.engine import Engine
from methods.engine.evaluate import evaluate
from methods.engine.metrics import bleu4, gleu
from methods.engine.rollout import Trajectories
from tasks import task_class
from tasks.data import DataError
from tasks.infilling import COLUMNS, SHIPPED, Config, InfillingTask, read_stories

HEADER = ["storyid", "storytitle", *COLUMNS]


def story(i: int) -> list[str]:
    return [f"id{i}", f"title {i}", f"Ann woke up on day {i}.", "She was hungry.", "She opened the fridge.",
            f"She found {i} eggs.", "She made an omelette."]


def write_csv(path, rows, header=HEADER):
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return str(path)


@pytest.fixture(scope="module")
def task():
    return InfillingTask(Config())


def test_registered_and_shipped_stories_are_many_and_well_formed():
    assert task_class("infilling") is InfillingTask
    with open(SHIPPED, encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) >= 150
    assert list(rows[0]) == HEADER
    for row in rows:
        assert all(row[c].strip() == row[c] and row[c][-1] in ".!?" for c in COLUMNS)
    assert len({row["storyid"] for row in rows}) == len(rows)
    assert (SHIPPED.parent / "README.md").is_file()


def test_splits_follow_file_order_and_share_no_story(task):
    stories = read_stories(SHIPPED)
    cfg = Config()
    test, valid, train = task.eval_splits()[0].examples, task.validation_examples(), task.train_examples()
    assert test == stories[: cfg.n_test]
    assert valid == stories[cfg.n_test: cfg.n_test + cfg.n_valid]
    assert train == stories[cfg.n_test + cfg.n_valid:]
    splits = {"test": test, "valid": valid, "train": train}
    for name, examples in splits.items():
        for other, others in splits.items():
            if name < other:
                assert not {ex.query for ex in examples} & {ex.query for ex in others}, (name, other)
                assert not {ex.answer for ex in examples} & {ex.answer for ex in others}, (name, other)


def test_demonstrations_are_training_stories_with_their_4th_sentence(task):
    demos = task.demonstrations()
    assert [d.query for d in demos] == [ex.query for ex in task.train_examples()]
    assert all(d.rationale == " " + d.answer for d in demos)
    held_out = {ex.query for ex in task.validation_examples() + task.eval_splits()[0].examples}
    assert not held_out & {d.query for d in demos}


def test_prompts_show_beginning_and_ending_but_never_the_middle(tmp_path):
    path = write_csv(tmp_path / "s.csv", [story(i) for i in range(3)])
    task = InfillingTask(Config(path=path, n_test=1, n_valid=1))
    ex = task.train_examples()[0]
    assert task.policy_prompt(ex) == ("Beginning: Ann woke up on day 2. She was hungry. She opened the fridge.\n"
                                      "Ending: She made an omelette.\nMiddle:")
    assert task.reward_prompt(ex) == "Ann woke up on day 2. She was hungry. She opened the fridge."
    assert task.observation(ex) == " She made an omelette."
    assert ex.answer == "She found 2 eggs."
    for split in (task.train_examples(), task.validation_examples(), task.eval_splits()[0].examples):
        for ex in split:
            assert ex.answer not in task.policy_prompt(ex) + task.reward_prompt(ex) + task.observation(ex)


def test_a_repeated_beginning_is_dropped_so_no_story_is_in_two_splits(tmp_path):
    rows = [story(0), story(1), story(0), story(2)]
    rows[2][5] = "A different middle."
    task = InfillingTask(Config(path=write_csv(tmp_path / "s.csv", rows), n_test=1, n_valid=1))
    assert [ex.query.split(".")[0] for ex in task.train_examples()] == ["Ann woke up on day 2"]


@pytest.mark.parametrize("rows, line, message", [
    ([story(0), story(1)[:5]], 3, "5 fields, the header has 7"),
    ([story(0), story(1), story(2)[:3] + [" ", *story(2)[4:]]], 4, "empty sentence2"),
])
def test_malformed_rows_name_file_and_line(tmp_path, rows, line, message):
    path = write_csv(tmp_path / "bad.csv", rows)
    with pytest.raises(DataError, match=f"bad.csv:{line}: {message}"):
        InfillingTask(Config(path=path, n_test=1, n_valid=1))


def test_line_numbers_count_quoted_newlines_and_a_missing_column_is_line_1(tmp_path):
    first = story(0)
    first[6] = "She made an omelette\nand ate it."  # a quoted field over lines 2 and 3
    path = write_csv(tmp_path / "bad.csv", [first, story(1), story(2)[:6]])
    with pytest.raises(DataError, match="bad.csv:5: 6 fields"):
        read_stories(path)
    path = write_csv(tmp_path / "cols.csv", [story(0)[:6]], header=HEADER[:6])
    with pytest.raises(DataError, match="cols.csv:1: header lacks column sentence5"):
        read_stories(path)


def test_an_empty_split_says_which_and_what_to_set(tmp_path):
    path = write_csv(tmp_path / "s.csv", [story(i) for i in range(3)])
    with pytest.raises(DataError, match="the train split is empty; .*lower those or give task.path"):
        InfillingTask(Config(path=path, n_test=2, n_valid=1))
    with pytest.raises(DataError, match="the valid split is empty; set task.n_valid >= 1"):
        InfillingTask(Config(path=path, n_test=1, n_valid=0))
    with pytest.raises(DataError, match="not found"):
        InfillingTask(Config(path=str(tmp_path / "missing.csv")))


# --- evaluation on the tiny model --------------------------------------------------------------
def fixed_samples(engine, texts_per_query):
    """engine.sample replaced: row i of query q is texts_per_query[q][i]; records the call."""
    calls = []

    def sample(examples, temperatures, generator=None):
        calls.append(len(examples))
        per_query = len(texts_per_query[0])
        tokens = [engine.tokenizer(texts_per_query[i // per_query][i % per_query], add_special_tokens=False).input_ids
                  for i in range(len(examples))]
        return Trajectories(list(range(len(examples))), [engine.prompt_ids(ex) for ex in examples], tokens,
                            [[True] * len(t) for t in tokens], [True] * len(tokens), list(temperatures))

    engine.sample = sample
    return calls


def test_evaluation_reports_reference_metrics_over_every_sample(tiny_policy, tmp_path):
    path = write_csv(tmp_path / "s.csv", [story(i) for i in range(4)])
    task = InfillingTask(Config(path=path, n_test=2, n_valid=1))
    engine = Engine(tiny_policy, task, batch_size=8)
    stories = task.eval_splits()[0].examples
    wrong = "He went to the zoo."
    texts = [[" " + stories[0].answer, " " + wrong, " " + stories[0].answer],
             [" " + wrong, " " + wrong, " " + stories[1].answer]]
    calls = fixed_samples(engine, texts)
    result = evaluate(engine, stories, samples=3, temperature=0.9)
    assert calls == [6]  # the configured samples per story, all in one pass
    m = result.metrics
    assert "accuracy" not in m
    assert list(m) == [name for name in task.metrics if name in m]
    # Story 0: two exact copies (1.0) and one wrong sample; story 1: one exact copy.
    wrong_bleu = [bleu4(wrong, s.answer) for s in stories]
    assert m["bleu4"] == pytest.approx(((2 + wrong_bleu[0]) / 3 + (2 * wrong_bleu[1] + 1) / 3) / 2)
    wrong_gleu = [gleu(wrong, s.answer) for s in stories]
    assert m["gleu"] == pytest.approx(((2 + wrong_gleu[0]) / 3 + (2 * wrong_gleu[1] + 1) / 3) / 2)
    if "embedding_similarity" in m:  # the MiniLM wheel is installed
        assert 0.0 < m["embedding_similarity"] < 1.0
        identical = fixed_samples(engine, [[" " + s.answer] * 2 for s in stories])
        assert evaluate(engine, stories, samples=2, temperature=0.9).metrics["embedding_similarity"] == \
            pytest.approx(1.0, abs=1e-5)
        assert identical == [4]


def test_sampled_middles_obey_the_length_rules(tiny_policy, tmp_path):
    path = write_csv(tmp_path / "s.csv", [story(i) for i in range(3)])
    task = InfillingTask(Config(path=path, n_test=1, n_valid=1, min_actions=2, max_actions=6))
    engine = Engine(tiny_policy, task, batch_size=8)
    examples = task.train_examples() * 6
    traj = engine.sample(examples, [1.0] * 6, torch.Generator().manual_seed(0))
    assert all(2 <= n <= 6 for n in traj.n_actions)
    assert all(n == 6 for n, done in zip(traj.n_actions, traj.terminated) if not done)
    assert all("\n" not in text for text in engine.texts(traj))
    reward = engine.log_reward(traj, examples, per_prefix=False)
    assert torch.isfinite(reward).all() and (reward < 0).all()
