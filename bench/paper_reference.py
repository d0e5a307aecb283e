"""The paper's algorithm's parts that `python -m bench.perf` times beside the project's: one forward pass per state for the rewards, and HF `generate`."""
from __future__ import annotations

import copy

import torch


@torch.no_grad()
def paper_per_token_rewards(engine, traj, examples) -> torch.Tensor:
    """The reference code's reward: for every state k, one forward pass over reward prompt + s_k + Y
    for the rows that have state k (left-padded, logits everywhere), the shared few-shot prefix's
    cache computed once and copied per pass. [B, S] untempered log p(s_k, Y | prompt) on the CPU,
    0 for the states a row does not have; tool outputs count as the task says."""
    from methods.engine.rollout import left_pad, positions, shared_prefix

    model, device = engine.policy.model, engine.policy.device
    prompts = [engine.reward_prompt_ids(examples[i]) for i in traj.example_idx]
    ys = [engine.observation_ids(examples[i]) for i in traj.example_idx]
    tool_outputs_count = getattr(engine.task, "reward_tool_outputs", True)
    shared = shared_prefix(prompts)
    ends = traj.state_ends()
    out = torch.zeros(len(traj), max(len(e) for e in ends))
    with engine.policy.base():
        prefix = model(input_ids=torch.tensor([shared], device=device), use_cache=True).cache if shared else None
        for k in range(out.shape[1]):
            rows = [b for b in range(len(traj)) if k < len(ends[b])]
            seqs, scored = [], []
            for b in rows:
                rest, end = prompts[b][len(shared):], ends[b][k]
                counted = [True] * end if tool_outputs_count else traj.is_action[b][:end]
                seqs.append(rest + traj.tokens[b][:end] + ys[b])
                scored.append((len(rest), counted + [True] * len(ys[b])))
            ids, mask = left_pad(seqs, engine.pad_id, device)
            cache = None
            if prefix is not None:
                cache = copy.deepcopy(prefix)
                cache.batch_repeat_interleave(len(rows))
                mask = torch.cat([torch.ones((len(rows), len(shared)), dtype=mask.dtype, device=device), mask], 1)
            logp = model(input_ids=ids, attention_mask=mask, position_ids=positions(mask)[:, len(shared):],
                         cache=cache).logits.float().log_softmax(-1)
            width = ids.shape[1]
            for j, (b, (n_prompt, counted)) in enumerate(zip(rows, scored)):
                start = width - len(seqs[j]) + n_prompt  # the first scored token (left padding)
                at = torch.arange(start, width, device=device)
                token_logp = logp[j, at - 1].gather(-1, ids[j, start:].unsqueeze(-1)).squeeze(-1)
                out[b, k] = (token_logp * torch.tensor(counted, dtype=token_logp.dtype, device=device)).sum().cpu()
    return out


@torch.no_grad()
def hf_generate(engine, examples, n_tokens: int, seed: int) -> None:
    """HF `generate` from the policy prompts: exactly `n_tokens` new tokens per row, sampled at
    T=1 from the full vocabulary, no tool."""
    from methods.engine.rollout import left_pad

    ids, mask = left_pad([engine.prompt_ids(ex) for ex in examples], engine.pad_id, engine.policy.device)
    torch.manual_seed(seed)
    engine.policy.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n_tokens,
                                 min_new_tokens=n_tokens, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                                 pad_token_id=engine.pad_id)
