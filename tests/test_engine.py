"""The rollout engine's fast paths against slow, obviously-correct computations (fp32, tiny model)."""
import pytest
import torch

from methods.engine.engine import Engine
from methods.engine.rollout import TokenRules, Trajectories
from tasks.arithmetic import ArithmeticTask, Config
from tasks.continuation import ContinuationTask
from tasks.infilling import InfillingTask
from tasks.subj import SubjTask


@pytest.fixture
def setup(tiny_policy):
    task = ArithmeticTask(Config(n_train=20, n_valid=5, n_test=5, max_actions=12), None)
    engine = Engine(tiny_policy, task, batch_size=8)
    with torch.no_grad():  # a random LoRA update, so that policy and base differ
        for p in tiny_policy.trainable_parameters():
            p.add_(0.05 * torch.randn_like(p))
    return engine, task


def tool_trajectories(engine, task):
    """Sampled rows plus demonstrations, so that tool tokens certainly occur."""
    examples = task.train_examples()[:3] + task.demonstrations()[:3]
    sampled = engine.sample(examples[:3], [1.5] * 3, torch.Generator().manual_seed(0))
    demos = engine.demonstrations(examples[3:])
    demos.example_idx = [3, 4, 5]
    return Trajectories.concat([sampled, demos]), examples


def slow_log_reward(engine, ex, tokens, end, scored=None):
    """log p(s, Y | reward prompt) by one separate forward pass for one state; `scored` (one bool
    per sample token) leaves the unscored tokens out of the sum, in context all the same."""
    prompt, y = engine.reward_prompt_ids(ex), engine.observation_ids(ex)
    ids = torch.tensor([prompt + tokens[:end] + y])
    with engine.policy.base():
        logp = engine.policy.model(input_ids=ids).logits[0].float().log_softmax(-1)
    targets = ids[0, len(prompt):]
    per_token = logp[len(prompt) - 1:-1].gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    if scored is not None:
        per_token = per_token * torch.tensor(list(scored[:end]) + [True] * len(y), dtype=per_token.dtype)
    return per_token.sum().item()


@pytest.mark.parametrize("tool_outputs,batch_size", [(False, 8), (True, 8), (True, 2)])
def test_per_prefix_reward_matches_one_pass_per_prefix(setup, tool_outputs, batch_size):
    """batch_size 2: the rows go in chunks sorted by length and come back in their own order."""
    engine, task = setup
    engine.batch_size = batch_size
    task.config.reward_tool_outputs = tool_outputs  # the paper's reward scores the calculator's outputs too
    traj, examples = tool_trajectories(engine, task)
    assert not all(all(a) for a in traj.is_action), "the toy needs tool tokens"
    fast = engine.log_reward(traj, examples, per_prefix=True)
    final = engine.log_reward(traj, examples, per_prefix=False)
    worst = 0.0
    for b, ends in enumerate(traj.state_ends()):
        ex = examples[traj.example_idx[b]]
        scored = None if task.reward_tool_outputs else traj.is_action[b]
        for k, end in enumerate(ends):
            worst = max(worst, abs(fast[b, k].item() - slow_log_reward(engine, ex, traj.tokens[b], end, scored)))
        assert final[b].item() == pytest.approx(fast[b, len(ends) - 1].item(), abs=1e-4)
    assert worst <= 1e-4


def test_a_reward_without_tool_outputs_scores_only_actions_and_y(tiny_policy):
    task = ArithmeticTask(Config(n_train=20, n_valid=5, n_test=5, max_actions=12, reward_tool_outputs=False), None)
    engine = Engine(tiny_policy, task, batch_size=8)
    traj, examples = tool_trajectories(engine, task)
    fast = engine.log_reward(traj, examples, per_prefix=True)
    with_tools = Engine(tiny_policy, ArithmeticTask(Config(n_train=20, n_valid=5, n_test=5, max_actions=12,
                                                           reward_tool_outputs=True), None), 8)
    assert (fast - with_tools.log_reward(traj, examples, per_prefix=True)).abs().max() > 0.1
    for b, ends in enumerate(traj.state_ends()):
        ex = examples[traj.example_idx[b]]
        for k, end in enumerate(ends):
            slow = slow_log_reward(engine, ex, traj.tokens[b], end, traj.is_action[b])
            assert fast[b, k].item() == pytest.approx(slow, abs=1e-4)


@pytest.mark.parametrize("max_padding", [1.0, 0.0])
def test_teacher_forced_scores_match_step_by_step_scoring(setup, monkeypatch, max_padding):
    """max_padding 0: every row length is a chunk of its own, and the rows come back in order."""
    engine, task = setup
    traj, _ = tool_trajectories(engine, task)
    monkeypatch.setattr("methods.engine.engine.MAX_PADDING", max_padding)
    scores = engine.score(traj, hidden=True)
    monkeypatch.setattr("methods.engine.engine.MAX_PADDING", 1.0)
    whole = engine.score(traj, hidden=True)  # one padded batch
    assert torch.equal(scores.state_mask, whole.state_mask)
    states = whole.state_mask  # hidden states past a row's last state are never read
    torch.testing.assert_close(scores.state_hidden[states], whole.state_hidden[states], atol=1e-5, rtol=0)
    torch.testing.assert_close(scores.prompt_hidden, whole.prompt_hidden, atol=1e-5, rtol=0)
    rules = engine.rules
    for b in range(len(traj)):
        prompt, tokens = traj.prompt_ids[b], traj.tokens[b]
        actions = [(i, t) for i, (t, a) in enumerate(zip(tokens, traj.is_action[b])) if a]
        for k, (i, tok) in enumerate(actions):  # log q(a_{k+1} | s_k), context = prompt + tokens before it
            with torch.no_grad():
                logits = engine.policy.model(input_ids=torch.tensor([prompt + tokens[:i]])).logits[0, -1]
            logp = rules.logprobs(logits, torch.tensor(k))
            assert scores.action_logp[b, k].item() == pytest.approx(logp[tok].item(), abs=1e-4)
            assert scores.term_logp[b, k].item() == pytest.approx(rules.termination_logprob(logp).item(), abs=1e-4)
        assert int(scores.state_mask[b].sum()) == len(actions) + 1
        assert (scores.action_logp[b, len(actions):] == 0).all() and (scores.term_logp[b, len(actions) + 1:] == 0).all()


def test_tool_tokens_are_environment_not_actions(setup):
    engine, task = setup
    demo = engine.demonstrations(task.demonstrations()[:1])
    text = engine.texts(demo)[0]
    assert text == task.demonstrations()[0].rationale
    tool_text = engine.tokenizer.decode([t for t, a in zip(demo.tokens[0], demo.is_action[0]) if not a])
    pieces = [t for t, is_tool in task.segments(text) if is_tool]
    assert tool_text == "".join(pieces)


def test_a_newline_ends_an_arithmetic_sample(setup):
    """stop_on_newline: a newline token (with only allowed characters beside it) is a terminator,
    although the newline is not among the task's allowed characters."""
    engine, task = setup
    assert task.stop_on_newline and "\n" not in task.allowed_chars
    tokenizer, rules = engine.tokenizer, engine.rules
    newline = tokenizer("\n", add_special_tokens=False).input_ids
    assert len(newline) == 1 and rules.terminators[newline[0]] and rules.allowed[newline[0]]
    assert rules.terminators[tokenizer.eos_token_id]  # EOS still ends a sample
    for text in ("Hello\n", "x\n"):
        ids = tokenizer(text, add_special_tokens=False).input_ids
        if len(ids) == 1:  # a token with a disallowed character stays banned
            assert not rules.allowed[ids[0]]


def test_sampling_respects_the_tasks_action_space(setup):
    engine, task = setup
    traj = engine.sample(task.train_examples()[:6], [2.0] * 6, torch.Generator().manual_seed(1))
    for tokens, acts, n in zip(traj.tokens, traj.is_action, traj.n_actions):
        assert n <= task.max_actions
        assert all(engine.rules.allowed[t] for t, a in zip(tokens, acts) if a)
    for text in engine.texts(traj):
        assert set(text) <= set(task.allowed_chars)
    inserted = 0
    for tokens, acts in zip(traj.tokens, traj.is_action):  # the tool answered every call, right after it
        for i, (tok, is_action) in enumerate(zip(tokens, acts)):
            if not is_action:
                continue
            result = task.tool(engine.tokenizer.decode(tokens[:i + 1]))
            if result is not None and i + 1 < len(tokens):
                n = len(engine.tokenizer(result, add_special_tokens=False).input_ids)
                assert not any(acts[i + 1:i + 1 + n])
                assert engine.tokenizer.decode(tokens[i + 1:i + 1 + n]) == result
                inserted += 1


@pytest.mark.parametrize("policy_shots,static", [(0, False), (2, False), (0, True), (2, True)])
def test_cached_batched_sampling_matches_a_slow_greedy_loop(tiny_policy, policy_shots, static):
    """Near-zero temperature makes sampling greedy; the KV-cached batch, whose rows finish and
    leave at different steps, must then give what one full forward pass per token gives. With
    worked examples in the policy prompt, their shared prefix is run once and its cache copied.
    `static`: the preallocated cache, on which finished rows step on padding (model.kv_cache=static)."""
    task = ArithmeticTask(Config(n_train=20, n_valid=5, n_test=5, max_actions=12, policy_shots=policy_shots), None)
    engine = Engine(tiny_policy, task, batch_size=8)
    engine.set_kv_cache("static" if static else "dynamic")
    examples = task.train_examples()[:4]
    if policy_shots:
        from methods.engine.rollout import shared_prefix
        assert len(shared_prefix([engine.prompt_ids(ex) for ex in examples])) > 40
    traj = engine.sample(examples, [1e-4] * 4, torch.Generator().manual_seed(0))
    rules, tok = engine.rules, engine.tokenizer
    for b, ex in enumerate(examples):
        prompt, tokens, acts = engine.prompt_ids(ex), [], []
        while sum(acts) < task.max_actions:
            with torch.no_grad():
                logits = engine.policy.model(input_ids=torch.tensor([prompt + tokens])).logits[0, -1]
            choice = int(rules.logprobs(logits, torch.tensor(sum(acts))).argmax())
            if rules.terminators[choice]:
                break
            tokens.append(choice)
            acts.append(True)
            inserted = task.tool(tok.decode(tokens))
            if inserted:
                ids = tok(inserted, add_special_tokens=False).input_ids
                tokens += ids
                acts += [False] * len(ids)
        assert traj.tokens[b] == tokens and traj.is_action[b] == acts


def test_the_tool_is_asked_only_after_tokens_that_can_trigger_it(setup, monkeypatch):
    """Arithmetic's calculator answers only a text ending in "=": the sampler skips decoding the row
    after other tokens, and samples exactly what asking after every token gives."""
    engine, task = setup
    examples = task.train_examples()[:6]
    calls = []
    real_tool = task.tool
    monkeypatch.setattr(task, "tool", lambda text: calls.append(text) or real_tool(text))
    fast = engine.sample(examples, [1.5] * 6, torch.Generator().manual_seed(3))
    assert calls and all("=" in text for text in calls)  # asked only after a token holding "="
    n_calls, calls[:] = len(calls), []
    engine.rules.tool_fires_after = frozenset(range(len(engine.rules.allowed)))  # ask after every token
    slow = engine.sample(examples, [1.5] * 6, torch.Generator().manual_seed(3))
    assert len(calls) == sum(slow.n_actions) > n_calls
    assert fast.tokens == slow.tokens and fast.is_action == slow.is_action


def test_a_task_without_a_tool_costs_the_sampler_no_decoding(setup, monkeypatch):
    """Infilling, SUBJ and continuation have no tool (`tool_trigger` None): the sampler never
    decodes a row to ask one, where it used to decode every row's whole text after every token."""
    engine, task = setup
    monkeypatch.setattr(task, "tool_trigger", None)
    calls = []
    monkeypatch.setattr(task, "tool", lambda text: calls.append(text))
    engine.rules = TokenRules.for_task(task, engine.tokenizer, len(engine.rules.allowed))
    traj = engine.sample(task.train_examples()[:4], [1.5] * 4, torch.Generator().manual_seed(0))
    assert sum(traj.n_actions) > 4 and calls == []
    assert all(cls.tool_trigger is None for cls in (InfillingTask, SubjTask, ContinuationTask))


@pytest.mark.parametrize("policy_shots,batch_size", [(0, 8), (2, 8), (2, 2)])
def test_base_logprobs_match_one_pass_per_row(tiny_policy, policy_shots, batch_size):
    """With worked examples in the policy prompt, the shared prefix runs once for the batch;
    with batch_size 2, rows go in chunks sorted by length and come back in their own order; a
    repeated row gets its first occurrence's values."""
    task = ArithmeticTask(Config(n_train=20, n_valid=5, n_test=5, max_actions=12, policy_shots=policy_shots), None)
    engine = Engine(tiny_policy, task, batch_size=batch_size)
    traj, _ = tool_trajectories(engine, task)
    traj = Trajectories.concat([traj, traj.select([4, 0])])  # repeated rows are computed once, and copied
    fast = engine.base_logprobs(traj)
    for b in range(len(traj)):
        prompt, tokens = traj.prompt_ids[b], traj.tokens[b]
        with torch.no_grad(), engine.policy.base():
            logp = engine.policy.model(input_ids=torch.tensor([prompt + tokens])).logits[0].float().log_softmax(-1)
        slow = logp[len(prompt) - 1:-1].gather(-1, torch.tensor(tokens).unsqueeze(-1)).squeeze(-1)
        torch.testing.assert_close(fast[b, :len(tokens)], slow, atol=1e-4, rtol=0)
        assert (fast[b, len(tokens):] == 0).all()
