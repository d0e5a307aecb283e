"""The static-cache sampler (methods/engine/static_decode.py) against the dynamic one it replaces on
a GPU: with the same generator it must draw the same tokens from the same distributions, the tool
in the loop, rows finishing at different steps (fp32, tiny model, on the CPU)."""
import pytest
import torch

from methods.engine.engine import Engine
from methods.engine.rollout import shared_prefix
from methods.engine.static_decode import StaticDecoder
from tasks.arithmetic import ArithmeticTask, Config
from tasks.continuation import Config as ContinuationConfig
from tasks.continuation import ContinuationTask


def perturbed(policy):
    with torch.no_grad():  # a random LoRA update, so that the adapter is on the sampler's path
        gen = torch.Generator().manual_seed(5)
        for p in policy.trainable_parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return policy


def raise_logits(engine, token_ids, bias):
    """Add `bias` to the logits of `token_ids` (the random tiny model's choices are near uniform)."""
    shift = torch.zeros(engine.policy.model.get_output_embeddings().weight.shape[0])
    shift[list(token_ids)] = bias
    engine.policy.model.get_output_embeddings().register_forward_hook(lambda module, args, out: out + shift.to(out))
    return engine


def calculator_prone(engine):
    """Make the calculator fire often: raise the tokens that call it (those holding "=") and let it
    answer every text ending in "=", with the text's length where it cannot compute one (answers of
    1 to 3 digits). The random tiny model writes no "5 + 9 =" by itself."""
    task = engine.task
    task.tool = lambda text, real=task.tool: real(text) or (f" {len(text) % 1000}" if text.endswith("=") else None)
    return raise_logits(engine, engine.rules.tool_fires_after, 4.0)


def arithmetic(shots):
    return ArithmeticTask(Config(n_train=20, n_valid=5, n_test=5, max_actions=12, policy_shots=shots), None)


def continuation(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("".join(f"Prompt number {i} is here. \n" for i in range(12)), encoding="utf-8")
    return ContinuationTask(ContinuationConfig(path=str(path), n_train=6, n_valid=3, n_test=3, max_actions=10))


def sample_recording(engine, examples, temperature, seed, kv_cache):
    """(trajectories, the rules' log-probs of every step) with `engine.set_kv_cache(kv_cache)`, or
    `kv_cache` itself as the engine's static decoder."""
    if isinstance(kv_cache, str):
        engine.set_kv_cache(kv_cache)
    else:
        engine.static_decode = kv_cache
    steps = []
    real = type(engine.rules).logprobs

    def recording(logits, n_actions, temperature=1.0):
        logp = real(engine.rules, logits, n_actions, temperature)
        steps.append(logp.detach().clone())
        return logp

    engine.rules.logprobs = recording
    try:
        traj = engine.sample(examples, [temperature] * len(examples), torch.Generator().manual_seed(seed))
    finally:
        del engine.rules.logprobs
    return traj, steps


def first_tool_step(acts):
    return next((i for i, a in enumerate(acts) if not a), None)


@pytest.mark.parametrize("task_name,shots", [("arithmetic", 0), ("arithmetic", 2), ("continuation", 0)])
def test_static_decoding_draws_what_dynamic_decoding_draws(tiny_policy, tmp_path, task_name, shots):
    """Arithmetic with its calculator (and with worked examples: a shared prefix whose cache is
    copied into the static one), and continuation, which has no tool and ends on "."."""
    task = arithmetic(shots) if task_name == "arithmetic" else continuation(tmp_path)
    engine = Engine(perturbed(tiny_policy), task, batch_size=8)
    if task_name == "arithmetic":
        calculator_prone(engine)
    else:  # rows must end on "." at different steps
        raise_logits(engine, engine.rules.terminators.nonzero().flatten().tolist(), 14.0)
    examples = [ex for ex in task.train_examples()[:4] for _ in range(2)]
    if shots:
        assert len(shared_prefix([engine.prompt_ids(ex) for ex in examples])) > 40
    dynamic, dynamic_logp = sample_recording(engine, examples, 1.5, 0, "dynamic")
    static, static_logp = sample_recording(engine, examples, 1.5, 0, "static")

    lengths = [len(t) for t in dynamic.tokens]
    assert len(set(lengths)) > 2, "rows must finish at different steps"
    if task_name == "arithmetic":
        tool_steps = {first_tool_step(a) for a in dynamic.is_action} - {None}
        assert len(tool_steps) > 1, "the tool must fire at different steps in different rows"
    else:
        assert all(all(a) for a in dynamic.is_action)
    assert static.tokens == dynamic.tokens
    assert static.is_action == dynamic.is_action and static.terminated == dynamic.terminated
    assert len(static_logp) == len(dynamic_logp)
    for fast, slow in zip(static_logp, dynamic_logp):  # the live rows of each step
        assert fast.shape == slow.shape
        assert torch.equal(torch.isinf(fast), torch.isinf(slow))
        finite = torch.isfinite(slow)
        torch.testing.assert_close(fast[finite], slow[finite], atol=1e-5, rtol=0)


@pytest.mark.parametrize("static", [False, True])
def test_forward_tokens_count_every_row_the_static_cache_steps(tiny_policy, static):
    """Dynamic decoding steps only the live rows; static decoding steps every row of the batch until
    the last one finishes, a finished row on padding: the device computes those positions, so they
    count (padding included, as everywhere in the engine's count)."""
    task = arithmetic(2)
    engine = calculator_prone(Engine(perturbed(tiny_policy), task, batch_size=8))
    engine.set_kv_cache("static" if static else "dynamic")
    examples = task.train_examples()[:6]
    prompts = [engine.prompt_ids(ex) for ex in examples]
    shared = shared_prefix(prompts)
    prefill = len(shared) + len(examples) * max(len(p) - len(shared) for p in prompts)
    before = engine.forward_tokens
    traj = engine.sample(examples, [1.5] * len(examples), torch.Generator().manual_seed(2))
    # A row feeds each of its tokens to the model, except the last of a row cut at max_actions.
    fed = [len(t) - (not done) for t, done in zip(traj.tokens, traj.terminated)]
    assert len(set(fed)) > 1
    steps = sum(fed) if not static else len(examples) * max(fed)
    assert engine.forward_tokens - before == prefill + steps


def test_a_full_static_cache_grows_and_samples_on(tiny_policy, monkeypatch):
    """Tool outputs make a row longer than its actions: a cache sized too small for them is grown
    (copied into a longer one) rather than overrun."""
    from methods.engine import static_decode

    task = arithmetic(0)
    engine = calculator_prone(Engine(perturbed(tiny_policy), task, batch_size=8))
    examples = task.train_examples()[:6]
    dynamic, _ = sample_recording(engine, examples, 1.5, 4, "dynamic")
    monkeypatch.setattr(static_decode, "COLUMNS", 4)
    monkeypatch.setattr(static_decode, "room", lambda width, rules: width + 3)
    static, _ = sample_recording(engine, examples, 1.5, 4, "static")
    assert engine.static_decode.grown > 0
    assert static.tokens == dynamic.tokens and static.is_action == dynamic.is_action


def test_the_compiled_step_is_one_graph_and_samples_the_same(tiny_policy):
    """torch.compile of the decode step (here with the eager backend: what CUDA graphs capture is the
    traced graph, and the CPU cannot afford Inductor in the test suite) must trace the LoRA model and
    the static cache without a graph break, once for the whole batch (a step that recompiles, e.g.
    on a running count, would fall back to eager after 8), sample the same and count its tokens."""
    from torch._dynamo.utils import counters

    task = arithmetic(2)
    engine = calculator_prone(Engine(perturbed(tiny_policy), task, batch_size=8))
    examples = task.train_examples()[:4]
    dynamic, _ = sample_recording(engine, examples, 1.5, 1, "dynamic")
    before = engine.forward_tokens
    torch._dynamo.reset()
    counters.clear()
    compiled, _ = sample_recording(engine, examples, 1.5, 1,
                                   StaticDecoder(engine.count_tokens, compiled=True, backend="eager"))
    assert compiled.tokens == dynamic.tokens and compiled.is_action == dynamic.is_action
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert counters["stats"]["unique_graphs"] == 1  # one shape, one graph: nothing that changes per step is guarded
    fed = [len(t) - (not done) for t, done in zip(compiled.tokens, compiled.terminated)]
    prompts = [engine.prompt_ids(ex) for ex in examples]
    shared = shared_prefix(prompts)
    prefill = len(shared) + len(examples) * max(len(p) - len(shared) for p in prompts)
    assert engine.forward_tokens - before == prefill + len(examples) * max(fed)
    torch._dynamo.reset()


def test_the_compiled_sampler_on_the_cpu(tiny_policy):
    """model.kv_cache=compiled as it runs (Inductor; CUDA graphs only on a GPU): one graph for the
    batch, the same samples and the same count as the uncompiled static cache."""
    from torch._dynamo.utils import counters

    task = arithmetic(2)
    engine = calculator_prone(Engine(perturbed(tiny_policy), task, batch_size=8))
    examples = task.train_examples()[:4]
    before = engine.forward_tokens
    static, _ = sample_recording(engine, examples, 1.5, 1, "static")
    static_tokens = engine.forward_tokens - before
    torch._dynamo.reset()
    counters.clear()
    before = engine.forward_tokens
    compiled, _ = sample_recording(engine, examples, 1.5, 1, "compiled")
    assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"]
    assert compiled.tokens == static.tokens and compiled.is_action == static.is_action
    assert engine.forward_tokens - before == static_tokens
    torch._dynamo.reset()


@pytest.mark.slow
def test_static_decoding_on_smollm2_with_its_own_calculator_calls():
    """The real model writes "4 - 8 =" by itself: the real calculator fires at different steps."""
    from methods.engine.models import ModelConfig, load_policy

    task = ArithmeticTask(Config(n_train=20, n_valid=5, n_test=5, max_actions=24, policy_shots=2), None)
    engine = Engine(load_policy(ModelConfig(preset="smollm2-135m"), seed=0), task, batch_size=8)
    examples = [ex for ex in task.train_examples()[:4] for _ in range(2)]
    dynamic, dynamic_logp = sample_recording(engine, examples, 1.0, 0, "dynamic")
    static, static_logp = sample_recording(engine, examples, 1.0, 0, "static")
    assert len({first_tool_step(a) for a in dynamic.is_action} - {None}) > 1
    assert len({len(t) for t in dynamic.tokens}) > 2
    assert static.tokens == dynamic.tokens and static.is_action == dynamic.is_action
    for fast, slow in zip(static_logp, dynamic_logp, strict=True):
        finite = torch.isfinite(slow)
        assert torch.equal(finite, torch.isfinite(fast))
        torch.testing.assert_close(fast[finite], slow[finite], atol=1e-5, rtol=1e-5)  # log-probs to -20
