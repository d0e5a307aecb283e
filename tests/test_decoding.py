"""method=prompting's decoding baselines against slow references (tiny model, fp32)."""
import math

import pytest
import torch

from methods import prompting
from methods.engine.decoding import Decoding, TokenRules, beam_search, keep_top_p, merge_terminators
from methods.engine.engine import Engine
from methods.engine.evaluate import evaluate, method_engine
from methods.engine.rollout import Trajectories
from tasks.arithmetic import ArithmeticTask, Config
from tasks.base import Example

PROMPTS = ["The cat sat on the", "Once upon a time", "a b a b", "Hello there,", "It was a dark and stormy night",
           "Numbers: 1 2 3", "She said", "x"]


class ToyTask:
    """Text made of "a", "b" and spaces, ended by EOS or any token with a newline (several
    terminators). With a tool, every policy token that ends in "b" is answered with " =";
    no demonstrations, so only decoding itself can notice the tool."""

    name = "toy"
    allowed_chars = "ab \n"
    stop_on_newline = True
    min_actions, max_actions = 2, 7
    tool_trigger = "b"

    def __init__(self, with_tool: bool = False):
        self.with_tool = with_tool

    def policy_prompt(self, ex: Example) -> str:
        return ex.query

    reward_prompt = policy_prompt

    def observation(self, ex: Example) -> str:
        return ""

    def demonstrations(self) -> list[Example]:
        return []

    def tool(self, generated: str) -> str | None:
        return " =" if self.with_tool and generated.endswith("b") else None

    def segments(self, rationale: str) -> list[tuple[str, bool]]:
        return [(rationale, False)]

    def extract_answer(self, sample: str) -> str | None:
        return sample.strip() or None


def decoding(name: str, **fields) -> Decoding:
    defaults = dict(beams=1, beam_groups=1, diversity_penalty=1.0, top_p=0.95, temperature=0.8)
    return Decoding(name, **(defaults | fields))


@pytest.fixture
def policy(tiny_policy):
    with torch.no_grad():
        # The random tiny LM is nearly uniform, so that which sample ends would only depend on how
        # many terminators the task has: sharper logits make ending, cuts and search matter.
        tiny_policy.model.get_base_model().model.norm.weight.mul_(5.0)
        for p in tiny_policy.trainable_parameters():  # a random LoRA update: decodings must use the base LM
            p.add_(0.05 * torch.randn_like(p))
    return tiny_policy


def toy_engine(policy, with_tool=False, batch_size=4):
    return Engine(policy, ToyTask(with_tool), batch_size=batch_size)


def queries(n: int) -> list[Example]:
    return [Example(prompt, "") for prompt in PROMPTS[:n]]


def repeated(asked: list[Example], samples: int) -> list[Example]:
    """The example each row answers: every query `samples` times in a row."""
    return [ex for ex in asked for _ in range(samples)]


def decode(engine, name, asked, samples, seed=0, **fields):
    """`samples` rows per query of `asked`, as evaluation asks a decoding for them."""
    return decoding(name, **fields)(engine, asked, samples, torch.Generator(device=engine.policy.device).manual_seed(seed))


def slow_greedy(engine, ex):
    """One full forward pass of the base LM per token: end (all terminators together) or take the
    most likely action; the task's tool inserts its text after each action."""
    rules, tok = engine.rules, engine.tokenizer
    prompt, tokens, acts = engine.prompt_ids(ex), [], []
    while sum(acts) < rules.max_actions:
        with engine.policy.base():
            ids = torch.tensor([prompt + tokens], device=engine.policy.device)
            logits = engine.policy.model(input_ids=ids).logits[0, -1].cpu()
        logp = rules.logprobs(logits, torch.tensor(sum(acts)))
        action = int(logp.masked_fill(rules.terminators, -math.inf).argmax())
        if rules.termination_logprob(logp) > logp[action]:
            return tokens, acts, True
        tokens.append(action)
        acts.append(True)
        inserted = engine.task.tool(tok.decode(tokens))
        if inserted:
            ids = tok(inserted, add_special_tokens=False).input_ids
            tokens += ids
            acts += [False] * len(ids)
    return tokens, acts, False


def teacher_forced_logp(engine, traj):
    """Per row: Σ log q(action) + log q(⊤ | last state) if it ended, in one pass of the base LM."""
    with engine.policy.base():
        s = engine.score(traj)
    s.action_logp, s.term_logp = s.action_logp.cpu(), s.term_logp.cpu()
    end = s.term_logp.gather(1, torch.tensor(traj.n_actions).unsqueeze(1)).squeeze(1)
    return s.action_logp.sum(-1) + torch.where(torch.tensor(traj.terminated), end, torch.zeros_like(end))


def as_trajectories(engine, prompt: str, beams) -> Trajectories:
    n = len(beams)
    return Trajectories(list(range(n)), [engine.prompt_ids(Example(prompt, ""))] * n, [b.tokens for b in beams],
                        [[True] * len(b.tokens) for b in beams], [b.terminated for b in beams])


# --- token-level rules ------------------------------------------------------------------------------

def test_keep_top_p_by_hand():
    logp = torch.tensor([0.15, 0.5, 0.05, 0.3]).log()
    kept = keep_top_p(logp, 0.8).exp()  # 0.5 and 0.3 reach 0.8: the rest is dropped
    assert torch.allclose(kept, torch.tensor([0.0, 0.625, 0.0, 0.375]))
    assert torch.allclose(keep_top_p(logp, 0.81).exp(), torch.tensor([0.15, 0.5, 0.0, 0.3]) / 0.95)
    assert torch.allclose(keep_top_p(logp, 0.0).exp(), torch.tensor([0.0, 1.0, 0.0, 0.0]))
    tied = torch.tensor([0.2, 0.4, 0.4]).log()
    assert keep_top_p(tied, 0.0).argmax() == 1 == tied.argmax()  # the first of tied maxima, as argmax


def test_merge_terminators_puts_the_mass_of_ending_on_one_token():
    rules = TokenRules(torch.ones(5, dtype=torch.bool), torch.tensor([False, True, False, True, False]), 0, 9)
    logp = torch.tensor([0.1, 0.2, 0.3, 0.25, 0.15]).log()
    merged = merge_terminators(rules, logp).exp()
    assert torch.allclose(merged, torch.tensor([0.1, 0.45, 0.3, 0.0, 0.15]))


# --- greedy and nucleus: the engine's sampler, tool in the loop ----------------------------------------

def test_greedy_matches_a_slow_argmax_loop_with_the_tool(policy):
    engine = toy_engine(policy, with_tool=True)
    rows = repeated(queries(len(PROMPTS)), 2)
    traj = decode(engine, "greedy", queries(len(PROMPTS)), 2)
    assert len(traj) == len(rows) and traj.example_idx == list(range(len(rows)))
    for i, ex in enumerate(rows):
        tokens, acts, terminated = slow_greedy(engine, ex)
        assert (traj.tokens[i], traj.is_action[i], traj.terminated[i]) == (tokens, acts, terminated)
        assert traj.prompt_ids[i] == engine.prompt_ids(ex)
    assert not all(all(a) for a in traj.is_action), "the toy needs tool tokens"
    assert any(traj.terminated) and not all(traj.terminated), "and both ended and cut samples"
    assert any(t and n > ToyTask.min_actions for t, n in zip(traj.terminated, traj.n_actions))


def test_nucleus_with_a_tiny_top_p_is_greedy(policy):
    engine = toy_engine(policy, with_tool=True)
    asked = queries(4)
    greedy = decode(engine, "greedy", asked, 2)
    nucleus = decode(engine, "nucleus", asked, 2, top_p=1e-6)
    assert (nucleus.tokens, nucleus.is_action, nucleus.terminated) == (greedy.tokens, greedy.is_action, greedy.terminated)
    wide = decode(engine, "nucleus", asked, 2, top_p=0.95)
    assert wide.tokens != greedy.tokens  # a real nucleus samples


def test_greedy_on_arithmetic_through_prompting_and_evaluation(policy):
    task = ArithmeticTask(Config(n_demos=4, n_train=8, n_valid=4, n_test=4, max_actions=12), None)
    engine = method_engine(policy, task, 8, prompting, prompting.Config())
    assert engine.decode is None  # sample: the engine's own sampler, unchanged
    engine = method_engine(policy, task, 8, prompting, prompting.Config(decoding="greedy"))
    result = evaluate(engine, task.validation_examples()[:3], samples=3, temperature=1.0)
    # three copies of one sample per query: its likelihood is each query's mean and maximum
    assert result.metrics["loglik_mean"] == pytest.approx(result.metrics["loglik_max"], abs=1e-3)
    with pytest.raises(ValueError, match="cannot decode task 'arithmetic': its tool"):
        prompting.check(prompting.Config(decoding="beam"), task)


# --- beam searches ----------------------------------------------------------------------------------

def test_beam_search_with_one_beam_is_greedy(policy):
    engine = toy_engine(policy)
    asked = queries(len(PROMPTS))
    greedy, beam = decode(engine, "greedy", asked, 1), decode(engine, "beam", asked, 1, beams=1)
    assert (beam.tokens, beam.terminated) == (greedy.tokens, greedy.terminated)


def test_beam_scores_are_teacher_forced_log_probs_and_beat_greedy(policy):
    engine = toy_engine(policy)
    prompts = [engine.prompt_ids(Example(p, "")) for p in PROMPTS]
    with policy.base():
        found = beam_search(policy.model, engine.tokenizer, engine.task, engine.rules, prompts,
                            [(1, 4)] * len(prompts), 0.0)
    greedy = decode(engine, "greedy", queries(len(PROMPTS)), 1)
    greedy_logp = teacher_forced_logp(engine, greedy)
    better = 0
    for q, (groups, prompt) in enumerate(zip(found, PROMPTS)):
        (ended,) = groups
        assert len(ended) >= 4
        fast = torch.tensor([b.logp for b in ended])
        assert torch.allclose(fast, teacher_forced_logp(engine, as_trajectories(engine, prompt, ended)), atol=1e-4)
        assert torch.all(fast[:-1] >= fast[1:])  # best first
        assert ended[0].logp >= greedy_logp[q].item() - 1e-5
        better += ended[0].logp > greedy_logp[q].item() + 0.1
    assert better >= 2  # the search finds what greedy misses
    assert any(b.terminated for groups in found for b in groups[0]) and not all(
        b.terminated for groups in found for b in groups[0])


def test_beam_search_returns_the_best_beams_per_query(policy):
    engine = toy_engine(policy)
    traj = decode(engine, "beam", queries(2), 3, beams=2)  # 6 beams per query
    logp = teacher_forced_logp(engine, traj)
    for run in (range(0, 3), range(3, 6)):
        assert len({tuple(traj.tokens[i]) for i in run}) == len(run)  # distinct beams
        assert all(logp[i] >= logp[i + 1] - 1e-5 for i in run[:-1])
    greedy = decode(engine, "greedy", queries(2), 3)
    assert all(logp[i] >= teacher_forced_logp(engine, greedy)[i] - 1e-5 for i in (0, 3))


def test_diverse_beam_groups(policy):
    engine = toy_engine(policy)
    asked = queries(2)
    # Without a penalty every group is the same beam search: n copies of its best.
    same = decode(engine, "diverse_beam", asked, 3, beams=2, diversity_penalty=0.0)
    alone = decode(engine, "beam", asked, 1, beams=2)
    assert same.tokens == [alone.tokens[0]] * 3 + [alone.tokens[1]] * 3
    # A prohibitive penalty makes each group start with tokens no earlier group took.
    apart = decode(engine, "diverse_beam", asked, 3, beams=2, diversity_penalty=1e3)
    for run in (range(0, 3), range(3, 6)):
        assert len({traj[0] for traj in apart.tokens[run.start:run.stop]}) == 3
    # The paper's default penalty (1.0) already separates some groups of this toy.
    default = decode(engine, "diverse_beam", asked, 3, beams=2)
    assert len({tuple(t) for t in default.tokens[:3]}) + len({tuple(t) for t in default.tokens[3:]}) > 2


@pytest.mark.parametrize("name", ["greedy", "beam", "diverse_beam", "nucleus", "tempered"])
def test_every_decoding_keeps_the_tasks_rules_and_counts(policy, name):
    engine = toy_engine(policy)
    rows = repeated(queries(4), 3)
    traj = decode(engine, name, queries(4), 3, beams=2, seed=3)
    assert len(traj) == len(rows) and traj.example_idx == list(range(len(rows)))
    assert traj.prompt_ids == [engine.prompt_ids(ex) for ex in rows]
    rules = engine.rules
    for tokens, acts, terminated in zip(traj.tokens, traj.is_action, traj.terminated):
        assert all(acts) and all(rules.allowed[t] and not rules.terminators[t] for t in tokens)
        assert len(tokens) >= rules.min_actions if terminated else len(tokens) == rules.max_actions
    texts = engine.texts(traj)
    assert all(set(text) <= set("ab ") for text in texts)


def test_beam_search_refuses_a_tool_that_fires(policy):
    engine = toy_engine(policy, with_tool=True)
    with pytest.raises(ValueError, match="method.decoding=diverse_beam cannot decode task 'toy'"):
        decode(engine, "diverse_beam", queries(2), 2)


@pytest.mark.parametrize("fields, message", [
    (dict(beams=0), "method.beams=0 and method.beam_groups=1 must be >= 1"),
    (dict(beams=3, beam_groups=2), "method.beams=3 must be a multiple of method.beam_groups=2"),
    (dict(diversity_penalty=-1.0), "method.diversity_penalty=-1.0 must be >= 0"),
    (dict(top_p=0.0), r"method.top_p=0.0 must be in \(0, 1\]"),
    (dict(temperature=0.0), "method.temperature=0.0 must be > 0"),
])
def test_bad_settings_are_one_line_errors(fields, message):
    with pytest.raises(ValueError, match=message):
        decoding("beam", **fields)
