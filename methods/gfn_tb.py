"""GFlowNet fine-tuning (Hu et al. 2024): train q(Z | X) to sample Z in proportion to R(Z).

Three objectives over the same trajectories (log P_B = 0: left-to-right generation is a tree):
- `tb`: trajectory balance, (log Z(x) + log P_F(τ) - log R(τ)/T)², with log Z(x) a learned linear
  head on the prompt's last hidden state (each query has its own partition function).
- `vargrad`: log Z(x) estimated by the batch mean of log R/T - log P_F over samples of one query.
- `subtb`: the paper's modified sub-trajectory balance, with the flow of a state
  log F(s) = log R(s)/T - log q(⊤ | s) where ⊤ is allowed, a learned log F(s) where it is not
  (s_0 and states before the minimum length: the reference left their actions without gradient),
  and pairs weighted by λ^(j-i-1).

Behaviour policy per query and step, as in the paper: replayed top-reward samples (if the query
has any), tempered sampling with T ~ U[pf_temp_low, pf_temp_high], or on-policy sampling.
The buffer of a query is seeded when the query is first drawn (`seed_buffer`): with samples of the
frozen base after the task's seed prompt where the task has one (SUBJ, as the paper: 20 per
example after `... This review is {label} because it is`, cut at the first non-alphanumeric token),
else with the task's demonstrations' rationales; seeds are scored with the normal reward.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch

from methods.base import WARMUP_HELP, QuerySampler, RewardTemperature, TrainContext, check_finite, micro_batches, warmup_schedule
from methods.engine.replay import ReplayBuffer, stored_log_rewards
from methods.engine.rollout import Trajectories
from tasks.base import Example, Task

LOSSES = ("tb", "subtb", "vargrad")
REPLAYS = ("uniform", "reward")


@dataclass
class Config(RewardTemperature):
    loss: str = field(default="subtb", metadata={"help": f"objective: {' | '.join(LOSSES)}"})
    lr: float = field(default=1e-4, metadata={"range": "(0, inf)", "help": "learning rate of the LoRA parameters (paper: 1e-4)"})
    lr_logz: float = field(default=1e-2, metadata={"range": "[0, inf)",
        "help": "learning rate of the flow head: log Z(x) for tb, log F(s) at the states where ⊤ is forbidden for subtb"})
    logz_init: float | None = field(default=None, metadata={"range": "(-inf, inf)",
        "help": "initial log Z(x) of tb and subtb's flow head; unset: the first batch's estimate (the mean of "
                "log R/T - log P_F), so that a far-off start does not dominate the first steps"})
    subtb_lambda: float = field(default=1.0, metadata={"range": "[0, inf)", "help": "weight λ^(j-i-1) of a sub-trajectory of length j-i (paper: 1)"})
    warmup_frac: float = field(default=0.01, metadata={"range": "[0, 1]", "help": WARMUP_HELP})
    max_grad_norm: float = field(default=1.0, metadata={"range": "(0, inf)", "help": "gradient clipping norm"})
    p_replay: float = field(default=0.25, metadata={"range": "[0, 1]", "help": "share of queries whose samples come from the replay buffer (a query with an empty buffer samples tempered instead)"})
    p_tempered: float = field(default=0.5, metadata={"range": "[0, 1]", "help": "share of queries sampled at a temperature T ~ U[pf_temp_low, pf_temp_high]; the remaining 1 - p_replay - p_tempered, if any, sample on-policy at T=1"})
    pf_temp_low: float = field(default=0.5, metadata={"range": "(0, inf)", "help": "lowest sampling temperature of tempered exploration"})
    pf_temp_high: float = field(default=2.0, metadata={"range": "(0, inf)", "help": "highest sampling temperature of tempered exploration"})
    replay: str = field(default="uniform", metadata={
        "help": "how a replayed query draws its buffer items: uniform (the paper) | reward (in proportion to "
                "R^(1/T) at the current reward temperature: the best items, seeded demonstrations included, "
                "come back most)"})
    buffer_size: int = field(default=50, metadata={"range": "[1, inf)", "help": "replay buffer items kept per query (highest reward first)"})
    seed_buffer: bool = field(default=True, metadata={"help": "seed a query's buffer when first drawn: base-LM samples after the task's seed prompt (SUBJ), else its worked rationales"})


# --- losses (per-batch tensors in, scalar out) ---------------------------------------------------

def tb_loss(log_z: torch.Tensor, logpf: torch.Tensor, log_r: torch.Tensor) -> torch.Tensor:
    """Trajectory balance. log_z, logpf, log_r (tempered): [B]."""
    return (log_z + logpf - log_r).pow(2).mean()


def vargrad_loss(logpf: torch.Tensor, log_r: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """Variance of log P_F - log R within each query's samples; `group` [B] names the query."""
    s = logpf - log_r
    _, inverse, counts = group.unique(return_inverse=True, return_counts=True)
    means = torch.zeros(len(counts), dtype=s.dtype, device=s.device).index_add_(0, inverse, s) / counts
    return (s - means[inverse]).pow(2).mean()


def subtb_loss(action_logp: torch.Tensor, term_logp: torch.Tensor, log_r: torch.Tensor,
               state_mask: torch.Tensor, lam: float, log_flow: torch.Tensor) -> torch.Tensor:
    """Modified sub-trajectory balance over every pair of states i < j of each trajectory.

    action_logp [B, A]; term_logp, log_r (tempered), state_mask, log_flow [B, A+1]. The flow of a
    state where ⊤ is allowed is the paper's log F(s) = log R(s)/T - log q(⊤ | s). Where ⊤ is
    forbidden (s_0 and the states before the task's minimum length) no reward defines it, so it is
    `log_flow`, a learned estimate (at s_0, log Z(x)): with it every action, the first ones
    included, lies inside some balanced sub-trajectory. Each pair's residual telescopes the
    per-step ones: log F(s_i) + Σ_{i<=k<j} log q(a_k) - log F(s_j). Each trajectory's squared
    residuals are averaged with weights λ^(j-i-1), and the loss is the mean over trajectories: every
    trajectory counts once whatever its length, and micro-batches accumulate to the batch's loss.
    """
    terminable = state_mask & torch.isfinite(term_logp)
    log_f = torch.where(terminable, log_r - term_logp, log_flow)
    log_f = torch.where(state_mask, log_f, torch.zeros_like(log_f))
    cum = torch.cat([torch.zeros_like(action_logp[:, :1]), action_logp.cumsum(-1)], -1)  # Σ_{k<j} log q(a_k)
    resid = log_f.unsqueeze(2) + cum.unsqueeze(1) - cum.unsqueeze(2) - log_f.unsqueeze(1)  # [B, i, j]
    n = log_f.shape[1]
    idx = torch.arange(n, device=log_f.device)
    span = idx.view(1, -1) - idx.view(-1, 1)  # j - i
    weight = torch.where(span > 0, torch.tensor(lam, dtype=log_f.dtype, device=log_f.device).pow((span - 1).clamp(min=0)), 0.0)
    pair = state_mask.unsqueeze(2) & state_mask.unsqueeze(1) & (span > 0)
    w = weight * pair
    per_row = (w * resid.pow(2)).sum((1, 2)) / w.sum((1, 2)).clamp(min=1e-12)
    return per_row.mean()


def first_flow_estimate(action_logp: torch.Tensor, term_logp: torch.Tensor, log_r: torch.Tensor,
                        state_mask: torch.Tensor) -> torch.Tensor:
    """Batch mean of log F(s_m) - Σ_{k<m} log q(a_k) at each row's first terminable state s_m:
    the flow at s_0 that those states imply (their mean log Z(x)). It initializes the flow head,
    whose error would otherwise dominate the first steps' gradients."""
    terminable = state_mask & torch.isfinite(term_logp)
    first = terminable.float().argmax(-1, keepdim=True)
    cum = torch.cat([torch.zeros_like(action_logp[:, :1]), action_logp.cumsum(-1)], -1)
    estimate = (log_r - term_logp).gather(1, first) - cum.gather(1, first)
    return estimate[terminable.any(-1)].mean()


# --- training ----------------------------------------------------------------------------------

class UnseededQueries:
    """Examples whose replay-buffer seeds are not made yet. Each is seeded when its query is first
    drawn: seeding all up front would cost sampling and a reward pass for every one before the first step."""

    def __init__(self, examples: list[Example]):
        self.pending = {ex.query: ex for ex in examples}

    def take(self, batch: list[Example]) -> list[Example]:
        """The pending examples of the queries in `batch`, no longer pending."""
        return [self.pending.pop(ex.query) for ex in batch if ex.query in self.pending]

    def state_dict(self) -> dict:
        return {"pending": list(self.pending)}

    def load_state_dict(self, state: dict) -> None:
        self.pending = {query: self.pending[query] for query in state["pending"]}


def check(cfg: Config, task: Task) -> None:
    """Refuse, before a run starts, what no single setting's range can say (the harness calls
    this; `train` too)."""
    if cfg.loss not in LOSSES:
        raise ValueError(f"method.loss must be one of {', '.join(LOSSES)}, got {cfg.loss!r}")
    if cfg.replay not in REPLAYS:
        raise ValueError(f"method.replay must be one of {', '.join(REPLAYS)}, got {cfg.replay!r}")
    if cfg.pf_temp_low > cfg.pf_temp_high:
        raise ValueError(f"method.pf_temp_low: expected at most method.pf_temp_high ({cfg.pf_temp_high}), "
                         f"got {cfg.pf_temp_low}")


def train(ctx: TrainContext, cfg: Config) -> None:
    check(cfg, ctx.task)
    engine, policy, budget = ctx.engine, ctx.policy, ctx.train
    device = policy.device
    rng = random.Random(ctx.seed)
    generator = torch.Generator(device=device).manual_seed(ctx.seed)
    per_prefix = cfg.loss == "subtb"

    # log F(s) from the policy's last hidden state at s (detached: the head learns the flow, the
    # LoRA learns the policy); at s_0 it is log Z(x). tb reads it at s_0, subtb wherever ⊤ is forbidden.
    flow_head = torch.nn.Linear(policy.hidden_size, 1).to(device)
    torch.nn.init.zeros_(flow_head.weight)
    torch.nn.init.constant_(flow_head.bias, 0.0 if cfg.logz_init is None else cfg.logz_init)
    learned_flow = cfg.loss in ("tb", "subtb")
    groups = [{"params": policy.trainable_parameters(), "lr": cfg.lr}]
    if learned_flow:
        groups.append({"params": list(flow_head.parameters()), "lr": cfg.lr_logz})
    params = [p for g in groups for p in g["params"]]
    ctx.parallel.sync(params)
    optimizer = torch.optim.AdamW(groups)
    schedule = warmup_schedule(optimizer, cfg.warmup_frac, budget.steps)

    pool = ctx.task.demonstrations() + ctx.task.train_examples()
    queries = QuerySampler(pool, ctx.seed)
    buffer = ReplayBuffer(cfg.buffer_size)
    n_seeds = getattr(ctx.task, "seed_rationales", 0)  # > 0: seeds sampled from the base after the task's seed prompt
    seedable = ctx.task.train_examples() if n_seeds else [ex for ex in ctx.task.demonstrations() if ex.rationale]
    unseeded = UnseededQueries(seedable if cfg.seed_buffer else [])
    resumable = {"optimizer": optimizer, "schedule": schedule, "flow_head": flow_head, "buffer": buffer,
                 "unseeded": unseeded, "queries": queries.rng, "rng": rng, "generator": generator}
    start = ctx.resume(resumable)

    k = budget.samples_per_prompt
    for step in range(start, budget.steps):
        temp_r = cfg.reward_temperature(step, budget.steps)
        batch = queries.draw(budget.batch_prompts)
        seeded = unseeded.take(batch)
        seeds = engine.seed_trajectories(seeded, n_seeds, generator) if n_seeds else engine.demonstrations(seeded)
        if len(seeds):
            rewards = engine.log_reward_parts(seeds, seeded, per_prefix=per_prefix)
            for row, i in enumerate(seeds.example_idx):
                buffer.add(seeded[i].query, seeds.select([row]), rewards[row:row + 1])
        # Behaviour policy per query: replay, tempered or on-policy; rows of one query stay together.
        to_sample, temps, replays = [], [], []
        for ex in batch:
            u = rng.random()
            if u < cfg.p_replay and buffer.has(ex.query):
                replays.append((ex, buffer.sample(ex.query, k, rng, temp_r if cfg.replay == "reward" else None)))
            else:
                t = rng.uniform(cfg.pf_temp_low, cfg.pf_temp_high) if u < cfg.p_replay + cfg.p_tempered else 1.0
                to_sample += [ex] * k
                temps += [t] * k
        examples, parts, reward_parts = list(to_sample), [], []
        if to_sample:
            fresh = engine.sample(to_sample, temps, generator)
            fresh_r = engine.log_reward_parts(fresh, to_sample, per_prefix=per_prefix)
            for q in range(0, len(to_sample), k):
                buffer.add(to_sample[q].query, fresh.select(list(range(q, q + k))), fresh_r[q:q + k])
            parts.append(fresh)
            reward_parts.append(fresh_r.tempered(temp_r))  # the shaping is added after tempering
        for ex, items in replays:
            parts.append(Trajectories([len(examples)] * k, [engine.prompt_ids(ex)] * k, [it.tokens for it in items],
                                      [it.is_action for it in items], [it.terminated for it in items], [1.0] * k))
            reward_parts.append(stored_log_rewards(items, per_prefix).tempered(temp_r))
            examples += [ex] * k
        traj = Trajectories.concat(parts)
        width = max(traj.n_actions) + 1
        log_r = torch.cat([(torch.nn.functional.pad(r, (0, width - r.shape[1])) if per_prefix else r).to(device)
                           for r in reward_parts])
        group = torch.arange(len(traj), device=device) // k  # k consecutive rows share a query

        # Gradient accumulation over micro-batches of whole query groups (VarGrad needs them whole).
        optimizer.zero_grad(set_to_none=True)
        stats = {"loss": 0.0, "logpf": [], "final_r": [], "log_z": []}
        for rows in micro_batches(len(traj), k, budget.batch_size):
            sel = torch.tensor(rows, device=device)
            scores = engine.score(traj.select(rows), hidden=learned_flow)
            logpf, mb_r = scores.logpf, log_r[sel]
            final_r = mb_r.gather(1, scores.state_mask.sum(-1, keepdim=True) - 1).squeeze(1) if per_prefix else mb_r
            if learned_flow and step == 0 and cfg.logz_init is None and rows[0] == 0:
                _init_flow(flow_head, scores, mb_r, final_r, per_prefix, ctx)
            if cfg.loss == "tb":
                log_z = flow_head(scores.prompt_hidden.detach().float()).squeeze(-1)
                loss = tb_loss(log_z, logpf, final_r)
            elif cfg.loss == "vargrad":
                loss = vargrad_loss(logpf, final_r, group[sel])
                log_z = final_r - logpf  # the per-sample estimate whose variance VarGrad minimizes
            else:
                log_flow = flow_head(scores.state_hidden.detach().float()).squeeze(-1)
                loss = subtb_loss(scores.action_logp, scores.term_logp, mb_r[:, :scores.state_mask.shape[1]],
                                  scores.state_mask, cfg.subtb_lambda, log_flow)
                log_z = log_flow[:, 0]  # the learned flow at s_0
            check_finite(loss, step)
            (loss * len(rows) / len(traj)).backward()
            stats["loss"] += loss.item() * len(rows) / len(traj)
            for key, value in (("logpf", logpf), ("final_r", final_r), ("log_z", log_z)):
                stats[key].append(value.detach())
        ctx.parallel.average_gradients(params)
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        optimizer.step()
        schedule.step()
        logpf, final_r, log_z = (torch.cat(stats[key]) for key in ("logpf", "final_r", "log_z"))

        ctx.end_step(step, {
            "loss": stats["loss"],
            "log_reward": (final_r * temp_r).mean().item(),
            "log_reward_tempered": final_r.mean().item(),
            "log_z": log_z.mean().item(),
            "logpf": logpf.mean().item(),
            "sample_length": sum(traj.n_actions) / len(traj),
            "reward_temperature": temp_r,
            "lr": schedule.get_last_lr()[0],
            "buffer_size": float(len(buffer)),
        }, resumable, samples=(examples, traj, final_r * temp_r))


@torch.no_grad()
def _init_flow(flow_head: torch.nn.Linear, scores, log_r: torch.Tensor, final_r: torch.Tensor, per_prefix: bool,
               ctx: TrainContext) -> None:
    """Set the flow head's bias to the first micro-batch's estimate of log Z(x), agreed by all processes."""
    if per_prefix:
        estimate = first_flow_estimate(scores.action_logp, scores.term_logp, log_r[:, :scores.state_mask.shape[1]],
                                       scores.state_mask)
    else:
        estimate = (final_r - scores.logpf).mean()
    flow_head.bias.fill_(ctx.parallel.mean({"log_z": float(estimate)})["log_z"])
