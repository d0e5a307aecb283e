"""Every method trains on the tiny model: its LoRA parameters move and its losses stay finite."""
import math

import pytest
import torch

from methods import METHODS, gfn_tb, method_module
from methods.base import TrainConfig, TrainContext
from methods.engine.engine import Engine
from methods.engine.rollout import Trajectories
from tasks.arithmetic import ArithmeticTask, Config

BUDGET = TrainConfig(steps=2, batch_prompts=2, samples_per_prompt=2, eval_every=0, batch_size=8)


def run(policy, method: str, budget: TrainConfig = BUDGET, **overrides):
    task = ArithmeticTask(Config(n_demos=4, n_train=8, n_valid=4, n_test=4, max_actions=12), None)
    logged = []
    ctx = TrainContext(policy, task, Engine(policy, task, budget.batch_size), budget, seed=0,
                       log_metrics=lambda m, step: logged.append((step, m)), evaluate=lambda step: {})
    module = method_module(method)
    cfg = module.Config(**overrides)
    cfg.warmup_frac = 0.0  # full learning rate from the first step, so that two steps move the weights
    module.train(ctx, cfg)
    return logged


@pytest.mark.parametrize("method,overrides", [
    ("gfn_tb", {"loss": "tb"}), ("gfn_tb", {"loss": "subtb"}), ("gfn_tb", {"loss": "vargrad"}), ("ppo", {}),
])
def test_method_updates_lora_and_stays_finite(tiny_policy, method, overrides):
    assert method in METHODS
    before = [p.detach().clone() for p in tiny_policy.trainable_parameters()]
    logged = run(tiny_policy, method, **overrides)
    assert [step for step, _ in logged] == [0, 1]
    assert all(math.isfinite(m["loss"]) for _, m in logged)
    moved = sum((p.detach() - b).abs().sum().item() for p, b in zip(tiny_policy.trainable_parameters(), before))
    assert moved > 0
    assert not tiny_policy.model.training, "rollouts and scoring must run without dropout"


def test_tb_learns_its_log_z_head(tiny_policy):
    """log Z(x) starts at logz_init (a zero weight) and moves with its own learning rate."""
    logged = run(tiny_policy, "gfn_tb", loss="tb", logz_init=0.0)
    assert logged[0][1]["log_z"] == 0.0 and logged[1][1]["log_z"] != 0.0


def test_gfn_trains_on_replayed_trajectories(tiny_policy):
    """With replay forced, every query that has buffer items is trained on replayed rows."""
    logged = run(tiny_policy, "gfn_tb", loss="subtb", p_replay=1.0)
    assert all(m["buffer_size"] >= 1 and math.isfinite(m["loss"]) for _, m in logged)


def test_nan_loss_stops_the_run_with_a_clear_error(tiny_policy):
    with pytest.raises(FloatingPointError, match="non-finite loss"):
        run(tiny_policy, "gfn_tb", loss="tb", logz_init=float("nan"))


@pytest.mark.parametrize("method,overrides", [("gfn_tb", {"loss": "subtb"}), ("gfn_tb", {"loss": "vargrad"}), ("ppo", {})])
def test_gradient_accumulation_over_micro_batches(tiny_policy, method, overrides):
    """Rows of different lengths split over several micro-batches (batch_size < rows per step)."""
    budget = TrainConfig(steps=1, batch_prompts=3, samples_per_prompt=2, eval_every=0, batch_size=2)
    logged = run(tiny_policy, method, budget, **overrides)
    assert math.isfinite(logged[0][1]["loss"])


def _sampled_scores(policy, task, n_rows=6):
    """Sampled rows (the random tiny model often stops early: newline tokens end a sample) and the
    demonstrations of as many queries (13 to 22 actions), scored with hidden states, and log R."""
    engine = Engine(policy, task, 8)
    sampled = engine.sample(task.train_examples()[:n_rows], [1.0] * n_rows, torch.Generator().manual_seed(0))
    demos = engine.demonstrations(task.demonstrations()[:n_rows])
    demos.example_idx = [n_rows + i for i in range(len(demos))]
    traj = Trajectories.concat([sampled, demos])
    examples = task.train_examples()[:n_rows] + task.demonstrations()[:n_rows]
    log_r = engine.log_reward(traj, examples, per_prefix=True)
    return traj, engine.score(traj, hidden=True), log_r


@pytest.mark.parametrize("loss", gfn_tb.LOSSES)
def test_every_action_of_a_sampled_batch_gets_gradient(tiny_policy, loss):
    """The first `min_actions` actions included (the reference's SubTB left them without any)."""
    task = ArithmeticTask(Config(n_demos=6, n_train=8, n_valid=4, n_test=4, min_actions=5, max_actions=24), None)
    traj, scores, log_r = _sampled_scores(tiny_policy, task)
    action_logp = scores.action_logp
    action_logp.retain_grad()
    n = scores.state_mask.sum(-1) - 1
    final_r = log_r.gather(1, n.unsqueeze(1)).squeeze(1)
    flow_head = torch.nn.Linear(tiny_policy.hidden_size, 1)
    torch.nn.init.normal_(flow_head.weight, std=0.1)
    if loss == "tb":
        value = gfn_tb.tb_loss(flow_head(scores.prompt_hidden.float()).squeeze(-1), scores.logpf, final_r)
    elif loss == "vargrad":
        value = gfn_tb.vargrad_loss(scores.logpf, final_r, torch.arange(len(traj)) // 3)
    else:
        log_flow = flow_head(scores.state_hidden.float()).squeeze(-1)
        value = gfn_tb.subtb_loss(action_logp, scores.term_logp, log_r, scores.state_mask, 1.0, log_flow)
    value.backward()
    actions = torch.arange(action_logp.shape[1]).unsqueeze(0) < n.unsqueeze(1)
    assert max(traj.n_actions) > 2 * task.min_actions
    # Relative to the batch's typical gradient: a telescoped sum that cancels leaves rounding noise.
    grad = action_logp.grad[actions].abs()
    assert (grad > 1e-4 * grad.mean()).all(), action_logp.grad


def test_a_forced_stop_costs_no_log_prob(tiny_policy):
    """A row cut at max_actions never chose ⊤: its log P_F is the sum of its actions alone."""
    task = ArithmeticTask(Config(n_demos=6, n_train=8, n_valid=4, n_test=4, min_actions=2, max_actions=24), None)
    engine = Engine(tiny_policy, task, 8)
    traj = engine.demonstrations(task.demonstrations()[:6])
    traj.terminated = [False, True, False, True, False, True]  # the first, third and fifth were cut
    scores = engine.score(traj)
    for i in range(len(traj)):
        last = scores.term_logp[i, traj.n_actions[i]].item()
        if traj.terminated[i]:
            assert last < 0.0  # a chosen ⊤ is paid for
            assert scores.logpf[i].item() == pytest.approx(scores.action_logp[i].sum().item() + last)
        else:
            assert last == 0.0
            assert scores.logpf[i].item() == pytest.approx(scores.action_logp[i].sum().item())


def _step_gradients(monkeypatch, micro_batch: int, method: str, overrides: dict) -> list[torch.Tensor]:
    """The gradients of one training step, just before clipping."""
    from methods.engine.models import ModelConfig, load_policy

    policy = load_policy(ModelConfig(preset="tiny"), seed=0)
    # Only demonstrations as queries, half of them replayed: rows of several lengths in one batch.
    task = ArithmeticTask(Config(n_demos=4, n_train=0, n_valid=4, n_test=4, max_actions=12), None)
    budget = TrainConfig(steps=1, batch_prompts=3, samples_per_prompt=2, eval_every=0, batch_size=micro_batch)
    seen = []
    real_clip = torch.nn.utils.clip_grad_norm_

    def record(params, max_norm):
        params = list(params)
        seen.append([p.grad.detach().clone() for p in params if p.grad is not None])
        return real_clip(params, max_norm)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", record)
    # The engine samples in chunks of its own size, the same in both runs: only scoring is split.
    engine = Engine(policy, task, 8)
    ctx_lengths, real_score = [], engine.score

    def score(traj, **kw):
        ctx_lengths.extend(traj.n_actions)
        return real_score(traj, **kw)

    monkeypatch.setattr(engine, "score", score)
    ctx = TrainContext(policy, task, engine, budget, seed=0,
                       log_metrics=lambda m, step: None, evaluate=lambda step: {})
    module = method_module(method)
    module.train(ctx, module.Config(p_replay=0.5, **overrides))
    assert len(set(ctx_lengths)) > 1, "the batch should mix lengths"
    return seen[0]


@pytest.mark.parametrize("method,overrides", [
    ("gfn_tb", {"loss": "subtb", "logz_init": -50.0}), ("gfn_tb", {"loss": "tb", "logz_init": -50.0}),
    ("gfn_tb", {"loss": "vargrad"}),
])
def test_micro_batches_give_the_gradient_of_the_whole_batch(monkeypatch, method, overrides):
    whole = _step_gradients(monkeypatch, 6, method, overrides)
    split = _step_gradients(monkeypatch, 2, method, overrides)  # three micro-batches of one query each
    assert len(whole) == len(split) and any(g.abs().sum() > 0 for g in whole)
    for a, b in zip(whole, split):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_full_replay_trains_on_exactly_the_buffer_items(tiny_policy, monkeypatch):
    """p_replay=1 and every query seeded with its demonstration: no sampling, and every trained
    row is the buffer's item for its query."""
    task = ArithmeticTask(Config(n_demos=4, n_train=0, n_valid=4, n_test=4), None)
    engine = Engine(tiny_policy, task, 8)
    demos = {ex.query: engine.demonstrations([ex]).tokens[0] for ex in task.demonstrations()}
    scored = []
    real_score = engine.score

    def record(traj, **kw):
        scored.extend(zip(traj.prompt_ids, traj.tokens))
        return real_score(traj, **kw)

    def no_sampling(*args, **kw):
        raise AssertionError("p_replay=1 with every query in the buffer must not sample")

    monkeypatch.setattr(engine, "score", record)
    monkeypatch.setattr(engine, "sample", no_sampling)
    budget = TrainConfig(steps=3, batch_prompts=2, samples_per_prompt=2, eval_every=0, batch_size=8)
    ctx = TrainContext(tiny_policy, task, engine, budget, seed=0,
                       log_metrics=lambda m, step: None, evaluate=lambda step: {})
    gfn_tb.train(ctx, gfn_tb.Config(loss="subtb", p_replay=1.0, warmup_frac=0.0))
    assert len(scored) == 3 * 2 * 2
    by_prompt = {tuple(engine.prompt_ids(ex)): demos[ex.query] for ex in task.demonstrations()}
    for prompt, tokens in scored:
        assert tokens == by_prompt[tuple(prompt)]
