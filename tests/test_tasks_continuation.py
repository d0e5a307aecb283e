"""Sentence continuation: prompt splits, the "." terminator and banned tokens, the reward
log p(Z "." | X) and the sample likelihood with its ".", and the declared metrics (no accuracy)."""
import pytest
import torch

from methods.engine.engine import Engine
from methods.engine.evaluate import evaluate
from methods.engine.rollout import TokenRules
from tasks import task_class
from tasks.continuation import Config, ContinuationTask
from tasks.data import DataError


def write_prompts(tmp_path, n):
    path = tmp_path / "prompts.txt"
    path.write_text("".join(f"Prompt number {i} is here. \n" for i in range(n)), encoding="utf-8")
    return str(path)


@pytest.fixture
def small(tmp_path):
    return ContinuationTask(Config(path=write_prompts(tmp_path, 12), n_train=6, n_valid=3, n_test=3,
                                   max_actions=8))


def test_splits_are_the_papers_first_1000_prompts_then_50_unseen(shared_data):
    assert task_class("continuation") is ContinuationTask
    task = ContinuationTask(Config(), str(shared_data))
    lines = [line.strip() for line in (shared_data / "openwebtext" / "prompts.txt").read_text().splitlines()]
    train, valid, test = task.train_examples(), task.validation_examples(), task.eval_splits()[0].examples
    assert [ex.query for ex in train] == lines[:950]
    assert [ex.query for ex in valid] == lines[950:1000]
    assert [ex.query for ex in test] == lines[1000:1050]
    assert task.demonstrations() == []
    ex = valid[0]
    assert task.policy_prompt(ex) == task.reward_prompt(ex) == ex.query and task.observation(ex) == "."


def test_too_few_prompts_name_the_empty_split(tmp_path):
    path = write_prompts(tmp_path, 5)
    with pytest.raises(DataError, match="the test split is empty; .*has only 5 prompts"):
        ContinuationTask(Config(path=path, n_train=4, n_valid=1, n_test=2))
    with pytest.raises(DataError, match="the valid split is empty"):
        ContinuationTask(Config(path=path, n_train=5, n_valid=1, n_test=2))
    with pytest.raises(DataError, match="no prompt file: set data_dir="):
        ContinuationTask(Config())


def test_only_the_period_token_ends_a_sentence(small, tiny_policy):
    tokenizer = tiny_policy.tokenizer
    rules = TokenRules.for_task(small, tokenizer, len(tokenizer))
    texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
    assert [texts[i] for i in rules.terminators.nonzero().flatten().tolist()] == ["."]
    assert not rules.allowed[tokenizer.eos_token_id] and not rules.terminators[tokenizer.eos_token_id]

    def allowed(text):
        return bool(rules.allowed[texts.index(text)])  # the token whose text is exactly `text`

    assert allowed(".") and allowed(" the") and allowed(",") and allowed("2") and allowed(" ") and allowed("'s")
    for text in ("\n", '"', " .", "...", "!", "?", "Mr", " Mr", "U"):
        assert not allowed(text), text


class FewLetters(ContinuationTask):
    """Sentences of "a", "b" and spaces: a random model then draws the "." often enough."""

    allowed_chars = " ab"


def test_samples_end_at_the_period_and_reward_it(tmp_path, tiny_policy):
    task = FewLetters(Config(path=write_prompts(tmp_path, 12), n_train=6, n_valid=3, n_test=3, max_actions=8))
    engine = Engine(tiny_policy, task, batch_size=8)
    examples = [ex for ex in task.train_examples()[:2] for _ in range(8)]
    traj = engine.sample(examples, [2.0] * len(examples), torch.Generator().manual_seed(0))
    texts = engine.texts(traj)
    assert any(traj.terminated) and not all(traj.terminated)
    for text, n in zip(texts, traj.n_actions):
        assert 1 <= n <= 8
        assert not set(text) & set('.\n"!?')  # the "." ends the sample and stays out of it
    reward = engine.log_reward(traj, examples, per_prefix=False)
    loglik = engine.base_loglik(traj)
    period = tiny_policy.tokenizer(".", add_special_tokens=False).input_ids
    for b, ex in enumerate(examples):
        prompt = engine.prompt_ids(ex)
        with_period = slow_logp(engine, prompt, traj.tokens[b] + period)
        assert reward[b].item() == pytest.approx(with_period, abs=1e-3)  # log p(Z "." | X)
        # The likelihood of a sentence that ended counts its ".", a cut-off one does not.
        expected = with_period if traj.terminated[b] else slow_logp(engine, prompt, traj.tokens[b])
        assert loglik[b].item() == pytest.approx(expected, abs=1e-3)


def slow_logp(engine, prompt, tokens):
    ids = torch.tensor([prompt + tokens])
    with engine.policy.base():
        logp = engine.policy.model(input_ids=ids).logits[0].float().log_softmax(-1)
    targets = ids[0, len(prompt):]
    return logp[len(prompt) - 1:-1].gather(-1, targets.unsqueeze(-1)).sum().item()


def test_evaluation_reports_only_the_declared_metrics(small, tiny_policy):
    engine = Engine(tiny_policy, small, batch_size=8)
    metrics = evaluate(engine, small.validation_examples(), samples=3, temperature=1.0).metrics
    assert "accuracy" not in metrics
    assert set(metrics) <= set(small.metrics)
    assert {"loglik_mean", "loglik_max", "distinct_2", "sample_length", "forward_tokens"} <= set(metrics)
    assert metrics["loglik_max"] >= metrics["loglik_mean"]
