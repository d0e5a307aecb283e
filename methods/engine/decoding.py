"""Decoding baselines of `method=prompting` (paper section 4.1, notes/paper.md 3.2): greedy, beam
search, diverse beam search, nucleus and tempered sampling, all from the base LM (adapter off).

Evaluation (methods/engine/evaluate.py) hands its queries and n = train.eval_samples to the
engine's `Decoding` when one is set, and every decoding returns n rows per query, query by query:
- greedy: the one greedy sample, n copies (decoded once);
- nucleus: n samples, each token drawn at temperature 1 from the smallest set of most likely
  tokens that holds `top_p` of the probability (Holtzman et al. 2020);
- tempered: n samples at `temperature`;
- beam: the n best of n * beams beams;
- diverse_beam: n * beam_groups groups of beams / beam_groups beams, each penalized for the tokens
  that earlier groups chose at the same step (Hamming diversity, Vijayakumar et al. 2016); the n
  best of the groups' best sequences.
Beams are ranked by their log-probability, without length normalization (the paper's baselines
use `length_penalty=0`); the diversity penalty only steers which beams a group keeps at each step.
Should a task allow fewer distinct sequences than asked for, the best ones repeat.

Every decoding keeps the task's rules: allowed tokens, no ending before `min_actions`, a cut at
`max_actions`. Ending a sample (⊤) is one action whose probability is the total of the terminator
tokens, as in the engine's log P_F, so greedy and beam search weigh "stop here" as a whole against
each token, and a beam never ends twice on one prefix through two terminators.

Greedy, nucleus and tempered run in the engine's sampler, so a task's tool stays in the loop. Beam
searches keep every beam at the same length and have no tool: they refuse tasks with one.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, get_args

import torch

from methods.engine.rollout import NEG_INF, TokenRules, Trajectories, left_pad, positions, sample
from tasks.base import Example, Task

if TYPE_CHECKING:
    from methods.engine.engine import Engine

DecodingName = Literal["sample", "greedy", "beam", "diverse_beam", "nucleus", "tempered"]
DECODINGS: tuple[str, ...] = get_args(DecodingName)
SAMPLER_DECODINGS = ("greedy", "nucleus", "tempered")  # run in the engine's sampler: tools supported
BEAM_DECODINGS = ("beam", "diverse_beam")


# --- token-level rules --------------------------------------------------------------------------

def first_terminator(rules: TokenRules) -> int:
    """The token that carries ⊤ after `merge_terminators` (which one does not matter: terminators
    are not kept in a sample)."""
    return int(rules.terminators.nonzero()[0])


def merge_terminators(rules: TokenRules, logp: torch.Tensor) -> torch.Tensor:
    """`logp` [..., V] with the whole probability of ⊤ on `first_terminator`, the other
    terminators at -inf: a distribution over actions and ⊤, the engine's action space."""
    merged = logp.masked_fill(rules.terminators.to(logp.device), NEG_INF)
    merged[..., first_terminator(rules)] = rules.termination_logprob(logp)
    return merged


def keep_top_p(logp: torch.Tensor, top_p: float) -> torch.Tensor:
    """`logp` [..., V] renormalized over the smallest set of most likely tokens that holds `top_p`
    of the probability. The most likely token is always kept, so top_p=0 keeps only it (greedy);
    among equally likely tokens the lower id comes first, as with argmax."""
    ranked, order = logp.sort(dim=-1, descending=True, stable=True)
    probs = ranked.exp()
    drop = probs.cumsum(-1) - probs >= top_p  # the mass before a token already reaches top_p
    drop[..., 0] = False
    return logp.masked_fill(drop.scatter(-1, order, drop), NEG_INF).log_softmax(-1)


@dataclass
class NucleusRules(TokenRules):
    """The task's rules with ⊤ as one token, truncated to the nucleus: what the engine's sampler
    draws from for greedy (top_p=0) and nucleus sampling."""

    top_p: float = 1.0

    @classmethod
    def of(cls, rules: TokenRules, top_p: float) -> "NucleusRules":
        return cls(rules.allowed, rules.terminators, rules.min_actions, rules.max_actions, rules.tool_fires_after, top_p)

    def logprobs(self, logits: torch.Tensor, n_actions: torch.Tensor, temperature: torch.Tensor | float = 1.0) -> torch.Tensor:
        return keep_top_p(merge_terminators(self, super().logprobs(logits, n_actions, temperature)), self.top_p)


# --- beam search --------------------------------------------------------------------------------

@dataclass
class Beam:
    tokens: list[int]
    logp: float  # log-prob of its actions under the task's rules, plus that of ⊤ once it has ended
    terminated: bool = False  # ended by ⊤; False when cut at max_actions


@dataclass
class BeamGroup:
    """Up to `width` live beams of one query, and the beams that have ended."""

    query: int
    width: int
    live: list[Beam]
    ended: list[Beam] = field(default_factory=list)

    def best_ended(self) -> list[Beam]:
        return sorted(self.ended, key=lambda beam: -beam.logp)

    def done(self) -> bool:
        """No live beam can beat the `width`-th best ended one: log-probs only fall as beams grow."""
        if not self.live:
            return True
        return len(self.ended) >= self.width and self.best_ended()[self.width - 1].logp >= max(b.logp for b in self.live)

    def advance(self, logp: torch.Tensor, penalty: torch.Tensor | None, terminator: int) -> list[int]:
        """Extends the live beams by one token, given their next-token log-probs [live, V] with ⊤
        on `terminator`; returns the live row each new live beam continues.

        As in Hugging Face's beam search, the 2 * width best candidates are read in order: an
        ending among the `width` best ends a beam, the first `width` continuations stay live.
        `penalty` [V] is subtracted from the candidates' rank only, never from their log-prob.
        """
        total = logp + torch.tensor([b.logp for b in self.live], device=logp.device).unsqueeze(-1)
        ranking = total if penalty is None else total - penalty
        ranked, flat = ranking.flatten().topk(min(2 * self.width, ranking.numel()))
        after = total.flatten()[flat].tolist()
        live, parents = [], []
        for rank, (value, index, logp_after) in enumerate(zip(ranked.tolist(), flat.tolist(), after)):
            if value == NEG_INF or len(live) == self.width:
                break
            parent, token = divmod(index, logp.shape[-1])
            if token == terminator:
                if rank < self.width:
                    self.ended.append(Beam(self.live[parent].tokens, logp_after, terminated=True))
            else:
                live.append(Beam(self.live[parent].tokens + [token], logp_after))
                parents.append(parent)
        self.live = live
        return parents


def tool_error(decoding: str, task: Task) -> ValueError:
    return ValueError(f"method.decoding={decoding} cannot decode task {task.name!r}: its tool inserts text, which "
                      f"beam searches do not support; use method.decoding=sample, {', '.join(SAMPLER_DECODINGS)}")


@torch.no_grad()
def beam_search(model, tokenizer, task: Task, rules: TokenRules, prompt_ids: list[list[int]],
                shapes: list[tuple[int, int]], diversity_penalty: float, decoding: str = "beam") -> list[list[list[Beam]]]:
    """(Diverse) beam search with a KV cache, from each prompt q in `shapes[q] = (groups, width)`.

    Returns, per prompt, each group's ended beams, best first. Groups are searched in order at
    every step; each token that earlier groups of the same prompt continued with at that step
    costs `diversity_penalty` in the rank of a candidate. All live beams are one token longer
    after every step, so a task's tool, which would insert tokens into some beams only, raises.
    """
    device = next(model.parameters()).device
    ids, mask = left_pad(prompt_ids, tokenizer.pad_token_id, device)
    pos = positions(mask)
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1)
    groups = [BeamGroup(q, width, [Beam([], 0.0)]) for q, (n_groups, width) in enumerate(shapes) for _ in range(n_groups)]
    rows = torch.tensor([g.query for g in groups], device=device)  # one cache row per group's first beam
    cache = out.cache
    cache.reorder_cache(rows)
    logits, mask, last_pos = out.logits[rows, -1], mask[rows], pos[rows, -1]
    terminator = first_terminator(rules)
    active, step = groups, 0
    while True:
        logp = merge_terminators(rules, rules.logprobs(logits, torch.tensor(step, device=device)))
        chosen: dict[int, torch.Tensor] = {}  # query -> how often its earlier groups chose each token now
        parents, next_tokens, still, row = [], [], [], 0
        for g in active:
            n_live = len(g.live)
            penalty = diversity_penalty * chosen[g.query] if g.query in chosen else None
            continued = g.advance(logp[row:row + n_live], penalty, terminator)
            if any(b.tokens[-1] in rules.tool_fires_after and task.tool(tokenizer.decode(b.tokens)) for b in g.live):
                raise tool_error(decoding, task)
            if diversity_penalty > 0:
                picked = torch.tensor([b.tokens[-1] for b in g.live], dtype=torch.long, device=device)
                counts = chosen.get(g.query, torch.zeros(logp.shape[-1], device=device))
                chosen[g.query] = counts.index_add(0, picked, torch.ones(len(picked), device=device))
            if step + 1 == rules.max_actions:  # cut: the live beams end without ⊤
                g.ended += g.live
                g.live = []
            if not g.done():
                parents += [row + p for p in continued]
                next_tokens += [b.tokens[-1] for b in g.live]
                still.append(g)
            row += n_live
        active, step = still, step + 1
        if not active:
            break
        index = torch.tensor(parents, device=device)
        cache.reorder_cache(index)
        mask = torch.cat([mask[index], torch.ones((len(parents), 1), dtype=mask.dtype, device=device)], 1)
        last_pos = last_pos[index] + 1
        out = model(input_ids=torch.tensor(next_tokens, device=device).unsqueeze(-1), attention_mask=mask,
                    position_ids=last_pos.unsqueeze(-1), cache=cache, use_cache=True)
        cache, logits = out.cache, out.logits[:, -1]
    return [[g.best_ended() for g in groups if g.query == q] for q in range(len(prompt_ids))]


# --- what evaluation calls --------------------------------------------------------------------------

def uses_tool(task: Task) -> bool:
    """Whether the task's worked demonstrations show tool output (the arithmetic calculator)."""
    return any(is_tool for ex in task.demonstrations() for _, is_tool in task.segments(ex.rationale or ""))


def base_sample(engine: "Engine", examples: list[Example], temperatures: list[float], rules: TokenRules,
                generator: torch.Generator | None) -> Trajectories:
    """The engine's sampler (tool in the loop) from the base LM under `rules`; row i answers examples[i]."""
    parts = []
    with engine.policy.base():
        for start in range(0, len(examples), engine.batch_size):
            rows = list(range(start, min(start + engine.batch_size, len(examples))))
            parts.append(sample(engine.policy.model, engine.tokenizer, engine.task, rules,
                                [engine.prompt_ids(examples[i]) for i in rows], rows,
                                [temperatures[i] for i in rows], generator, engine.static_decode))
    return Trajectories.concat(parts)


@dataclass
class Decoding:
    """A decoding baseline (see the module docstring); the fields are method=prompting's."""

    name: str  # greedy | beam | diverse_beam | nucleus | tempered (sample is the engine's own sampler)
    beams: int  # beams per sample asked
    beam_groups: int  # diverse_beam groups per sample asked
    diversity_penalty: float
    top_p: float
    temperature: float

    def __post_init__(self):
        if self.name not in SAMPLER_DECODINGS + BEAM_DECODINGS:
            raise ValueError(f"method.decoding={self.name} is not one of: {', '.join(SAMPLER_DECODINGS + BEAM_DECODINGS)}")
        if self.beams < 1 or self.beam_groups < 1:
            raise ValueError(f"method.beams={self.beams} and method.beam_groups={self.beam_groups} must be >= 1")
        if self.beams % self.beam_groups:
            raise ValueError(f"method.beams={self.beams} must be a multiple of method.beam_groups={self.beam_groups} "
                             "(each group has beams / beam_groups beams)")
        if self.diversity_penalty < 0:
            raise ValueError(f"method.diversity_penalty={self.diversity_penalty} must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"method.top_p={self.top_p} must be in (0, 1]")
        if self.temperature <= 0:
            raise ValueError(f"method.temperature={self.temperature} must be > 0")

    def check(self, task: Task) -> None:
        """Refuses, before any decoding, a beam search on a task whose demonstrations use a tool."""
        if self.name in BEAM_DECODINGS and uses_tool(task):
            raise tool_error(self.name, task)

    def __call__(self, engine: "Engine", queries: list[Example], samples: int,
                 generator: torch.Generator | None = None) -> Trajectories:
        """`samples` rows per query, query by query: row i answers queries[i // samples] (and its
        example_idx is i, an index into the queries each repeated `samples` times)."""
        repeated = [ex for ex in queries for _ in range(samples)]
        if self.name == "tempered":
            return base_sample(engine, repeated, [self.temperature] * len(repeated), engine.rules, generator)
        if self.name == "nucleus":
            return base_sample(engine, repeated, [1.0] * len(repeated), NucleusRules.of(engine.rules, self.top_p), generator)
        if self.name == "greedy":
            once = base_sample(engine, queries, [1.0] * len(queries), NucleusRules.of(engine.rules, 0.0), generator)
            traj = once.select([q for q in range(len(queries)) for _ in range(samples)])
            traj.example_idx = list(range(len(repeated)))
            return traj
        return self.beam_search(engine, queries, samples)

    def beam_search(self, engine: "Engine", queries: list[Example], samples: int) -> Trajectories:
        self.check(engine.task)
        diverse = self.name == "diverse_beam"
        shape = (samples * self.beam_groups, self.beams // self.beam_groups) if diverse else (1, samples * self.beams)
        # Chunks of queries whose beams fill one forward pass of engine.batch_size rows (one query at least).
        per_chunk = max(1, engine.batch_size // (samples * self.beams))
        picked: list[Beam] = []
        with engine.policy.base():
            for start in range(0, len(queries), per_chunk):
                chunk = queries[start:start + per_chunk]
                found = beam_search(engine.policy.model, engine.tokenizer, engine.task, engine.rules,
                                    [engine.prompt_ids(ex) for ex in chunk], [shape] * len(chunk),
                                    self.diversity_penalty if diverse else 0.0, self.name)
                for groups in found:
                    best = sorted((g[0] for g in groups), key=lambda b: -b.logp) if diverse else groups[0]
                    picked += [best[i % len(best)] for i in range(samples)]
        return Trajectories(list(range(len(picked))), [engine.prompt_ids(ex) for ex in queries for _ in range(samples)],
                            [b.tokens for b in picked], [[True] * len(b.tokens) for b in picked],
                            [b.terminated for b in picked], [1.0] * len(picked))
