"""The reward every method shares: log R(s) = log p_base(s, Y | reward prompt), untempered.

s is a state (a prefix of the sample, tool tokens included) and Y the task's observation, so
log R(s_k) for every state k is what sub-trajectory balance needs. The reference code ran one
forward pass per generated token for this. Here one pass per batch suffices: the sequence holds
the context (reward prompt + sample) once, followed by one copy of Y per state, and a 4-D
attention mask lets copy k see only the context up to s_k and itself, with position ids as if
it came right after s_k. Methods divide by the reward temperature themselves.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from methods.engine.rollout import Trajectories


@dataclass
class RewardRow:
    """One trajectory's reward sequence: context (reward prompt + sample), then one copy of
    Y[:-1] per state, and the read-out plan."""

    ids: list[int]
    pos: list[int]
    context_len: int
    context_end: list[int]  # per copy token: it sees the context [0, context_end)...
    own_start: list[int]  # ...and its own copy from own_start up to itself
    y_at: list[int]  # logits position of each Y read-out
    y_token: list[int]
    y_state: list[int]  # the state k whose log p(Y | s_k) the read-out adds to


def reward_row(prompt: list[int], tokens: list[int], state_ends: list[int], y: list[int]) -> RewardRow:
    row = RewardRow(prompt + tokens, list(range(len(prompt) + len(tokens))), len(prompt) + len(tokens), [], [], [], [], [])
    for k, end in enumerate(state_ends):
        prefix = len(prompt) + end
        row.y_at.append(prefix - 1)  # Y[0] is predicted by the last token of s_k itself
        row.y_token.append(y[0])
        row.y_state.append(k)
        start = len(row.ids)
        for j, tok in enumerate(y[:-1]):
            row.ids.append(tok)
            row.pos.append(prefix + j)
            row.context_end.append(prefix)
            row.own_start.append(start)
            row.y_at.append(start + j)
            row.y_token.append(y[j + 1])
            row.y_state.append(k)
    return row


def shared_prefix(prompts: list[list[int]]) -> list[int]:
    """The longest common prefix of the prompts, short of each prompt's last token."""
    limit = min(len(p) for p in prompts) - 1
    n = 0
    while n < limit and all(p[n] == prompts[0][n] for p in prompts):
        n += 1
    return prompts[0][:n]


def log_reward(model, pad_id: int, reward_prompt_ids: list[list[int]], y_ids: list[list[int]],
               traj: Trajectories, *, per_prefix: bool = True) -> torch.Tensor:
    """log p(s_k, Y | reward prompt) for every state (per_prefix) or the final state only.

    Returns [B, A+1] (0 for states a row does not have) or [B]. The caller disables adapters.
    """
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    # The prompt prefix every row shares (few-shot demonstrations) is run once and its KV cache
    # reused by every row; at least one prompt token per row stays outside it, because that
    # token's logits predict the first sample token.
    shared = shared_prefix(reward_prompt_ids)
    prompts = [p[len(shared):] for p in reward_prompt_ids]
    ends = [e if per_prefix else e[-1:] for e in traj.state_ends()]
    rows = [reward_row(prompts[b], traj.tokens[b], ends[b], y_ids[b]) for b in range(len(traj))]
    width = max(len(r.ids) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    pos = torch.zeros((len(rows), width), dtype=torch.long)
    allow = torch.eye(width, dtype=torch.bool).repeat(len(rows), 1, 1)  # padding sees itself: no NaN rows
    keys = torch.arange(width)
    for b, r in enumerate(rows):
        n, c = len(r.ids), r.context_len
        ids[b, :n] = torch.tensor(r.ids)
        pos[b, :n] = torch.tensor(r.pos)
        allow[b, :c, :c] = torch.ones((c, c), dtype=torch.bool).tril()
        if n > c:
            q = torch.arange(c, n).unsqueeze(1)
            ce, own = torch.tensor(r.context_end).unsqueeze(1), torch.tensor(r.own_start).unsqueeze(1)
            allow[b, c:n] = (keys < ce) | ((keys >= own) & (keys <= q))
    cache = None
    if shared:
        cache = model(input_ids=torch.tensor([shared], device=device), use_cache=True).cache
        cache.batch_repeat_interleave(len(rows))
        allow = torch.cat([torch.ones((len(rows), width, len(shared)), dtype=torch.bool), allow], -1)
        pos += len(shared)
    mask = torch.zeros(allow.shape, dtype=dtype).masked_fill(~allow, torch.finfo(dtype).min)
    # The rest of the prompt needs no logits either: keep them from the shortest prompt's end on.
    first = min(len(p) for p in prompts) - 1
    out = model(input_ids=ids.to(device), attention_mask=mask.unsqueeze(1).to(device), position_ids=pos.to(device),
                cache=cache, logits_to_keep=width - first)
    logits = out.logits.float()
    lse = logits.logsumexp(-1)

    def logp_at(b: int, at: list[int], tok: list[int]) -> torch.Tensor:
        at_t = torch.tensor(at, device=device) - first
        return logits[b, at_t, torch.tensor(tok, device=device)] - lse[b, at_t]

    n_states = max(len(e) for e in ends)
    result = torch.zeros((len(rows), n_states), device=device)
    for b, r in enumerate(rows):
        start = len(prompts[b])
        gen = logp_at(b, list(range(start - 1, r.context_len - 1)), traj.tokens[b]) if traj.tokens[b] else torch.zeros(0, device=device)
        cum = torch.cat([torch.zeros(1, device=device), gen.cumsum(0)])  # log p of the first e sample tokens
        y = torch.zeros(len(ends[b]), device=device).index_add_(0, torch.tensor(r.y_state, device=device), logp_at(b, r.y_at, r.y_token))
        result[b, :len(ends[b])] = cum[torch.tensor(ends[b], device=device)] + y
    return result if per_prefix else result[:, 0]
