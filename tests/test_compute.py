"""The engine's count of forward tokens: every token position a forward pass of the policy's model
computes, padding included, checked against the chunks the engine forms."""
from __future__ import annotations

from methods.engine.engine import Engine
from tasks.arithmetic import ArithmeticTask, Config


def test_scoring_counts_each_chunk_at_its_padded_width(tiny_policy):
    task = ArithmeticTask(Config(n_demos=6, n_train=4, n_valid=2, n_test=2))
    engine = Engine(tiny_policy, task, batch_size=4)
    traj = engine.demonstrations(task.demonstrations())
    lengths = [len(p) + len(t) for p, t in zip(traj.prompt_ids, traj.tokens)]
    chunks, _ = engine.length_chunks(lengths)
    assert len(chunks) > 1  # the count must follow the chunks, not one padded batch
    before = engine.forward_tokens
    engine.score(traj)
    assert engine.forward_tokens - before == sum(len(rows) * max(lengths[i] for i in rows) for rows in chunks)


def test_a_forward_pass_outside_the_engines_methods_counts_too(tiny_policy):
    """Best-of-N scores with the model directly: the count sees it (a hook, not per-method code)."""
    import torch

    task = ArithmeticTask(Config(n_demos=6, n_train=4, n_valid=2, n_test=2))
    engine = Engine(tiny_policy, task)
    with torch.no_grad():
        tiny_policy.model(input_ids=torch.ones(3, 7, dtype=torch.long))
    assert engine.forward_tokens == 21
