"""One object that binds a policy to a task: what every method samples, scores and rewards with.

It tokenizes each query's prompts once, chunks work into `batch_size` sequences, and keeps the
frozen base (adapters disabled, no grad) for rewards and base likelihoods. It counts the tokens
that go through the model's forward passes (`forward_tokens`), whoever calls the model.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Callable

import torch

from methods.engine.model_config import KV_CACHE_KINDS
from methods.engine.models import Policy
from methods.engine.reward import LogReward, choice_log_reward, log_reward, observation_logprobs, preferred_choice
from methods.engine.rollout import (PrefixCache, Scores, TokenRules, Trajectories, sample, score, shared_prefix,
                                    token_logprobs)
from methods.engine.static_decode import StaticDecoder
from tasks.base import Example, Task


MAX_PADDING = 0.25
"""Largest share of padding tokens in a chunk of rows scored together (see Engine.length_chunks)."""


class Engine:
    def __init__(self, policy: Policy, task: Task, batch_size: int = 64):
        self.policy, self.task, self.batch_size = policy, task, batch_size
        # Token positions computed by forward passes of the policy's model, padding included (it
        # costs as much as text): sampling steps, scoring, rewards, base likelihoods and whatever a
        # method or a selection rule runs on `policy.model`. A hook on the model, not a count in
        # each method below, so that no forward pass escapes it; only the static decoder, whose
        # compiled step must not trace the hook, reports its steps itself (`count_tokens`).
        # Backward passes are not counted.
        self.forward_tokens = 0
        self._count_hook = policy.model.register_forward_pre_hook(self._count_forward, with_kwargs=True)
        self.tokenizer = policy.tokenizer
        vocab = policy.model.get_output_embeddings().weight.shape[0]
        self.rules = TokenRules.for_task(task, self.tokenizer, vocab)
        self.pad_id = self.tokenizer.pad_token_id
        # Terminators that are text (the "." of a sentence) belong to the sample's likelihood.
        self.text_terminator_ids = (self.rules.terminators.nonzero().flatten().tolist()
                                    if getattr(task, "terminator_texts", ()) else [])
        # The frozen base's KV caches of shared prompt prefixes (the reward's worked examples).
        self.base_prefixes = PrefixCache()
        # The sampler's decode steps on a preallocated cache (model.kv_cache=static|compiled); None:
        # the dynamic cache, which finished rows leave.
        self.static_decode: StaticDecoder | None = None
        self.set_kv_cache(policy.kv_cache)
        # How evaluation decodes its n samples per query instead of `sample` (method=prompting's
        # baselines, a methods.engine.decoding.Decoding); None: the engine's own sampler.
        self.decode: Callable[[Engine, list[Example], int, torch.Generator | None], Trajectories] | None = None

        @lru_cache(maxsize=None)
        def encode(text: str, special: bool) -> tuple[int, ...]:
            return tuple(self.tokenizer(text, add_special_tokens=special).input_ids)

        self._encode = encode

    def _count_forward(self, module, args, kwargs) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            ids = kwargs.get("inputs_embeds")
            self.count_tokens(0 if ids is None else ids.shape[0] * ids.shape[1])
        else:
            self.count_tokens(ids.numel())

    def count_tokens(self, n: int) -> None:
        """Add `n` token positions to `forward_tokens`: the hook's count, and the static decoder's,
        whose steps run the model under the hooked wrapper (methods/engine/static_decode.py)."""
        self.forward_tokens += n

    def set_kv_cache(self, kind: str) -> None:
        """How `sample` runs its decode steps: dynamic | static | compiled (`model.kv_cache`, resolved)."""
        if kind not in KV_CACHE_KINDS:
            raise ValueError(f"kv_cache {kind!r}: expected one of {', '.join(KV_CACHE_KINDS)} (auto is resolved by load_policy)")
        self.static_decode = None if kind == "dynamic" else StaticDecoder(self.count_tokens, compiled=kind == "compiled")

    # --- tokenized task text ------------------------------------------------------------------
    def prompt_ids(self, ex: Example) -> list[int]:
        return list(self._encode(self.task.policy_prompt(ex), True))

    def reward_prompt_ids(self, ex: Example) -> list[int]:
        return list(self._encode(self.task.reward_prompt(ex), True))

    def observation_ids(self, ex: Example) -> list[int]:
        return list(self._encode(self.task.observation(ex), False))

    def candidates(self, ex: Example) -> tuple[list[str], list[list[int]], int] | None:
        """(candidate observations, their token ids, index of the candidate whose answer wins
        ties or -1) for a task with `choices`; else None. Reads nothing hidden."""
        choices = getattr(self.task, "choices", None)
        texts = choices(ex) if choices else None
        if texts is None:
            return None
        answers = [self.task.extract_answer(text) for text in texts]
        tie_break = getattr(self.task, "tie_break", None)
        tie = answers.index(tie_break) if tie_break is not None and tie_break in answers else -1
        return texts, [list(self._encode(text, False)) for text in texts], tie

    def _gold_index(self, ex: Example, texts: list[str]) -> int:
        """Which candidate is Y (for the reward only)."""
        gold = self.task.observation(ex)
        if gold not in texts:
            raise ValueError(f"task {self.task.name}: observation {gold!r} is not among its choices {texts}")
        return texts.index(gold)

    def _chunks(self, n: int):
        return (list(range(i, min(i + self.batch_size, n))) for i in range(0, n, self.batch_size))

    def length_chunks(self, lengths: list[int]) -> tuple[list[list[int]], torch.Tensor]:
        """Rows grouped for padded forward passes, and the permutation that puts the chunks'
        concatenated results back in row order. Sorted by length, a chunk closes at `batch_size`
        rows or before a row that would make more than `MAX_PADDING` of its tokens padding.

        A padded batch is as wide as its longest row: in sampling order, 5- and 40-action samples
        mix, and about half of a batch's tokens were padding."""
        order = sorted(range(len(lengths)), key=lengths.__getitem__)
        chunks, current, real = [], [], 0
        for i in order:
            width = lengths[i]  # ascending: the newest row is the widest of its chunk
            rows = len(current) + 1
            if current and (rows > self.batch_size or rows * width - real - width > MAX_PADDING * rows * width):
                chunks.append(current)
                current, real = [], 0
            current.append(i)
            real += width
        if current:
            chunks.append(current)
        return chunks, torch.tensor(order, dtype=torch.long).argsort()

    def reward_lengths(self, traj: Trajectories, examples: list[Example], *, per_prefix: bool) -> list[int]:
        """Tokens of each row's one-pass reward sequence: the reward prompt less the prefix all rows
        share (its cache is computed once), the sample, and per state one copy of every candidate
        observation less its last token (methods/engine/reward.py)."""
        prompts = [self.reward_prompt_ids(examples[i]) for i in traj.example_idx]
        shared = len(shared_prefix(prompts)) if prompts else 0
        lengths = []
        for i, tokens in enumerate(traj.tokens):
            ex = examples[traj.example_idx[i]]
            plan = self.candidates(ex)
            ys = plan[1] if plan is not None else [self.observation_ids(ex)]
            states = traj.n_actions[i] + 1 if per_prefix else 1
            lengths.append(len(prompts[i]) - shared + len(tokens) + states * sum(len(y) - 1 for y in ys))
        return lengths

    # --- sampling and scoring -------------------------------------------------------------------
    def sample(self, examples: list[Example], temperatures: list[float],
               generator: torch.Generator | None = None) -> Trajectories:
        """One trajectory per entry of `examples` (repeat an example for several samples)."""
        parts = []
        for rows in self._chunks(len(examples)):
            parts.append(sample(self.policy.model, self.tokenizer, self.task, self.rules,
                                [self.prompt_ids(examples[i]) for i in rows], rows,
                                [temperatures[i] for i in rows], generator, self.static_decode))
        return Trajectories.concat(parts)

    def score(self, traj: Trajectories, *, hidden: bool = False) -> Scores:
        """Policy log-probs with gradients (the caller sizes the batch), rows in their own order.

        The rows go through the model in chunks of similar length (`length_chunks`): a batch of
        5- to 40-action samples padded to its longest row was more than half padding."""
        chunks, restore = self.length_chunks([len(p) + len(t) for p, t in zip(traj.prompt_ids, traj.tokens)])
        if len(chunks) == 1:
            return score(self.policy.model, self.pad_id, self.rules, traj, hidden=hidden)
        parts = [score(self.policy.model, self.pad_id, self.rules, traj.select(rows), hidden=hidden) for rows in chunks]
        return Scores.concat(parts)[restore.to(parts[0].action_logp.device)]

    def log_reward(self, traj: Trajectories, examples: list[Example], *, per_prefix: bool) -> torch.Tensor:
        """Untempered log R per state [B, A+1] (or of the final state, [B]) under the frozen base,
        shaping included: `log_reward_parts(...).total`."""
        return self.log_reward_parts(traj, examples, per_prefix=per_prefix).total

    def log_reward_parts(self, traj: Trajectories, examples: list[Example], *, per_prefix: bool) -> LogReward:
        """Untempered log R per state [B, A+1] (or of the final state, [B]) under the frozen base,
        as the part the reward temperature divides and the shaping added after it.

        For a task with `choices`: base log p_base(s, Y_gold | reward prompt), shaping the task's
        `wrong_choice_penalty` at states after which the base prefers another candidate."""
        parts, width = [], max(traj.n_actions) + 1
        chunks, restore = self.length_chunks(self.reward_lengths(traj, examples, per_prefix=per_prefix))
        with self.policy.base():
            for rows in chunks:
                part = traj.select(rows)
                exs = [examples[i] for i in part.example_idx]
                prompts = [self.reward_prompt_ids(e) for e in exs]
                plans = [self.candidates(e) for e in exs]
                if plans[0] is None:
                    r = LogReward(log_reward(self.policy.model, self.pad_id, prompts,
                                             [self.observation_ids(e) for e in exs], part, per_prefix=per_prefix,
                                             tool_tokens=getattr(self.task, "reward_tool_outputs", True),
                                             prefix_memo=self.base_prefixes))
                else:
                    r = self._choice_reward(part, exs, prompts, plans, per_prefix)
                parts.append(r.pad(width) if per_prefix else r)
        return LogReward.concat(parts)[restore.to(parts[0].base.device)]

    def _choice_reward(self, part: Trajectories, exs: list[Example], prompts: list[list[int]], plans: list,
                       per_prefix: bool) -> LogReward:
        logp = observation_logprobs(self.policy.model, self.pad_id, prompts, [plan[1] for plan in plans], part,
                                    per_prefix=per_prefix, prefix_memo=self.base_prefixes)
        device = logp.device
        gold = torch.tensor([self._gold_index(e, plan[0]) for e, plan in zip(exs, plans)], device=device)
        tie = torch.tensor([plan[2] for plan in plans], device=device)
        n_states = torch.tensor([len(e) if per_prefix else 1 for e in part.state_ends()], device=device)
        exists = torch.arange(logp.shape[1], device=device) < n_states.unsqueeze(1)
        r = choice_log_reward(logp, gold, tie, getattr(self.task, "wrong_choice_penalty", 0.0), exists)
        return r if per_prefix else r[:, 0]

    def answers(self, traj: Trajectories, examples: list[Example]) -> list[str | None]:
        """Each row's answer: `extract_answer` of its text, or for a task with `choices`, of the
        candidate observation the frozen base LM prefers after it (never reading the gold)."""
        if not len(traj) or self.candidates(examples[traj.example_idx[0]]) is None:
            return [self.task.extract_answer(text) for text in self.texts(traj)]
        out = []
        chunks, restore = self.length_chunks(self.reward_lengths(traj, examples, per_prefix=False))
        with self.policy.base():
            for rows in chunks:
                part = traj.select(rows)
                exs = [examples[i] for i in part.example_idx]
                plans = [self.candidates(e) for e in exs]
                logp = observation_logprobs(self.policy.model, self.pad_id, [self.reward_prompt_ids(e) for e in exs],
                                            [plan[1] for plan in plans], part, per_prefix=False,
                                            prefix_memo=self.base_prefixes)[:, 0]
                tie = torch.tensor([plan[2] for plan in plans], device=logp.device)
                best = preferred_choice(logp, tie).tolist()
                out += [self.task.extract_answer(plan[0][i]) for plan, i in zip(plans, best)]
        return [out[i] for i in restore.tolist()]

    def base_logprobs(self, traj: Trajectories) -> torch.Tensor:
        """[B, T] log p_base of every sample token (actions and tool tokens) given the policy prompt.

        Rows that repeat an earlier row (same prompt, same tokens: common among evaluation samples
        at a low temperature) are computed once."""
        slots: dict[tuple, int] = {}  # (prompt, tokens) -> its row in `unique`
        slot_of = [slots.setdefault((tuple(p), tuple(t)), len(slots)) for p, t in zip(traj.prompt_ids, traj.tokens)]
        first_rows = {}
        for i, slot in enumerate(slot_of):
            first_rows.setdefault(slot, i)
        unique = traj.select(list(first_rows.values()))
        parts, width = [], max(1, max(len(t) for t in traj.tokens))
        chunks, restore = self.length_chunks([len(p) + len(t) for p, t in zip(unique.prompt_ids, unique.tokens)])
        with self.policy.base():
            for rows in chunks:
                part = unique.select(rows)
                lp = token_logprobs(self.policy.model, self.pad_id, part.prompt_ids, part.tokens, self.base_prefixes)
                parts.append(torch.nn.functional.pad(lp, (0, width - lp.shape[1])))
        out = torch.cat(parts)[restore.to(parts[0].device)]  # rows of `unique`
        return out[torch.tensor(slot_of, device=out.device)]

    def base_loglik(self, traj: Trajectories) -> torch.Tensor:
        """[B], on the CPU: log p_base of each sample given the policy prompt: its tokens, and for a
        row that ended on a text terminator (the "." of a sentence) that end too, as
        log Σ_t p_base(t) over the terminator tokens t (exact with one terminator token)."""
        if not self.text_terminator_ids:
            return self.base_logprobs(traj).sum(-1).cpu()
        lengths = torch.tensor([len(t) for t in traj.tokens])
        ended = torch.tensor(traj.terminated)
        body, end_logps = None, []
        for tok in self.text_terminator_ids:
            extended = Trajectories(traj.example_idx, traj.prompt_ids,
                                    [t + [tok] if done else t for t, done in zip(traj.tokens, traj.terminated)],
                                    [a + [True] if done else a for a, done in zip(traj.is_action, traj.terminated)],
                                    traj.terminated, traj.temperature)
            lp = self.base_logprobs(extended).cpu()
            if body is None:  # the sample's own tokens are the same in every extension
                body = lp.masked_fill(torch.arange(lp.shape[1]) >= lengths.unsqueeze(1), 0.0).sum(-1)
            end_logps.append(lp.gather(1, lengths.clamp(max=lp.shape[1] - 1).unsqueeze(1)).squeeze(1))
        end = torch.stack(end_logps).logsumexp(0)
        return body + torch.where(ended, end, torch.zeros_like(end))

    def demonstrations(self, examples: list[Example]) -> Trajectories:
        """Trajectories of the examples' rationales, tool outputs marked as environment tokens.

        Actions keep the tokenization the tokenizer gives each piece; terminated is True (⊤ follows).
        """
        tokens, is_action = [], []
        for ex in examples:
            row, acts = [], []
            for text, is_tool in self.task.segments(ex.rationale or ""):
                ids = list(self._encode(text, False))
                row += ids
                acts += [not is_tool] * len(ids)
            tokens.append(row)
            is_action.append(acts)
        return Trajectories(list(range(len(examples))), [self.prompt_ids(e) for e in examples],
                            tokens, is_action, [True] * len(examples), [1.0] * len(examples))

    def seed_trajectories(self, examples: list[Example], n_per_example: int,
                          generator: torch.Generator | None = None) -> Trajectories:
        """Replay-buffer seeds: `n_per_example` samples per example from the frozen base after the
        task's `seed_prompt` (which may show the answer), at T=1 under the task's token rules.

        Each sample is cut before its first token whose text, less one leading space, is not
        alphanumeric (str.isalnum), and dropped when fewer than the task's min_actions actions
        remain, so an example may get fewer seeds. A cut row is terminated (⊤ follows the cut). Rows
        carry the policy prompt and index `examples`, so they replay as ordinary samples."""
        rows = [i for i in range(len(examples)) for _ in range(n_per_example)]
        prompts = []
        for ex in examples:
            text = self.task.seed_prompt(ex) if hasattr(self.task, "seed_prompt") else None
            if text is None:
                raise ValueError(f"task {self.task.name} has no seed_prompt to sample replay seeds after")
            prompts.append(list(self._encode(text, True)))
        parts = []
        with self.policy.base():
            for chunk in self._chunks(len(rows)):
                parts.append(sample(self.policy.model, self.tokenizer, self.task, self.rules,
                                    [prompts[rows[j]] for j in chunk], [rows[j] for j in chunk], [1.0] * len(chunk),
                                    generator, self.static_decode))
        drawn = Trajectories.concat(parts)
        seeds = Trajectories([], [], [], [], [], [])
        for b, tokens in enumerate(drawn.tokens):
            texts = self.tokenizer.batch_decode([[t] for t in tokens])
            cut = next((j for j, text in enumerate(texts) if not (text[1:] if text.startswith(" ") else text).isalnum()),
                       len(tokens))
            if sum(drawn.is_action[b][:cut]) < self.rules.min_actions:
                continue
            seeds.example_idx.append(drawn.example_idx[b])
            seeds.prompt_ids.append(self.prompt_ids(examples[drawn.example_idx[b]]))
            seeds.tokens.append(tokens[:cut])
            seeds.is_action.append(drawn.is_action[b][:cut])
            seeds.terminated.append(cut < len(tokens) or drawn.terminated[b])
            seeds.temperature.append(1.0)
        return seeds

    def texts(self, traj: Trajectories) -> list[str]:
        return self.tokenizer.batch_decode(traj.tokens)
