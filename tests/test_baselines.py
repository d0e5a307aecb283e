"""The baselines on the tiny model: SFT's targets and learning, k-shot prompts, best-of-N's selection."""
import dataclasses
import math
import re
from pathlib import Path

import mlflow
import pytest
import torch

from bench.sweep_plan import plan_sweep
from methods import METHODS, best_of_n, prompting, sft
from methods.base import TrainConfig, TrainContext
from methods.engine.engine import Engine
from methods.engine.evaluate import evaluate, method_engine
from methods.engine.models import ModelError, Policy
from tasks.arithmetic import ArithmeticTask, Config

BUDGET = TrainConfig(steps=2, batch_prompts=2, samples_per_prompt=2, eval_every=0, batch_size=8)
SMALL = dict(n_demos=4, n_train=8, n_valid=4, n_test=4, max_actions=12)


def context(policy, task, budget=BUDGET):
    logged = []
    ctx = TrainContext(policy, task, Engine(policy, task, budget.batch_size), budget, seed=0,
                       log_metrics=lambda m, step: logged.append(m), evaluate=lambda step: {})
    return ctx, logged


def one_demo_task():
    """A single demonstration, so that every SFT batch is the same batch (of one)."""
    return ArithmeticTask(Config(n_demos=1, n_train=2, n_valid=2, n_test=2, reward_shots=1), None)


def snapshot(policy):
    return [p.detach().clone() for p in policy.trainable_parameters()]


def moved(policy, before):
    return sum((p.detach() - b).abs().sum().item() for p, b in zip(policy.trainable_parameters(), before))


# --- SFT ---------------------------------------------------------------------------------------

def test_sft_trains_on_the_tiny_model(tiny_policy):
    ctx, logged = context(tiny_policy, ArithmeticTask(Config(**SMALL), None))
    before = snapshot(tiny_policy)
    sft.train(ctx, sft.Config(warmup_frac=0.0))
    assert len(logged) == 2 and all(math.isfinite(m["loss"]) and m["tokens"] > 0 for m in logged)
    assert moved(tiny_policy, before) > 0


def test_sft_loss_decreases_on_a_fixed_batch(tiny_policy):
    ctx, logged = context(tiny_policy, one_demo_task(), dataclasses.replace(BUDGET, steps=5))
    sft.train(ctx, sft.Config(lr=1e-2, warmup_frac=0.0, eval_every_epochs=0))
    losses = [m["loss"] for m in logged]
    assert all(later < earlier for earlier, later in zip(losses, losses[1:])), losses


def test_sft_targets_are_the_actions_and_the_stop_never_tool_tokens(tiny_policy):
    """The logged loss equals a hand computation: one forward pass per target, tool tokens skipped."""
    task = one_demo_task()
    ctx, logged = context(tiny_policy, task, dataclasses.replace(BUDGET, steps=1))
    sft.train(ctx, sft.Config(lr=0.0))
    engine, demo = ctx.engine, task.demonstrations()[0]
    prompt = engine.prompt_ids(demo)
    tokens, targets = [], []  # targets: (context length, token id or None for the stop)
    for text, is_tool in task.segments(demo.rationale):
        ids = engine.tokenizer(text, add_special_tokens=False).input_ids
        if not is_tool:
            targets += [(len(tokens) + i, tok) for i, tok in enumerate(ids)]
        tokens += ids
    assert len(targets) < len(tokens), "the demonstration needs calculator outputs"
    targets.append((len(tokens), None))

    total = 0.0
    with torch.no_grad():
        for k, (at, tok) in enumerate(targets):
            logits = tiny_policy.model(input_ids=torch.tensor([prompt + tokens[:at]])).logits[0, -1]
            logp = engine.rules.logprobs(logits, torch.tensor(k))
            total += (engine.rules.termination_logprob(logp) if tok is None else logp[tok]).item()
    assert logged[0]["tokens"] == len(targets)  # the batch is capped by the one demonstration
    assert logged[0]["loss"] == pytest.approx(-total / len(targets), abs=1e-4)


def test_sft_budget_is_epochs_over_the_demonstrations_each_seen_once_per_epoch(tiny_policy):
    """2 epochs over 4 demonstrations, 2 per step: 4 optimizer steps, each epoch a new shuffle,
    and the warm-up sized on those 4 steps (not on train.steps, here only a cap)."""
    task = ArithmeticTask(Config(**SMALL), None)
    queries = sorted(ex.query for ex in task.demonstrations())
    assert len(set(queries)) == 4
    ctx, logged = context(tiny_policy, task, dataclasses.replace(BUDGET, steps=100))
    seen, demonstrations = [], ctx.engine.demonstrations
    ctx.engine.demonstrations = lambda examples: seen.append([ex.query for ex in examples]) or demonstrations(examples)
    cfg = sft.Config(lr=1e-3, epochs=2, batch_size=2, eval_every_epochs=0, warmup_frac=0.5)
    sft.train(ctx, cfg)
    assert len(logged) == 4 and [len(batch) for batch in seen] == [2, 2, 2, 2]
    assert sorted(seen[0] + seen[1]) == queries == sorted(seen[2] + seen[3])
    assert seen[0] + seen[1] != seen[2] + seen[3]  # a new order in the second epoch
    assert logged[0]["lr"] == pytest.approx(cfg.lr)  # warm-up of 0.5 * 4 = 2 steps: full rate after the first
    assert [m["epoch"] for m in logged] == [0.5, 1.0, 1.5, 2.0]


def test_sft_steps_are_capped_by_train_steps_and_the_batch_by_the_demonstrations(tiny_policy):
    task = ArithmeticTask(Config(**SMALL), None)
    ctx, logged = context(tiny_policy, task, dataclasses.replace(BUDGET, steps=3))
    sft.train(ctx, sft.Config(epochs=20, batch_size=64, eval_every_epochs=0))
    assert len(logged) == 3 and [m["epoch"] for m in logged] == [1.0, 2.0, 3.0]  # 4 demonstrations a step
    assert sft.optimizer_steps(sft.Config(epochs=2.5, batch_size=8), n_demos=50, cap=1000) == 16  # ceil(125 / 8)


@pytest.mark.parametrize("metric,values,best", [
    ("auto", [0.75, 0.5, 0.25, 0.5], 0),  # arithmetic reports accuracy: higher is better
    ("forward_tokens", [3.0, 2.0, 1.0, 2.0], 2),  # lower is better
])
def test_sft_returns_the_adapter_of_its_best_validation(tiny_policy, metric, values, best):
    task = ArithmeticTask(Config(**SMALL), None)
    ctx, logged = context(tiny_policy, task, dataclasses.replace(BUDGET, steps=100))
    scripted, evaluated = iter(values), []

    def evaluate(step):
        evaluated.append((step, snapshot(tiny_policy)))
        value = next(scripted)
        return {"valid/accuracy": value if metric == "auto" else 0.0, "valid/forward_tokens": value}

    ctx.evaluate = evaluate
    # 2 steps an epoch, 8 steps: evaluations after epochs 1, 2, 3 and at the end.
    sft.train(ctx, sft.Config(lr=1e-2, epochs=4, batch_size=2, eval_every_epochs=1, warmup_frac=0.0,
                              select_metric=metric))
    assert [step for step, _ in evaluated] == [2, 4, 6, 8]
    best_step, best_weights = evaluated[best]
    assert moved(tiny_policy, evaluated[-1][1]) > 0  # training moved the weights after the best
    assert moved(tiny_policy, best_weights) == 0
    assert (logged[-1]["best_step"], logged[-1]["best_valid"]) == (best_step, values[best])
    assert "best_step" not in logged[0]


def test_sft_without_evaluation_keeps_the_last_adapter_and_evaluates_nothing(tiny_policy):
    ctx, logged = context(tiny_policy, ArithmeticTask(Config(**SMALL), None), dataclasses.replace(BUDGET, steps=100))
    ctx.evaluate = lambda step: pytest.fail("evaluated with eval_every_epochs=0")
    sft.train(ctx, sft.Config(epochs=2, batch_size=2, eval_every_epochs=0))
    assert logged[-1]["best_step"] == 4 and "best_valid" not in logged[-1]


@pytest.mark.parametrize("overrides,message", [
    ({"epochs": 0.0}, "method.epochs must be positive"),
    ({"batch_size": 0}, "method.batch_size must be at least 1"),
    ({"eval_every_epochs": -1.0}, "method.eval_every_epochs must be 0"),
    ({"select_metric": "bleu4"}, "method.select_metric='bleu4' is not a metric of task arithmetic"),
    ({"select_metric": "sample_length"}, "method.select_metric='sample_length' has no better direction"),
])
def test_sft_refuses_bad_settings_in_one_line(overrides, message):
    task = ArithmeticTask(Config(**SMALL), None)
    with pytest.raises(ValueError, match=re.escape(message)) as err:
        sft.check(sft.Config(**overrides), task)
    assert "\n" not in str(err.value)


def test_sft_needs_its_metric_in_the_validation_results(tiny_policy):
    ctx, _ = context(tiny_policy, ArithmeticTask(Config(**SMALL), None), dataclasses.replace(BUDGET, steps=100))
    with pytest.raises(ValueError, match=r"validation reported no valid/accuracy"):
        sft.train(ctx, sft.Config(epochs=2, batch_size=2, eval_every_epochs=1))


def test_sft_needs_demonstrations(tiny_policy):
    task = ArithmeticTask(Config(n_demos=0, n_train=2, n_valid=2, n_test=2, reward_shots=0), None)
    ctx, _ = context(tiny_policy, task)
    with pytest.raises(ValueError, match="no demonstrations"):
        sft.train(ctx, sft.Config())


# --- prompting -----------------------------------------------------------------------------------

def test_k_shot_prompt_is_the_tasks_own_policy_shots_prompt():
    task = ArithmeticTask(Config(**SMALL), None)
    reference = ArithmeticTask(Config(**SMALL, policy_shots=3), None)
    ex = task.validation_examples()[0]
    assert prompting.few_shot(task, 3).policy_prompt(ex) == reference.policy_prompt(ex)
    assert prompting.few_shot(task, 0) is task
    with pytest.raises(ValueError, match="set only one"):
        prompting.few_shot(reference, 2)
    with pytest.raises(ValueError, match="only 4 demonstrations"):
        prompting.few_shot(task, 5)


def test_prompting_changes_only_the_evaluated_prompts(tiny_policy):
    task = ArithmeticTask(Config(**SMALL), None)
    cfg = prompting.Config(shots=2)
    ctx, logged = context(tiny_policy, task)
    ctx.engine = method_engine(tiny_policy, task, BUDGET.batch_size, prompting, cfg)
    before = snapshot(tiny_policy)
    prompting.train(ctx, cfg)
    assert logged == [] and moved(tiny_policy, before) == 0
    ex, demo = task.validation_examples()[0], task.demonstrations()[0]
    shown = ctx.engine.task.policy_prompt(ex)
    # The demonstration ends where the policy's own sample would: ". The answer is 5." is text its
    # token rules forbid (the reward prompt keeps it).
    assert shown.startswith(f"Question: {demo.query} = ? Answer:{demo.rationale}\nQuestion:")
    assert "The answer is" in task.reward_prompt(ex)
    assert shown.endswith(task.policy_prompt(ex)) and shown.count("Question:") == 3
    assert ctx.engine.prompt_ids(ex) == ctx.engine.tokenizer(shown).input_ids
    assert ctx.engine.task.reward_prompt(ex) == task.reward_prompt(ex)
    queries = task.validation_examples()[:2]
    result = evaluate(ctx.engine, queries, samples=2, temperature=1.0)
    # A slow recount: the evaluation's draws (its own generator, seed 0) from the k-shot prompts,
    # voted by hand: two samples agree on a parsed answer, or the first wins a tie of two answers;
    # an unparsed one ties with the other, and "no answer" wins that tie.
    repeated = [ex for ex in queries for _ in range(2)]
    traj = ctx.engine.sample(repeated, [1.0] * 4, torch.Generator(device=tiny_policy.device).manual_seed(0))
    texts = ctx.engine.texts(traj)
    assert [row["sample"] for row in result.rows] == texts[::2]
    answers = [ctx.engine.task.extract_answer(text) for text in texts]
    votes = [None if None in answers[2 * q:2 * q + 2] else answers[2 * q] for q in range(2)]
    assert [row["vote"] for row in result.rows] == votes
    assert result.metrics["accuracy"] == sum(v == ex.answer for v, ex in zip(votes, queries)) / 2


def test_evaluation_counts_an_unparsable_sample_as_a_vote_for_no_answer(tiny_policy, monkeypatch):
    """Known votes per query: the gold answer wins only with more votes than "no answer" (None)."""
    task = ArithmeticTask(Config(**SMALL), None)
    engine = Engine(tiny_policy, task, batch_size=8)
    queries = task.validation_examples()[:4]
    gold = [ex.answer for ex in queries]
    wrong = str(int(gold[3]) + 1)
    votes = [[gold[0], None, None],   # "no answer" wins: wrong
             [gold[1], gold[1], None],  # the answer wins: right
             [None, gold[2], None],     # wrong
             [gold[3], None, wrong]]    # a three-way tie: "no answer", wrong
    monkeypatch.setattr(engine, "answers", lambda traj, examples: [a for query in votes for a in query])
    result = evaluate(engine, queries, samples=3, temperature=1.0)
    assert [row["vote"] for row in result.rows] == [None, gold[1], None, None]
    assert result.metrics["accuracy"] == 0.25


# --- best-of-N -----------------------------------------------------------------------------------

@pytest.fixture
def sampled(tiny_policy):
    task = ArithmeticTask(Config(**SMALL), None)
    engine = Engine(tiny_policy, task, batch_size=4)
    examples = [ex for ex in task.validation_examples()[:2] for _ in range(3)]
    traj = engine.sample(examples, [1.5] * len(examples), torch.Generator().manual_seed(0))
    return engine, task, examples, traj


def test_best_of_n_scores_are_log_p_of_the_sample_under_the_reward_prompt(sampled):
    engine, _, examples, traj = sampled
    scores, cost = best_of_n.select(engine, examples, traj)
    prompt = engine.reward_prompt_ids(examples[0])
    with engine.policy.base():
        logp = engine.policy.model(input_ids=torch.tensor([prompt + traj.tokens[0]])).logits[0].float().log_softmax(-1)
    by_hand = logp[len(prompt) - 1:-1].gather(-1, torch.tensor(traj.tokens[0]).unsqueeze(-1)).sum().item()
    assert scores.shape == (len(traj),) and scores[0].item() == pytest.approx(by_hand, abs=1e-4)
    assert cost == [len(engine.reward_prompt_ids(examples[i])) + len(t) for i, t in zip(traj.example_idx, traj.tokens)]


def test_best_of_n_never_reads_the_answer(sampled, monkeypatch):
    engine, task, examples, traj = sampled
    scores, _ = best_of_n.select(engine, examples, traj)
    changed = [dataclasses.replace(ex, answer=str(int(ex.answer) + 1 + i)) for i, ex in enumerate(examples)]
    monkeypatch.setattr(task, "observation", lambda ex: pytest.fail("best-of-N read the observation Y"))
    again, _ = best_of_n.select(engine, changed, traj)
    assert torch.equal(scores, again)


def test_best_of_n_evaluation_keeps_the_top_scored_sample(tiny_policy):
    task = ArithmeticTask(Config(**SMALL), None)
    ctx, logged = context(tiny_policy, task)
    best_of_n.train(ctx, best_of_n.Config())
    assert logged == []
    queries = task.validation_examples()[:2]
    voted = evaluate(ctx.engine, queries, samples=3, temperature=1.5)
    chosen = evaluate(ctx.engine, queries, samples=3, temperature=1.5, select=best_of_n.select)
    # Same seed, same samples: only the choice and its cost differ.
    assert chosen.metrics["loglik_mean"] == voted.metrics["loglik_mean"]
    assert chosen.metrics["forward_tokens"] > voted.metrics["forward_tokens"]
    repeated = [ex for ex in queries for _ in range(3)]
    traj = ctx.engine.sample(repeated, [1.5] * 6, torch.Generator(device=tiny_policy.device).manual_seed(0))
    scores, _ = best_of_n.select(ctx.engine, repeated, traj)
    texts = ctx.engine.texts(traj)
    for q, row in enumerate(chosen.rows):
        assert row["sample"] == texts[3 * q + int(scores[3 * q:3 * q + 3].argmax())]
        assert row["vote"] == task.extract_answer(row["sample"])


def test_best_of_n_can_start_from_a_saved_adapter(tiny_policy, tmp_path):
    with torch.no_grad():
        for p in tiny_policy.trainable_parameters():
            p.add_(0.1)
    tiny_policy.save_adapter(str(tmp_path))
    trained = snapshot(tiny_policy)
    with torch.no_grad():
        for p in tiny_policy.trainable_parameters():
            p.zero_()
    ctx, _ = context(tiny_policy, ArithmeticTask(Config(**SMALL), None))
    best_of_n.train(ctx, best_of_n.Config(policy=str(tmp_path)))
    assert moved(tiny_policy, trained) == 0


def test_methods_arithmetic_sweep_runs_every_method():
    plan = plan_sweep({"sweep": "methods_arithmetic", "scale": "cpu"})
    assert sorted({m.config.method for m in plan.methods}) == sorted(METHODS)
    by_name = {m.name: m for m in plan.methods}
    assert by_name["zero_shot"].config.method_cfg.shots == 0 and by_name["few_shot"].config.method_cfg.shots == 3
    assert all(by_name[m].trials == 1 and not by_name[m].search for m in ("zero_shot", "few_shot", "best_of_n"))


def test_best_of_n_samples_from_the_adapter_a_tracked_run_saved(tmp_path, monkeypatch):
    """`method.policy=<run id>`: the adapter trained by an SFT run is the one best-of-N loads."""
    from bench.config import build_config
    from bench.training import run_trial

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'm.db'}")
    small = {"model": "tiny", "scale": "smoke", "run_dir": str(tmp_path), "system_metrics": "false",
             "task.n_demos": "4", "task.n_train": "8", "task.n_valid": "2", "task.n_test": "2", "task.max_actions": "8"}
    runs = {}
    for method in ("sft", "prompting"):
        run_trial(build_config([(None, {**small, "method": method})]), on_run_started=lambda i, m=method: runs.setdefault(m, i))
    trained = Path(mlflow.artifacts.download_artifacts(run_id=runs["sft"], artifact_path="adapter", dst_path=str(tmp_path / "a")))

    loaded = {}
    monkeypatch.setattr(Policy, "load_adapter_weights", lambda self, path: loaded.setdefault("path", Path(path)))
    run_trial(build_config([(None, {**small, "method": "best_of_n", "method.policy": runs["sft"]})]))
    file = "adapter_model.safetensors"
    assert (loaded["path"] / file).read_bytes() == (trained / file).read_bytes()

    with pytest.raises(ModelError, match="saved no adapter"):  # prompting trains nothing
        run_trial(build_config([(None, {**small, "method": "best_of_n", "method.policy": runs["prompting"]})]))
    with pytest.raises(ModelError, match="neither a folder nor an MLflow run id"):
        run_trial(build_config([(None, {**small, "method": "best_of_n", "method.policy": "nope"})]))


def test_sft_final_evaluation_is_recorded_at_the_steps_sft_ran_not_at_train_steps(tmp_path, monkeypatch):
    """`train.steps` only caps SFT: with 4 demonstrations, batch 4 and 2 epochs it runs 2 steps, so its
    final validation and test metrics belong at step 2 of the learning curve, not at train.steps=20."""
    from bench.config import build_config
    from bench.training import run_trial

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'm.db'}")
    cfg = build_config([(None, {"model": "tiny", "scale": "smoke", "run_dir": str(tmp_path), "system_metrics": "false",
                                "method": "sft", "train.steps": "20", "method.epochs": "2", "method.batch_size": "4",
                                "method.eval_every_epochs": "0", "task.n_demos": "4", "task.n_train": "8",
                                "task.n_valid": "2", "task.n_test": "2", "task.max_actions": "8"})])
    ids = []
    run_trial(cfg, on_run_started=ids.append)
    client = mlflow.MlflowClient()
    assert [m.step for m in client.get_metric_history(ids[0], "train/loss")] == [0, 1]
    for key in ("valid/accuracy", "train_time_s", "total_forward_tokens", "wall_time_s"):
        assert [m.step for m in client.get_metric_history(ids[0], key)] == [2], key
