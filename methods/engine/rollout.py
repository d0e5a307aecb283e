"""The shared rollout engine: sampling with a tool in the loop, and teacher-forced scoring.

A trajectory is a sequence of policy *actions* (tokens the policy chose) interleaved with
*environment* tokens (what the task's tool inserted, e.g. a calculator result). Only actions
count towards log P_F. States are indexed by actions: s_0 is the prompt, s_k the prefix after the
k-th action and any tool tokens that followed it. Termination (EOS, or a newline where the task
stops on one) is an action of its own, written ⊤, scored at every state.

Gradients never flow through sampling: after sampling, one teacher-forced forward pass computes
the actions' log-probs and every state's termination log-prob. Replayed trajectories go through
the same pass, tool tokens included, so they are scored in the context they were sampled in.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from tasks.base import Task

if TYPE_CHECKING:
    from methods.engine.static_decode import StaticDecoder

NEG_INF = float("-inf")


@dataclass
class TokenRules:
    """The action space a task allows, as masks over the vocabulary (built once per task)."""

    allowed: torch.Tensor  # [V] bool: tokens the policy may emit as actions (terminators included)
    terminators: torch.Tensor  # [V] bool: tokens that end a sample
    min_actions: int
    max_actions: int
    tool_fires_after: frozenset[int] = frozenset()
    """Tokens after which the task's tool may insert something (their text holds the task's
    `tool_trigger`); empty for a task without a tool. The sampler decodes a row to ask the tool
    only after these, not after every token."""

    @classmethod
    def for_task(cls, task: Task, tokenizer, vocab_size: int) -> "TokenRules":
        """Masks from the task's token rules: `allowed_chars`, `banned_token_texts` (exact token
        texts), and what ends a sample: the tokens whose text is one of `terminator_texts` when
        the task names any (EOS is then no action), else EOS; plus newlines with `stop_on_newline`."""
        allowed = torch.ones(vocab_size, dtype=torch.bool)
        terminators = torch.zeros(vocab_size, dtype=torch.bool)
        special = set(tokenizer.all_special_ids)
        terminator_texts = set(getattr(task, "terminator_texts", ()))
        banned = getattr(task, "banned_token_texts", frozenset())
        texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
        for i, text in enumerate(texts[:vocab_size]):
            if i in special:
                allowed[i] = False
            elif text in terminator_texts:
                terminators[i] = True
            elif text in banned:
                allowed[i] = False
            elif "\n" in text and task.stop_on_newline and (
                    task.allowed_chars is None or all(c in task.allowed_chars or c == "\n" for c in text)):
                terminators[i] = True  # before the character check, which would otherwise ban the newline
            elif task.allowed_chars is not None and (not text or any(c not in task.allowed_chars for c in text)):
                allowed[i] = False
        allowed[len(texts):] = False  # padding rows of the embedding matrix are not tokens
        if terminator_texts and not terminators.any():
            raise ValueError(f"task {task.name}: no token of the tokenizer is exactly one of its "
                             f"terminators {sorted(terminator_texts)}")
        if not terminator_texts:
            terminators[tokenizer.eos_token_id] = True
        allowed |= terminators
        trigger = getattr(task, "tool_trigger", None)
        fires = frozenset() if trigger is None else frozenset(i for i, text in enumerate(texts) if trigger in text)
        return cls(allowed, terminators, task.min_actions, task.max_actions, fires)

    def logprobs(self, logits: torch.Tensor, n_actions: torch.Tensor, temperature: torch.Tensor | float = 1.0) -> torch.Tensor:
        """Log-probs of the policy's next action under the task's rules, in fp32.

        `n_actions` (broadcast against logits[..., 0]) says how many actions precede each
        position; terminators are forbidden before `min_actions`.
        """
        logits = logits.float()
        if not isinstance(temperature, float) or temperature != 1.0:
            logits = logits / temperature
        allowed = self.allowed.to(logits.device)
        early = (n_actions < self.min_actions).unsqueeze(-1)
        blocked = ~allowed | (early & self.terminators.to(logits.device))
        return logits.masked_fill(blocked, NEG_INF).log_softmax(-1)

    def termination_logprob(self, logp: torch.Tensor) -> torch.Tensor:
        """log q(⊤ | s): total probability of the terminator tokens, -inf where all are blocked.

        The logsumexp of an all -inf row has a NaN gradient, which would poison the whole
        backward pass even where the value is masked out later; such rows are computed on zeros.
        """
        term = logp.masked_fill(~self.terminators.to(logp.device), NEG_INF)
        blocked = torch.isinf(term).all(-1, keepdim=True)
        lse = torch.where(blocked, torch.zeros_like(term), term).logsumexp(-1)
        return torch.where(blocked.squeeze(-1), torch.full_like(lse, NEG_INF), lse)


@dataclass
class Trajectories:
    """A batch of finished samples as token ids (CPU lists); row i answers examples[example_idx[i]]."""

    example_idx: list[int]
    prompt_ids: list[list[int]]
    tokens: list[list[int]]  # actions and tool tokens, terminator excluded
    is_action: list[list[bool]]
    terminated: list[bool]  # False: cut at max_actions
    temperature: list[float] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def n_actions(self) -> list[int]:
        return [sum(a) for a in self.is_action]

    def state_ends(self) -> list[list[int]]:
        """For each row, the token count of s_0..s_n (s_k ends before action k+1)."""
        ends = []
        for acts in self.is_action:
            row = [i for i, a in enumerate(acts) if a]  # position of every action
            ends.append(row + [len(acts)])  # s_k ends where action k+1 starts; s_n at the end
        return ends

    def select(self, rows: list[int]) -> "Trajectories":
        pick = lambda xs: [xs[i] for i in rows]
        return Trajectories(pick(self.example_idx), pick(self.prompt_ids), pick(self.tokens),
                            pick(self.is_action), pick(self.terminated),
                            pick(self.temperature) if self.temperature else [])

    @staticmethod
    def concat(parts: list["Trajectories"]) -> "Trajectories":
        out = Trajectories([], [], [], [], [], [])
        for p in parts:
            out.example_idx += p.example_idx
            out.prompt_ids += p.prompt_ids
            out.tokens += p.tokens
            out.is_action += p.is_action
            out.terminated += p.terminated
            out.temperature += p.temperature or [1.0] * len(p)
        return out


def left_pad(seqs: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            ids[i, width - len(s):] = torch.tensor(s)
            mask[i, width - len(s):] = 1
    return ids.to(device), mask.to(device)


def positions(mask: torch.Tensor) -> torch.Tensor:
    return (mask.cumsum(-1) - 1).clamp(min=0)


class PrefixCache:
    """KV caches of shared prompt prefixes (few-shot demonstrations) under a frozen model, each
    computed once and copied for every batch that starts with it.

    Only for weights that never change while it lives (the frozen base that scores rewards and
    likelihoods): a policy's cache would go stale at its next optimizer step."""

    def __init__(self, capacity: int = 8):
        self.capacity, self.caches = capacity, {}

    def get(self, model, ids: list[int], batch: int):
        key = tuple(ids)
        if key not in self.caches:
            if len(self.caches) >= self.capacity:  # a task has a prefix or two; never grow without bound
                self.caches.pop(next(iter(self.caches)))
            self.caches[key] = _prefix_cache(model, ids)
        cache = copy.deepcopy(self.caches[key])
        cache.batch_repeat_interleave(batch)
        return cache


def _prefix_cache(model, ids: list[int]):
    device = next(model.parameters()).device
    return model(input_ids=torch.tensor([ids], device=device), use_cache=True).cache


def prefix_cache(model, ids: list[int], batch: int, memo: PrefixCache | None = None):
    """The KV cache of `ids`, repeated for `batch` rows (from `memo` when given)."""
    if memo is not None:
        return memo.get(model, ids, batch)
    cache = _prefix_cache(model, ids)
    cache.batch_repeat_interleave(batch)
    return cache


def shared_prefix(prompts: list[list[int]]) -> list[int]:
    """The longest common prefix of the prompts, short of each prompt's last token."""
    limit = min(len(p) for p in prompts) - 1
    n = 0
    while n < limit and all(p[n] == prompts[0][n] for p in prompts):
        n += 1
    return prompts[0][:n]


class GrowingCache:
    """The dynamic path's decode steps: the cache grows by a column per step and finished rows leave
    the batch and its cache at once (fewest tokens, new shapes every step)."""

    def __init__(self, model, cache, mask: torch.Tensor, last_pos: torch.Tensor):
        self.model, self.cache, self.mask, self.last_pos = model, cache, mask, last_pos

    def advance(self, tokens: list[int], keep: list[int]) -> torch.Tensor:
        """Feed `tokens` to the live rows `keep` (the others leave); their logits [len(keep), V]."""
        device = self.mask.device
        if len(keep) < self.mask.shape[0]:
            index = torch.tensor(keep, device=device)
            self.cache.batch_select_indices(index)
            self.mask, self.last_pos = self.mask[index], self.last_pos[index]
        self.mask = torch.cat([self.mask, torch.ones((len(keep), 1), dtype=self.mask.dtype, device=device)], 1)
        self.last_pos = self.last_pos + 1
        out = self.model(input_ids=torch.tensor(tokens, device=device).unsqueeze(-1), attention_mask=self.mask,
                         position_ids=self.last_pos.unsqueeze(-1), cache=self.cache, use_cache=True)
        self.cache = out.cache
        return out.logits[:, -1]


@torch.no_grad()
def sample(model, tokenizer, task: Task, rules: TokenRules, prompt_ids: list[list[int]],
           example_idx: list[int], temperature: list[float], generator: torch.Generator | None = None,
           static: StaticDecoder | None = None) -> Trajectories:
    """Sample one trajectory per prompt with a KV cache, the task's tool in the loop.

    Every live row advances one token per forward pass: it either samples an action or consumes
    the next pending tool token, so the batch's cache stays aligned without re-padding (the
    reference code dropped the whole batch's cache at every tool call). Finished rows leave the
    batch and its cache at once; with `static` (methods/engine/static_decode.py) the cache is
    preallocated and they step on padding instead, every step the same shapes for a CUDA graph.
    Either way the same rows draw from the same distributions.
    """
    device = next(model.parameters()).device
    batch = len(prompt_ids)
    # The prefix every prompt shares (few-shot demonstrations) runs once; its cache is copied to
    # every row, and the rest of each prompt follows it, left-padded: [shared | pad | rest].
    shared = shared_prefix(prompt_ids)
    ids, mask = left_pad([p[len(shared):] for p in prompt_ids], tokenizer.pad_token_id, device)
    cache = None
    if shared:
        cache = prefix_cache(model, shared, batch)
        mask = torch.cat([torch.ones((batch, len(shared)), dtype=mask.dtype, device=device), mask], 1)
    pos = positions(mask)
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos[:, len(shared):], cache=cache, use_cache=True,
                logits_to_keep=1)
    logits = out.logits[:, -1]
    steps = (GrowingCache(model, out.cache, mask, pos[:, -1]) if static is None
             else static.start(model, out.cache, mask, pos[:, -1], rules, tokenizer.pad_token_id))
    temps = torch.tensor(temperature, dtype=torch.float32, device=device).unsqueeze(-1)

    tokens: list[list[int]] = [[] for _ in range(batch)]
    is_action: list[list[bool]] = [[] for _ in range(batch)]
    pending: list[list[int]] = [[] for _ in range(batch)]  # tool tokens waiting to be inserted
    n_actions = [0] * batch
    terminated = [False] * batch
    terminator_ids = set(rules.terminators.nonzero().flatten().tolist())
    live = list(range(batch))  # rows still sampling, in the order of the cache's batch dimension
    while live:
        counts = torch.tensor([n_actions[i] for i in live], device=device)
        probs = rules.logprobs(logits, counts, temps).exp()
        drawn = torch.multinomial(probs, 1, generator=generator).squeeze(-1).tolist()
        step, keep = [], []
        for j, i in enumerate(live):
            if pending[i]:
                tok = pending[i].pop(0)
                tokens[i].append(tok)
                is_action[i].append(False)
            elif drawn[j] in terminator_ids:
                terminated[i] = True
                continue
            else:
                tok = drawn[j]
                tokens[i].append(tok)
                is_action[i].append(True)
                n_actions[i] += 1
                inserted = task.tool(tokenizer.decode(tokens[i])) if tok in rules.tool_fires_after else None
                if inserted:
                    pending[i] = tokenizer(inserted, add_special_tokens=False).input_ids
            if not pending[i] and n_actions[i] >= rules.max_actions:
                continue  # truncated: the policy never chose ⊤
            step.append(tok)
            keep.append(j)
        if not keep:
            break
        if len(keep) < len(live):
            temps = temps[torch.tensor(keep, device=device)]
            live = [live[j] for j in keep]
        logits = steps.advance(step, keep)
    return Trajectories(list(example_idx), [list(p) for p in prompt_ids], tokens, is_action, terminated, list(temperature))


@dataclass
class Scores:
    """Teacher-forced log-probs of a batch of trajectories under a model and the task's rules."""

    action_logp: torch.Tensor  # [B, A]: log q(a_{k+1} | s_k), 0 past each row's last action
    term_logp: torch.Tensor  # [B, A+1]: log q(⊤ | s_k), -inf where ⊤ is forbidden, 0 past s_n and at the
    # last state of a row cut at max_actions (a forced stop is no choice of the policy)
    state_mask: torch.Tensor  # [B, A+1] bool: s_k exists (k <= n)
    prompt_hidden: torch.Tensor | None  # [B, H]: last hidden state of the prompt (for log Z(x))
    state_hidden: torch.Tensor | None  # [B, A+1, H]: last hidden state of each state (for values)

    def __getitem__(self, rows: torch.Tensor) -> "Scores":
        pick = lambda x: None if x is None else x[rows]
        return Scores(self.action_logp[rows], self.term_logp[rows], self.state_mask[rows], pick(self.prompt_hidden),
                      pick(self.state_hidden))

    @staticmethod
    def concat(parts: list["Scores"]) -> "Scores":
        """Rows of all parts, each padded to the most actions among them (as `score` pads a batch)."""
        n = max(p.action_logp.shape[1] for p in parts)
        pad = lambda x, width, value=0.0: torch.nn.functional.pad(x, (0, width - x.shape[1]), value=value)
        hidden = lambda x: torch.nn.functional.pad(x, (0, 0, 0, n + 1 - x.shape[1]))
        return Scores(torch.cat([pad(p.action_logp, n) for p in parts]),
                      torch.cat([pad(p.term_logp, n + 1) for p in parts]),
                      torch.cat([pad(p.state_mask, n + 1, False) for p in parts]),
                      None if parts[0].prompt_hidden is None else torch.cat([p.prompt_hidden for p in parts]),
                      None if parts[0].state_hidden is None else torch.cat([hidden(p.state_hidden) for p in parts]))

    @property
    def logpf(self) -> torch.Tensor:
        """log P_F(τ) = Σ_k log q(a_k | s_{k-1}) + log q(⊤ | s_n)."""
        final = self.term_logp.masked_fill(~last_state_mask(self.state_mask), 0.0).sum(-1)
        return self.action_logp.sum(-1) + final


def last_state_mask(state_mask: torch.Tensor) -> torch.Tensor:
    n = state_mask.sum(-1) - 1
    return torch.nn.functional.one_hot(n, state_mask.shape[1]).bool()


def score(model, pad_id: int, rules: TokenRules, traj: Trajectories, *, hidden: bool = False) -> Scores:
    """One forward pass over prompt + tokens; gathers action and termination log-probs per state."""
    device = next(model.parameters()).device
    ids, mask = left_pad(traj.prompt_ids, pad_id, device)
    prompt_width = ids.shape[1]
    width = max(1, max(len(t) for t in traj.tokens))
    gen = torch.full((len(traj), width), pad_id, dtype=torch.long)
    gen_mask = torch.zeros((len(traj), width), dtype=torch.long)
    for i, t in enumerate(traj.tokens):
        gen[i, :len(t)] = torch.tensor(t, dtype=torch.long)
        gen_mask[i, :len(t)] = 1
    ids = torch.cat([ids, gen.to(device)], 1)
    mask = torch.cat([mask, gen_mask.to(device)], 1)
    # Only the last prompt token and the sample need logits: skip the LM head over the prompt.
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions(mask), output_hidden_states=hidden,
                logits_to_keep=width + 1)

    n_max = max(traj.n_actions)
    ends = traj.state_ends()
    # Position whose logits predict what follows state s_k: the last token of s_k.
    at = torch.full((len(traj), n_max + 1), prompt_width - 1, dtype=torch.long)
    state_mask = torch.zeros((len(traj), n_max + 1), dtype=torch.bool)
    actions = torch.zeros((len(traj), n_max), dtype=torch.long)
    for i, row in enumerate(ends):
        at[i, :len(row)] = torch.tensor([prompt_width + e - 1 for e in row])
        state_mask[i, :len(row)] = True
        acts = [tok for tok, a in zip(traj.tokens[i], traj.is_action[i]) if a]
        actions[i, :len(acts)] = torch.tensor(acts, dtype=torch.long)
    at, state_mask, actions = at.to(device), state_mask.to(device), actions.to(device)

    kept = at - (prompt_width - 1)  # index into the kept logits
    logits = out.logits.gather(1, kept.unsqueeze(-1).expand(-1, -1, out.logits.shape[-1]))
    k = torch.arange(n_max + 1, device=device).expand(len(traj), -1)
    logp = rules.logprobs(logits, k)
    action_logp = logp[:, :-1].gather(-1, actions.unsqueeze(-1)).squeeze(-1)
    action_logp = action_logp.masked_fill(~state_mask[:, 1:], 0.0)
    term_logp = rules.termination_logprob(logp).masked_fill(~state_mask, 0.0)
    # A row cut at max_actions never chose ⊤: the sampler forced the stop, which costs log-prob 0.
    truncated = torch.tensor([not t for t in traj.terminated], dtype=torch.bool, device=device)
    term_logp = term_logp.masked_fill(last_state_mask(state_mask) & truncated.unsqueeze(1), 0.0)
    prompt_hidden = state_hidden = None
    if hidden:
        h = out.hidden_states[-1]
        prompt_hidden = h[:, prompt_width - 1]
        state_hidden = h.gather(1, at.unsqueeze(-1).expand(-1, -1, h.shape[-1]))
    return Scores(action_logp, term_logp, state_mask, prompt_hidden, state_hidden)


def token_logprobs(model, pad_id: int, prompt_ids: list[list[int]], tokens: list[list[int]],
                   prefix_memo: PrefixCache | None = None) -> torch.Tensor:
    """[B, T] log p(token_t | prompt, tokens_<t) under the model's full distribution, 0 past the end.

    The prefix all prompts share (few-shot examples) runs once, its cache copied to every row, as
    in `sample`: [shared | pad | rest of the prompt | tokens]; `prefix_memo` keeps that cache for
    later calls (a frozen model only)."""
    device = next(model.parameters()).device
    shared = shared_prefix(prompt_ids)
    ids, mask = left_pad([p[len(shared):] for p in prompt_ids], pad_id, device)
    width = max(1, max(len(t) for t in tokens))
    gen = torch.full((len(tokens), width), pad_id, dtype=torch.long)
    gen_mask = torch.zeros((len(tokens), width), dtype=torch.long)
    for i, t in enumerate(tokens):
        gen[i, :len(t)] = torch.tensor(t, dtype=torch.long)
        gen_mask[i, :len(t)] = 1
    gen, gen_mask = gen.to(device), gen_mask.to(device)
    full_mask = torch.cat([mask, gen_mask], 1)
    cache = None
    if shared:
        cache = prefix_cache(model, shared, len(tokens), prefix_memo)
        full_mask = torch.cat([torch.ones((len(tokens), len(shared)), dtype=full_mask.dtype, device=device), full_mask], 1)
    out = model(input_ids=torch.cat([ids, gen], 1), attention_mask=full_mask,
                position_ids=positions(full_mask)[:, len(shared):], cache=cache, logits_to_keep=width + 1)
    logits = out.logits[:, :-1].float()
    logp = logits.gather(-1, gen.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)
    return logp.masked_fill(gen_mask == 0, 0.0)
