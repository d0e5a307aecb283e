"""The reward every method shares: log R(s) = log p_base(s, Y | reward prompt), untempered.

s is a state (a prefix of the sample, tool tokens included) and Y the task's observation, so
log R(s_k) for every state k is what sub-trajectory balance needs. The reference code ran one
forward pass per generated token for this. Here one pass per batch suffices: the sequence holds
the context (reward prompt + sample) once, followed by one copy of Y per state, and a 4-D
attention mask lets copy k see only the context up to s_k and itself, with position ids as if
it came right after s_k. Methods temper it themselves (`LogReward.tempered`).

A task with candidate observations (`choices`, e.g. one per class label) gets one copy of every
candidate per state in the same pass (`observation_logprobs`); `choice_log_reward` turns them into
the reward: the gold candidate's, and apart from it a shaping term, the task's penalty where the
base LM prefers another. The shaping is added after tempering, as in the paper (SUBJ:
log p(Z, Y | X) / T - 50), so a temperature never scales it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from methods.engine.rollout import PrefixCache, Trajectories, prefix_cache, shared_prefix


@dataclass
class LogReward:
    """Untempered log R of a batch, per state [B, S] or per trajectory [B], in two parts: `base`,
    log p_base(s, Y | reward prompt), which the reward temperature divides, and `shaping`, which
    is added after tempering (None: the task has none)."""

    base: torch.Tensor
    shaping: torch.Tensor | None = None

    def tempered(self, temperature: float) -> torch.Tensor:
        """log R / T as the methods train on it: base / T + shaping."""
        scaled = self.base / temperature
        return scaled if self.shaping is None else scaled + self.shaping

    @property
    def total(self) -> torch.Tensor:
        """log R at T = 1: base + shaping."""
        return self.base if self.shaping is None else self.base + self.shaping

    def __getitem__(self, rows) -> "LogReward":
        return LogReward(self.base[rows], None if self.shaping is None else self.shaping[rows])

    def pad(self, width: int) -> "LogReward":
        """Per-state parts zero-padded to `width` states."""
        pad = lambda x: torch.nn.functional.pad(x, (0, width - x.shape[1]))
        return LogReward(pad(self.base), None if self.shaping is None else pad(self.shaping))

    @staticmethod
    def concat(parts: list["LogReward"]) -> "LogReward":
        shaped = [p.shaping is not None for p in parts]
        if any(shaped) and not all(shaped):
            raise ValueError("cannot concatenate log-rewards with and without shaping")
        return LogReward(torch.cat([p.base for p in parts]),
                         torch.cat([p.shaping for p in parts]) if all(shaped) and parts else None)


@dataclass
class RewardRow:
    """One trajectory's reward sequence: context (reward prompt + sample), then one copy of
    Y_c[:-1] per state and candidate c, and the read-out plan."""

    ids: list[int]
    pos: list[int]
    context_len: int
    context_end: list[int]  # per copy token: it sees the context [0, context_end)...
    own_start: list[int]  # ...and its own copy from own_start up to itself
    y_at: list[int]  # logits position of each Y read-out
    y_token: list[int]
    y_state: list[int]  # the slot k * C + c whose log p(Y_c | s_k) the read-out adds to


def reward_row(prompt: list[int], tokens: list[int], state_ends: list[int], ys: list[list[int]]) -> RewardRow:
    """`ys`: the C candidate observations (one for a task without choices)."""
    row = RewardRow(prompt + tokens, list(range(len(prompt) + len(tokens))), len(prompt) + len(tokens), [], [], [], [], [])
    for k, end in enumerate(state_ends):
        prefix = len(prompt) + end
        for c, y in enumerate(ys):
            slot = k * len(ys) + c
            row.y_at.append(prefix - 1)  # Y[0] is predicted by the last token of s_k itself
            row.y_token.append(y[0])
            row.y_state.append(slot)
            start = len(row.ids)
            for j, tok in enumerate(y[:-1]):
                row.ids.append(tok)
                row.pos.append(prefix + j)
                row.context_end.append(prefix)
                row.own_start.append(start)
                row.y_at.append(start + j)
                row.y_token.append(y[j + 1])
                row.y_state.append(slot)
    return row


def log_reward(model, pad_id: int, reward_prompt_ids: list[list[int]], y_ids: list[list[int]],
               traj: Trajectories, *, per_prefix: bool = True, tool_tokens: bool = True,
               prefix_memo: PrefixCache | None = None) -> torch.Tensor:
    """log p(s_k, Y | reward prompt) for every state (per_prefix) or the final state only.

    Returns [B, A+1] (0 for states a row does not have) or [B]. The caller disables adapters.
    """
    logp = observation_logprobs(model, pad_id, reward_prompt_ids, [[y] for y in y_ids], traj, per_prefix=per_prefix,
                                tool_tokens=tool_tokens, prefix_memo=prefix_memo)
    return logp[..., 0] if per_prefix else logp[:, 0, 0]


def observation_logprobs(model, pad_id: int, reward_prompt_ids: list[list[int]], candidates: list[list[list[int]]],
                         traj: Trajectories, *, per_prefix: bool = True, tool_tokens: bool = True,
                         prefix_memo: PrefixCache | None = None) -> torch.Tensor:
    """log p(s_k, Y_c | reward prompt) for every state k (or the final state) and candidate c.

    `candidates[b]` holds row b's candidate observations. Returns [B, A+1, C] ([B, 1, C] without
    per_prefix): 0 for states a row does not have, -inf for candidates it does not have.
    `tool_tokens=False` leaves the tool's tokens out of the sum (they stay in context): they are a
    deterministic function of the actions, so the log-probability the base LM gives them measures
    the LM's arithmetic, not how plausible the actions are. `prefix_memo` keeps the shared prompt
    prefix's cache for later calls (the frozen base only).
    """
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    # The prompt prefix every row shares (few-shot demonstrations) is run once and its KV cache
    # reused by every row; at least one prompt token per row stays outside it, because that
    # token's logits predict the first sample token.
    shared = shared_prefix(reward_prompt_ids)
    prompts = [p[len(shared):] for p in reward_prompt_ids]
    ends = [e if per_prefix else e[-1:] for e in traj.state_ends()]
    rows = [reward_row(prompts[b], traj.tokens[b], ends[b], candidates[b]) for b in range(len(traj))]
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
        cache = prefix_cache(model, shared, len(rows), prefix_memo)
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

    n_states, n_candidates = max(len(e) for e in ends), max(len(c) for c in candidates)
    result = torch.zeros((len(rows), n_states, n_candidates), device=device)
    for b, r in enumerate(rows):
        start, n_c = len(prompts[b]), len(candidates[b])
        gen = logp_at(b, list(range(start - 1, r.context_len - 1)), traj.tokens[b]) if traj.tokens[b] else torch.zeros(0, device=device)
        if not tool_tokens:
            gen = gen * torch.tensor(traj.is_action[b], dtype=gen.dtype, device=device)
        cum = torch.cat([torch.zeros(1, device=device), gen.cumsum(0)])  # log p of the first e sample tokens
        slots = torch.tensor(r.y_state, device=device)
        y = torch.zeros(len(ends[b]) * n_c, device=device).index_add_(0, slots, logp_at(b, r.y_at, r.y_token))
        result[b, :len(ends[b]), :n_c] = cum[torch.tensor(ends[b], device=device)].unsqueeze(-1) + y.view(-1, n_c)
        result[b, :, n_c:] = float("-inf")
    return result


def preferred_choice(choice_logp: torch.Tensor, tie_index: torch.Tensor) -> torch.Tensor:
    """Index of the candidate the base LM scores highest, [...] from [..., C].

    A tie goes to `tie_index` (broadcast against [...]) when it is among the tied, else to the
    first tied candidate; -1 in `tie_index`: no preference."""
    tied = choice_logp == choice_logp.max(-1, keepdim=True).values
    first = tied.int().argmax(-1)  # argmax returns the first of equal maxima
    tie_index = tie_index.expand_as(first)
    favoured = tied.gather(-1, tie_index.clamp(min=0).unsqueeze(-1)).squeeze(-1) & (tie_index >= 0)
    return torch.where(favoured, tie_index, first)


def choice_log_reward(choice_logp: torch.Tensor, gold: torch.Tensor, tie_index: torch.Tensor,
                      penalty: float, exists: torch.Tensor) -> LogReward:
    """[B, S] log R of a task with candidates: base log p(s_k, Y_gold), shaping `penalty` at the
    states whose preferred candidate is not the gold one; both 0 where `exists` [B, S] is False.

    choice_logp [B, S, C]; gold, tie_index [B] (see preferred_choice)."""
    gold_logp = choice_logp.gather(-1, gold.view(-1, 1, 1).expand(-1, choice_logp.shape[1], 1)).squeeze(-1)
    wrong = preferred_choice(choice_logp, tie_index.view(-1, 1)) != gold.view(-1, 1)
    zeros = torch.zeros_like(gold_logp)
    shaping = torch.where(exists, penalty * wrong, zeros)
    return LogReward(torch.where(exists, gold_logp, zeros), shaping)
