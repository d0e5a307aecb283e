"""PPO (clipped surrogate, value head, GAE, KL penalty to the frozen base).

Same rollout engine and same reward as the GFlowNet: the episode's return is log R(Z)/T at its
last action, and every action pays -kl_coef * (log q - log p_base), the base being the policy with
its adapter disabled. Actions are the policy's tokens plus ⊤ when the sample terminated; tool
tokens are environment. The value head reads the policy's last hidden state at each state.
A task's shaping (SUBJ's wrong-label penalty) is added after tempering: log R_base/T + shaping.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from methods.base import WARMUP_HELP, QuerySampler, RewardTemperature, TrainContext, check_finite, micro_batches, warmup_schedule
from methods.engine.rollout import Scores, Trajectories


@dataclass
class Config(RewardTemperature):
    lr: float = field(default=1e-4, metadata={"range": "(0, inf)", "help": "learning rate of the LoRA parameters and the value head"})
    kl_coef: float = field(default=0.05, metadata={"range": "[0, inf)", "help": "per-token KL penalty to the base model"})
    clip_range: float = field(default=0.2, metadata={"range": "(0, inf)", "help": "PPO ratio clipping ε"})
    vf_coef: float = field(default=0.1, metadata={"range": "[0, inf)", "help": "weight of the value loss"})
    gamma: float = field(default=1.0, metadata={"range": "[0, 1]", "help": "discount"})
    lam: float = field(default=0.95, metadata={"range": "[0, 1]", "help": "GAE λ"})
    ppo_epochs: int = field(default=2, metadata={"range": "[1, inf)", "help": "optimization passes over each batch of rollouts"})
    whiten_advantages: bool = field(default=True, metadata={"help": "normalize advantages to zero mean and unit variance per batch (each process's own share with trainer.num_processes > 1)"})
    warmup_frac: float = field(default=0.01, metadata={"range": "[0, 1]", "help": WARMUP_HELP})
    max_grad_norm: float = field(default=1.0, metadata={"range": "(0, inf)", "help": "gradient clipping norm"})


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation over left-aligned action sequences.

    rewards, values, mask: [B, T]; the value after a row's last action is 0 (episode end).
    Returns (advantages, returns), 0 where mask is False.
    """
    adv = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        next_value = values[:, t + 1] * mask[:, t + 1] if t + 1 < rewards.shape[1] else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * running * (mask[:, t + 1] if t + 1 < rewards.shape[1] else 0.0)
        adv[:, t] = running * mask[:, t]
    return adv, (adv + values) * mask


def action_view(scores: Scores, traj: Trajectories, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-action log-probs [B, width] (the n token actions, then ⊤ if the sample terminated) and
    their mask, padded to `width` so that micro-batches line up with the whole batch."""
    device = scores.action_logp.device
    n = torch.tensor(traj.n_actions, device=device)
    terminated = torch.tensor(traj.terminated, device=device)
    k = torch.arange(scores.term_logp.shape[1], device=device)
    mask = (k < n.unsqueeze(1)) | ((k == n.unsqueeze(1)) & terminated.unsqueeze(1))
    padded = torch.nn.functional.pad(scores.action_logp, (0, 1))
    logp = torch.where(k < n.unsqueeze(1), padded, scores.term_logp).masked_fill(~mask, 0.0)
    pad = width - logp.shape[1]
    return torch.nn.functional.pad(logp, (0, pad)), torch.nn.functional.pad(mask, (0, pad))


def pad_to(x: torch.Tensor, width: int) -> torch.Tensor:
    return torch.nn.functional.pad(x, (0, width - x.shape[1]))


def train(ctx: TrainContext, cfg: Config) -> None:
    engine, policy, budget = ctx.engine, ctx.policy, ctx.train
    device = policy.device
    generator = torch.Generator(device=device).manual_seed(ctx.seed)
    value_head = torch.nn.Linear(policy.hidden_size, 1).to(device)
    torch.nn.init.zeros_(value_head.weight)
    params = policy.trainable_parameters() + list(value_head.parameters())
    ctx.parallel.sync(params)
    optimizer = torch.optim.AdamW(params, lr=cfg.lr)
    schedule = warmup_schedule(optimizer, cfg.warmup_frac, budget.steps)
    queries = QuerySampler(ctx.task.demonstrations() + ctx.task.train_examples(), ctx.seed)
    k = budget.samples_per_prompt
    resumable = {"optimizer": optimizer, "schedule": schedule, "value_head": value_head,
                 "queries": queries.rng, "generator": generator}
    start = ctx.resume(resumable)

    for step in range(start, budget.steps):
        temp_r = cfg.reward_temperature(step, budget.steps)
        examples = [ex for ex in queries.draw(budget.batch_prompts) for _ in range(k)]
        traj = engine.sample(examples, [1.0] * len(examples), generator)
        log_r = engine.log_reward_parts(traj, examples, per_prefix=False).tempered(temp_r).to(device)
        chunks = micro_batches(len(traj), k, budget.batch_size)
        width = max(traj.n_actions) + 1  # actions per row, ⊤ included

        # Rollout-time quantities, fixed during the PPO epochs.
        old_logp, mask, values, kl = [], [], [], []
        with torch.no_grad():
            for rows in chunks:
                part = traj.select(rows)
                scores = engine.score(part, hidden=True)
                logp, m = action_view(scores, part, width)
                with policy.base():
                    base_logp, _ = action_view(engine.score(part), part, width)
                old_logp.append(logp)
                mask.append(m)
                values.append(pad_to(value_head(scores.state_hidden.float()).squeeze(-1), width) * m)
                kl.append((logp - base_logp) * m)
        old_logp, mask, values, kl = (torch.cat(x) for x in (old_logp, mask, values, kl))
        last = mask.sum(-1) - 1
        rewards = -cfg.kl_coef * kl
        rewards[torch.arange(len(traj), device=device), last] += log_r
        adv, returns = gae(rewards, values, mask.float(), cfg.gamma, cfg.lam)
        if cfg.whiten_advantages:
            valid = adv[mask]
            adv = ((adv - valid.mean()) / (valid.std() + 1e-8)) * mask

        for _ in range(cfg.ppo_epochs):
            optimizer.zero_grad(set_to_none=True)
            totals = {"loss": 0.0, "policy_loss": 0.0, "value_loss": 0.0, "clip_frac": 0.0}
            for rows in chunks:
                sel = torch.tensor(rows, device=device)
                part = traj.select(rows)
                scores = engine.score(part, hidden=True)
                logp, m = action_view(scores, part, width)
                ratio = torch.exp(logp - old_logp[sel]) * m
                a = adv[sel]
                surrogate = torch.max(-a * ratio, -a * ratio.clamp(1 - cfg.clip_range, 1 + cfg.clip_range))
                n_actions = m.sum()
                policy_loss = (surrogate * m).sum() / n_actions
                v = pad_to(value_head(scores.state_hidden.float()).squeeze(-1), width)
                value_loss = 0.5 * ((v - returns[sel]).pow(2) * m).sum() / n_actions
                loss = policy_loss + cfg.vf_coef * value_loss
                check_finite(loss, step)
                share = len(rows) / len(traj)
                (loss * share).backward()
                totals["loss"] += loss.item() * share
                totals["policy_loss"] += policy_loss.item() * share
                totals["value_loss"] += value_loss.item() * share
                totals["clip_frac"] += (((ratio - 1).abs() > cfg.clip_range) & m).float().sum().item() / mask.sum().item()
            ctx.parallel.average_gradients(params)
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            optimizer.step()
        schedule.step()

        ctx.end_step(step, {
            **totals,
            "log_reward": (log_r * temp_r).mean().item(),
            "log_reward_tempered": log_r.mean().item(),
            "kl": kl.sum(-1).mean().item(),
            "sample_length": sum(traj.n_actions) / len(traj),
            "reward_temperature": temp_r,
            "lr": schedule.get_last_lr()[0],
        }, resumable, samples=(examples, traj, log_r * temp_r))
