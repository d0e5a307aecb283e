"""SUBJ: few-shot data and splits, the prompt, label parsing, the per-candidate reward with the
wrong-label shaping against one forward pass per state and label, ties, and data errors."""
import json
import sys
import types

import pytest
import torch

from methods.engine.engine import Engine
from methods.engine.evaluate import evaluate
from methods.engine.reward import preferred_choice
from methods.engine.rollout import Trajectories
from tasks import task_class
from tasks.base import Example
from tasks.data import DataError
from tasks.subj import LABELS, Config, SubjTask


def write_folder(folder, n_train=2, train=8, test=3, bad_line=None):
    """A small SUBJ folder: train.jsonl, test.jsonl and train.{n_train}.jsonl (its first items)."""
    folder.mkdir(exist_ok=True)
    items = {"train": [{"text": f"review number {i} .", "label": i % 2} for i in range(train)],
             "test": [{"text": f"test review {i} .", "label": i % 2} for i in range(test)]}
    items[f"train.{n_train}"] = items["train"][:n_train]
    for name, rows in items.items():
        lines = [json.dumps(row) for row in rows]
        if bad_line and bad_line[0] == name:
            lines.insert(bad_line[1] - 1, bad_line[2])
        (folder / f"{name}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def shared_task(shared_data):
    return SubjTask(Config(), str(shared_data))


def test_registered_and_few_shot_sets_follow_n_train(shared_data):
    assert task_class("subj") is SubjTask
    for n in (10, 20, 50):
        task = SubjTask(Config(n_train=n), str(shared_data))
        lines = (shared_data / "subj" / f"train.{n}.jsonl").read_text().splitlines()
        assert [ex.query for ex in task.train_examples()] == [" ".join(json.loads(x)["text"].split()) for x in lines]
        assert [d.rationale for d in task.demonstrations()] == [" " + ex.answer for ex in task.train_examples()]


def test_validation_is_deterministic_and_disjoint_from_few_shot_and_test(shared_task, shared_data):
    valid = shared_task.validation_examples()
    assert len(valid) == Config().n_valid
    assert valid == SubjTask(Config(), str(shared_data)).validation_examples()
    assert valid != SubjTask(Config(data_seed=1), str(shared_data)).validation_examples()
    queries = {ex.query for ex in valid}
    assert len(queries) == len(valid)
    assert not queries & {ex.query for ex in shared_task.train_examples()}
    assert not queries & {ex.query for ex in shared_task.eval_splits()[0].examples}
    assert len(shared_task.eval_splits()[0].examples) == 2000


def test_prompt_is_the_papers_and_never_depends_on_the_label(shared_task):
    ex = Example(query="a quiet , moving film .", answer="subjective")
    assert shared_task.policy_prompt(ex) == ('Classify this movie review as objective or subjective: '
                                             '"a quiet , moving film ." This review is')
    other = Example(ex.query, "objective")
    assert shared_task.policy_prompt(ex) == shared_task.policy_prompt(other)
    assert shared_task.reward_prompt(ex) == shared_task.reward_prompt(other)
    assert shared_task.observation(ex) == ", so it is subjective."
    assert shared_task.choices(ex) == [", so it is objective.", ", so it is subjective."]


@pytest.mark.parametrize("text, label", [
    (", so it is subjective.", "subjective"),
    (", so it is objective.", "objective"),
    (" sad, so it is objective, so it is subjective.", "subjective"),  # the last statement
    (" subjective", None),  # a rationale alone states nothing
    (", so it is objectives.", None),
    ("", None),
])
def test_label_parsing(shared_task, text, label):
    assert shared_task.extract_answer(text) == label


def test_ties_go_to_subjective():
    scores = torch.tensor([[-1.0, -1.0], [-0.5, -2.0], [-3.0, -1.0]])
    subjective = torch.tensor(LABELS.index("subjective"))
    assert preferred_choice(scores, subjective).tolist() == [1, 0, 1]
    assert preferred_choice(scores, torch.tensor(-1)).tolist() == [0, 0, 1]  # no preference: first


# --- the reward on the tiny model ---------------------------------------------------------------
def slow_logp(engine, prompt, tokens, observation):
    """log p(tokens + observation | prompt) under the base, by one forward pass."""
    y = engine.tokenizer(observation, add_special_tokens=False).input_ids
    ids = torch.tensor([prompt + tokens + y])
    with engine.policy.base():
        logp = engine.policy.model(input_ids=ids).logits[0].float().log_softmax(-1)
    targets = ids[0, len(prompt):]
    return logp[len(prompt) - 1:-1].gather(-1, targets.unsqueeze(-1)).sum().item()


@pytest.fixture
def engine_and_rows(tiny_policy, tmp_path):
    task = SubjTask(Config(n_train=4, n_valid=2), str(write_folder(tmp_path / "subj", n_train=4).parent))
    engine = Engine(tiny_policy, task, batch_size=8)
    examples = [ex for ex in task.train_examples() for _ in range(3)]
    traj = engine.sample(examples, [1.5] * len(examples), torch.Generator().manual_seed(0))
    return task, engine, examples, traj


def test_reward_is_gold_likelihood_minus_50_where_the_base_prefers_the_wrong_label(engine_and_rows):
    task, engine, examples, traj = engine_and_rows
    assert all(1 <= n <= 5 for n in traj.n_actions)
    fast = engine.log_reward(traj, examples, per_prefix=True)
    final = engine.log_reward(traj, examples, per_prefix=False)
    penalized = 0
    for b, ends in enumerate(traj.state_ends()):
        ex = examples[traj.example_idx[b]]
        prompt = engine.reward_prompt_ids(ex)
        for k, end in enumerate(ends):
            by_label = {label: slow_logp(engine, prompt, traj.tokens[b][:end], f", so it is {label}.")
                        for label in LABELS}
            preferred = "subjective" if by_label["subjective"] >= by_label["objective"] else "objective"
            expected = by_label[ex.answer] + (-50.0 if preferred != ex.answer else 0.0)
            penalized += preferred != ex.answer
            assert fast[b, k].item() == pytest.approx(expected, abs=1e-3)
        assert final[b].item() == pytest.approx(fast[b, len(ends) - 1].item(), abs=1e-4)
        assert (fast[b, len(ends):] == 0).all()
    assert penalized, "the toy should contain states after which the wrong label wins"


def test_answer_is_the_label_the_base_prefers_after_the_rationale(engine_and_rows):
    task, engine, examples, traj = engine_and_rows
    answers = engine.answers(traj, examples)
    for b, answer in enumerate(answers):
        prompt = engine.reward_prompt_ids(examples[b])
        by_label = {label: slow_logp(engine, prompt, traj.tokens[b], f", so it is {label}.") for label in LABELS}
        assert answer == max(LABELS, key=lambda label: (by_label[label], label == "subjective"))
    # The answer never reads the gold label: flipping every gold label changes nothing.
    flipped = [Example(ex.query, LABELS[1 - LABELS.index(ex.answer)]) for ex in examples]
    assert engine.answers(traj, flipped) == answers


def test_no_shaping_with_a_zero_penalty(tiny_policy, tmp_path):
    task = SubjTask(Config(n_train=4, n_valid=2, wrong_label_penalty=0.0),
                    str(write_folder(tmp_path / "subj", n_train=4).parent))
    engine = Engine(tiny_policy, task, batch_size=8)
    demos = task.demonstrations()
    traj = engine.demonstrations(demos)
    reward = engine.log_reward(traj, demos, per_prefix=False)
    for b, ex in enumerate(demos):
        assert reward[b].item() == pytest.approx(
            slow_logp(engine, engine.reward_prompt_ids(ex), traj.tokens[b], task.observation(ex)), abs=1e-3)


def test_evaluation_votes_over_rationales_and_reports_accuracy(engine_and_rows):
    task, engine, _, _ = engine_and_rows
    queries = task.train_examples()
    result = evaluate(engine, queries, samples=3, temperature=1.0)
    assert set(result.metrics) <= set(task.metrics) and "accuracy" in result.metrics
    expected = sum(row["vote"] == row["answer"] for row in result.rows) / len(queries)
    assert result.metrics["accuracy"] == pytest.approx(expected)
    assert all(row["vote"] in LABELS for row in result.rows)


# --- data errors ----------------------------------------------------------------------------------
@pytest.mark.parametrize("bad_line, message", [
    (("train.2", 2, "{not json"), r"train\.2\.jsonl:2: invalid JSON"),
    (("test", 3, '{"text": "x", "label": 2}'), r"test\.jsonl:3: label 2 is not one of 0 \(objective\)"),
    (("train", 1, '{"label": 1}'), r"train\.jsonl:1: missing key 'text'"),
    (("test", 2, '{"text": 5, "label": 1}'), r"test\.jsonl:2: 'text' should be str"),
])
def test_malformed_lines_name_file_and_line(tmp_path, bad_line, message):
    write_folder(tmp_path / "subj", bad_line=bad_line)
    with pytest.raises(DataError, match=message):
        SubjTask(Config(n_train=2, n_valid=2), str(tmp_path))


def test_empty_splits_and_missing_few_shot_files_say_what_to_set(tmp_path):
    write_folder(tmp_path / "subj", test=0)
    with pytest.raises(DataError, match=r"subj/test\.jsonl has no items"):  # the file to fill, by name
        SubjTask(Config(n_train=2, n_valid=2), str(tmp_path))
    write_folder(tmp_path / "subj")
    with pytest.raises(DataError, match=r"train\.10\.jsonl not found; .*n_train=10, 20, 50"):
        SubjTask(Config(n_train=10, n_valid=2), str(tmp_path))
    with pytest.raises(DataError, match="lower task.n_valid"):
        SubjTask(Config(n_train=2, n_valid=7), str(tmp_path))


def test_without_data_the_error_names_data_dir_and_the_hub_dataset(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=offline))
    with pytest.raises(DataError, match=r"subj: no data: .*subj not found \(set data_dir=.*SetFit/subj "
                                        r"could not be loaded \(ConnectionError\)"):
        SubjTask(Config(), str(tmp_path))


# --- the shaping penalty is added after the reward temperature ----------------------------------
def expected_tempered(engine, ex, tokens, temperature):
    """The paper's tempered SUBJ reward of a rationale, by one forward pass per label:
    log p_base(Z, Y_gold | X) / T, plus -50 (untempered) where the base prefers the other label."""
    prompt = engine.reward_prompt_ids(ex)
    by_label = {label: slow_logp(engine, prompt, tokens, f", so it is {label}.") for label in LABELS}
    preferred = "subjective" if by_label["subjective"] >= by_label["objective"] else "objective"
    return by_label[ex.answer] / temperature + (-50.0 if preferred != ex.answer else 0.0), preferred != ex.answer


def one_query_run(tiny_policy, tmp_path, monkeypatch, method, **overrides):
    """Train `method` on one SUBJ query at reward temperature 0.5 throughout; returns per step the
    trained rows (query, tokens) and the tempered final log-reward each was trained on."""
    from methods import method_module
    from methods.base import TrainConfig, TrainContext

    task = SubjTask(Config(n_train=1, n_valid=2), str(write_folder(tmp_path / "subj", n_train=1).parent))
    budget = TrainConfig(steps=2, batch_prompts=1, samples_per_prompt=6, eval_every=0, batch_size=8)
    engine = Engine(tiny_policy, task, budget.batch_size)
    module = method_module(method)
    seen = []  # (step's trajectories, their tempered final log-rewards), in call order
    if method == "gfn_tb":
        score = engine.score
        monkeypatch.setattr(engine, "score", lambda traj, **kw: seen.append([traj]) or score(traj, **kw))
        tb_loss = module.tb_loss
        monkeypatch.setattr(module, "tb_loss", lambda z, pf, r: seen[-1].append(r.detach().clone()) or tb_loss(z, pf, r))
    else:  # ppo: with kl_coef=0 the reward of a row's last action is its tempered log R
        sample = engine.sample
        monkeypatch.setattr(engine, "sample", lambda *a, **kw: seen.append([sample(*a, **kw)]) or seen[-1][0])
        gae = module.gae

        def last_rewards(rewards, values, mask, gamma, lam):
            seen[-1].append(rewards.gather(1, (mask.sum(-1, keepdim=True) - 1).long()).squeeze(1).detach().clone())
            return gae(rewards, values, mask, gamma, lam)

        monkeypatch.setattr(module, "gae", last_rewards)
    ctx = TrainContext(tiny_policy, task, engine, budget, seed=0, log_metrics=lambda m, step: None,
                       evaluate=lambda step: {})
    cfg = module.Config(reward_temp_start=0.5, reward_temp_end=0.5, **overrides)
    module.train(ctx, cfg)
    (ex,) = task.train_examples()
    return engine, ex, seen


def check_tempered(engine, ex, traj, tempered):
    assert all(p == engine.prompt_ids(ex) for p in traj.prompt_ids)
    wrong = 0
    for b in range(len(traj)):
        expected, is_wrong = expected_tempered(engine, ex, traj.tokens[b], 0.5)
        assert tempered[b].item() == pytest.approx(expected, abs=2e-3)
        wrong += is_wrong
    return wrong


def test_gfn_adds_the_penalty_after_tempering_to_fresh_and_replayed_rows(tiny_policy, tmp_path, monkeypatch):
    """T=0.5, base prefers the wrong label: base/0.5 - 50, not (base - 50)/0.5 = base/0.5 - 100.
    Step 0 samples (the buffer is empty), step 1 replays what step 0 stored."""
    engine, ex, seen = one_query_run(tiny_policy, tmp_path, monkeypatch, "gfn_tb", loss="tb", p_replay=1.0,
                                     p_tempered=0.0, seed_buffer=False)
    assert len(seen) == 2
    (fresh, fresh_r), (replayed, replayed_r) = seen
    assert {tuple(t) for t in replayed.tokens} <= {tuple(t) for t in fresh.tokens}, "step 1 should replay step 0"
    assert check_tempered(engine, ex, fresh, fresh_r) and check_tempered(engine, ex, replayed, replayed_r), \
        "the toy should contain rationales after which the base prefers the wrong label"


def test_ppo_adds_the_penalty_after_tempering(tiny_policy, tmp_path, monkeypatch):
    engine, ex, seen = one_query_run(tiny_policy, tmp_path, monkeypatch, "ppo", kl_coef=0.0, ppo_epochs=1)
    assert sum(check_tempered(engine, ex, traj, r) for traj, r in seen), "the toy needs wrong-label rationales"


# --- the replay buffer is seeded with base rationales given the label, as in the paper ----------
def seed_prompt(ex):
    return f'Classify this movie review as objective or subjective: "{ex.query}" This review is {ex.answer} because it is'


def alphanumeric(engine, token):
    text = engine.tokenizer.decode([token])
    return (text[1:] if text.startswith(" ") else text).isalnum()


def test_seeds_are_base_samples_after_the_label_cut_at_the_first_non_alphanumeric_token(tiny_policy, tmp_path):
    from methods.engine.rollout import sample

    task = SubjTask(Config(n_train=4, n_valid=2), str(write_folder(tmp_path / "subj", n_train=4).parent))
    engine = Engine(tiny_policy, task, batch_size=16)  # one sampling batch, as the draws by hand below
    with torch.no_grad():  # a LoRA update, so that sampling with the adapter on would differ
        for p in tiny_policy.trainable_parameters():
            p.add_(0.05 * torch.randn_like(p))
    examples, n = task.train_examples()[:2], 6
    seeds = engine.seed_trajectories(examples, n, torch.Generator().manual_seed(0))
    assert seeds == engine.seed_trajectories(examples, n, torch.Generator().manual_seed(0))  # reproducible
    rows = [i for i in range(len(examples)) for _ in range(n)]
    with tiny_policy.base():
        drawn = sample(tiny_policy.model, engine.tokenizer, task, engine.rules,
                       [engine.tokenizer(seed_prompt(examples[i])).input_ids for i in rows], rows, [1.0] * len(rows),
                       torch.Generator().manual_seed(0))
    expected, cut = [], 0
    for b in range(len(drawn)):
        keep = next((j for j, tok in enumerate(drawn.tokens[b]) if not alphanumeric(engine, tok)), len(drawn.tokens[b]))
        cut += keep < len(drawn.tokens[b])
        if keep >= 1:
            expected.append((drawn.example_idx[b], drawn.tokens[b][:keep], keep < len(drawn.tokens[b]) or drawn.terminated[b]))
    assert cut, "the toy should draw samples with a non-alphanumeric token"
    assert list(zip(seeds.example_idx, seeds.tokens, seeds.terminated)) == expected
    assert seeds.prompt_ids == [engine.prompt_ids(examples[i]) for i in seeds.example_idx]  # replayed as samples
    assert all(1 <= len(t) <= task.max_actions and all(a) for t, a in zip(seeds.tokens, seeds.is_action))


def test_gfn_seeds_a_subj_query_when_first_drawn_with_scored_base_rationales(tiny_policy, tmp_path, monkeypatch):
    from methods import gfn_tb
    from methods.base import TrainConfig, TrainContext
    from methods.engine.replay import ReplayBuffer

    buffers = []
    monkeypatch.setattr(gfn_tb, "ReplayBuffer", lambda capacity: buffers.append(ReplayBuffer(capacity)) or buffers[-1])
    task = SubjTask(Config(n_train=4, n_valid=2), str(write_folder(tmp_path / "subj", n_train=4).parent))
    budget = TrainConfig(steps=1, batch_prompts=1, samples_per_prompt=2, eval_every=0, batch_size=8)
    engine = Engine(tiny_policy, task, budget.batch_size)
    ctx = TrainContext(tiny_policy, task, engine, budget, seed=0, log_metrics=lambda m, step: None,
                       evaluate=lambda step: {})
    gfn_tb.train(ctx, gfn_tb.Config(loss="tb", p_replay=1.0))  # the drawn query replays: no fresh rows join
    (buffer,) = buffers
    (query,) = buffer.items  # seeded lazily: only the query drawn
    (ex,) = [e for e in task.train_examples() if e.query == query]
    items = buffer.items[query]
    # The training generator's first draws are the seeds (seed 0); duplicates merge in the buffer.
    seeds = engine.seed_trajectories([ex], task.config.seed_rationales, torch.Generator().manual_seed(0))
    assert 1 < len(items) <= task.config.seed_rationales == 20
    assert {tuple(it.tokens) for it in items} == {tuple(t) for t in seeds.tokens}
    assert all(len(it.tokens) >= 1 and all(alphanumeric(engine, t) for t in it.tokens) for it in items)
    replayed = Trajectories([0] * len(items), [engine.prompt_ids(ex)] * len(items), [it.tokens for it in items],
                            [it.is_action for it in items], [it.terminated for it in items], [1.0] * len(items))
    scored = engine.log_reward_parts(replayed, [ex], per_prefix=False)
    assert all(len(it.log_rewards) == 1 for it in items)  # loss=tb: the final state's reward only
    assert [it.log_rewards[0] for it in items] == pytest.approx(scored.base.tolist(), abs=1e-4)
    assert [it.shaping for it in items] == [[r] for r in scored.shaping.tolist()]
