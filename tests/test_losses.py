"""GFlowNet and PPO objectives against values computed by hand on small toys."""
import math

import pytest
import torch

from methods.gfn_tb import subtb_loss, tb_loss, vargrad_loss
from methods.ppo import gae

INF = float("inf")


def test_tb_loss_by_hand():
    log_z = torch.tensor([1.0, 0.0])
    logpf = torch.tensor([-3.0, -1.0])
    log_r = torch.tensor([-1.5, -2.0])
    # (1 - 3 + 1.5)^2 = 0.25 and (0 - 1 + 2)^2 = 1
    assert tb_loss(log_z, logpf, log_r).item() == pytest.approx((0.25 + 1.0) / 2)


def test_vargrad_loss_groups_by_query():
    logpf = torch.tensor([-1.0, -2.0, -3.0, -4.0])
    log_r = torch.tensor([0.0, 0.0, -1.0, -1.0])
    group = torch.tensor([7, 7, 3, 3])
    # s = [-1, -2, -2, -3]; group means -1.5 and -2.5; every deviation is ±0.5
    assert vargrad_loss(logpf, log_r, group).item() == pytest.approx(0.25)
    # one group over all four would see a larger spread
    assert vargrad_loss(logpf, log_r, torch.zeros(4, dtype=torch.long)).item() == pytest.approx(0.5)


# A 3-step toy: actions a1..a3, states s0..s3, ⊤ forbidden at s0 (min length 1), whose flow is learned.
ACTION_LOGP = torch.tensor([[-0.5, -1.0, -0.25]])
TERM_LOGP = torch.tensor([[-INF, -2.0, -1.0, -0.1]])
LOG_R = torch.tensor([[-9.0, -3.0, -2.0, -1.0]])
STATES = torch.tensor([[True, True, True, True]])
LOG_FLOW = torch.tensor([[-0.2, 5.0, 5.0, 5.0]])  # read only where ⊤ is forbidden: s0
# log F(s) = log R(s) - log q(⊤|s): F1 = -1, F2 = -1, F3 = -0.9, and F0 = -0.2 (learned);
# cumulative log q: -0.5, -1.5, -1.75
# pairs from s0: (0,1) -0.2 - 0.5 + 1 = 0.3; (0,2) -0.2 - 1.5 + 1 = -0.7; (0,3) -0.2 - 1.75 + 0.9 = -1.05
# the others: (1,2) -1 - 1 + 1 = -1; (2,3) -1 - 0.25 + 0.9 = -0.35; (1,3) -1 - 1.25 + 0.9 = -1.35
PAIRS = {(0, 1): 0.3, (0, 2): -0.7, (0, 3): -1.05, (1, 2): -1.0, (2, 3): -0.35, (1, 3): -1.35}


@pytest.mark.parametrize("lam", [1.0, 0.5])
def test_subtb_loss_by_hand(lam):
    weights = {p: lam ** (p[1] - p[0] - 1) for p in PAIRS}
    expected = sum(weights[p] * r * r for p, r in PAIRS.items()) / sum(weights.values())
    assert subtb_loss(ACTION_LOGP, TERM_LOGP, LOG_R, STATES, lam, LOG_FLOW).item() == pytest.approx(expected)


def test_subtb_equals_sum_of_per_step_residuals():
    """The telescoped pair residual equals the paper's per-step δ_k summed over the pair."""
    log_f = torch.where(torch.isfinite(TERM_LOGP), LOG_R - TERM_LOGP, LOG_FLOW)
    delta = [log_f[0, k] + ACTION_LOGP[0, k] - log_f[0, k + 1] for k in range(3)]  # δ0, δ1, δ2
    for (i, j), residual in PAIRS.items():
        assert float(sum(delta[i:j])) == pytest.approx(residual)


def brute_force_subtb(action_logp, term_logp, log_r, state_mask, lam, log_flow):
    """The definition, one trajectory and one pair at a time."""
    losses = []
    for b in range(action_logp.shape[0]):
        n = int(state_mask[b].sum()) - 1

        def flow(k):
            if math.isfinite(float(term_logp[b, k])):
                return float(log_r[b, k] - term_logp[b, k])
            return float(log_flow[b, k])

        num = den = 0.0
        for i in range(n + 1):
            for j in range(i + 1, n + 1):
                residual = flow(i) + sum(float(action_logp[b, k]) for k in range(i, j)) - flow(j)
                num += lam ** (j - i - 1) * residual ** 2
                den += lam ** (j - i - 1)
        losses.append(num / den if den else 0.0)
    return sum(losses) / len(losses)


@pytest.mark.parametrize("lam", [1.0, 0.9])
def test_subtb_loss_equals_a_brute_force_loop_over_all_pairs(lam):
    gen = torch.Generator().manual_seed(0)
    B, A, min_actions = 6, 9, 3
    lengths = torch.tensor([9, 3, 5, 7, 4, 9])  # actions per row
    action_logp = -torch.rand(B, A, generator=gen, dtype=torch.float64) * 3
    term_logp = -torch.rand(B, A + 1, generator=gen, dtype=torch.float64) * 4
    log_r = -torch.rand(B, A + 1, generator=gen, dtype=torch.float64) * 20
    log_flow = torch.randn(B, A + 1, generator=gen, dtype=torch.float64) * 5
    k = torch.arange(A + 1)
    state_mask = k.unsqueeze(0) <= lengths.unsqueeze(1)
    term_logp[:, :min_actions] = -INF  # ⊤ forbidden before the minimum length
    action_logp = action_logp.masked_fill(~state_mask[:, 1:], 0.0)
    term_logp = term_logp.masked_fill(~state_mask, 0.0)
    expected = brute_force_subtb(action_logp, term_logp, log_r, state_mask, lam, log_flow)
    got = subtb_loss(action_logp, term_logp, log_r, state_mask, lam, log_flow)
    assert got.item() == pytest.approx(expected, rel=1e-9)
    # micro-batches of rows accumulate to the batch's loss (what gradient accumulation relies on)
    halves = [subtb_loss(action_logp[r], term_logp[r], log_r[r], state_mask[r], lam, log_flow[r]) * 3 / 6
              for r in (slice(0, 3), slice(3, 6))]
    assert float(sum(halves)) == pytest.approx(expected, rel=1e-9)


def test_subtb_ignores_missing_states_and_keeps_gradients_finite():
    action_logp = torch.tensor([[-0.5, -1.0, -0.25], [-0.3, 0.0, 0.0]], requires_grad=True)
    term = torch.tensor([[-INF, -2.0, -1.0, -0.1], [-INF, -1.0, 0.0, 0.0]])
    log_r = torch.tensor([[-9.0, -3.0, -2.0, -1.0], [-5.0, -2.0, 0.0, 0.0]])
    log_flow = torch.tensor([[-0.2, 0.0, 0.0, 0.0], [-3.0, 0.0, 0.0, 0.0]], requires_grad=True)
    states = torch.tensor([[True] * 4, [True, True, False, False]])
    loss = subtb_loss(action_logp, term, log_r, states, 1.0, log_flow)
    loss.backward()
    # the second row has one pair, (0,1): -3 - 0.3 - (-2 + 1) = -2.3
    first = sum(r * r for r in PAIRS.values()) / len(PAIRS)
    assert loss.item() == pytest.approx((first + 2.3 ** 2) / 2)
    assert torch.isfinite(action_logp.grad).all() and torch.isfinite(log_flow.grad).all()
    assert log_flow.grad[0, 1:].abs().sum() == 0  # flows where ⊤ is allowed come from the reward


def test_gae_by_hand():
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 0.0]])
    values = torch.tensor([[0.5, 0.5, 0.5], [1.0, 1.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=0.5)
    # row 0: δ = [0, 0, 0.5] -> A2 = 0.5, A1 = 0.25, A0 = 0.125
    # row 1 ends after two actions: δ1 = 2 - 1 = 1, δ0 = 1 - 1 = 0 -> A = [0.5, 1, 0]
    torch.testing.assert_close(adv, torch.tensor([[0.125, 0.25, 0.5], [0.5, 1.0, 0.0]]))
    torch.testing.assert_close(ret, (adv + values) * mask)
    adv1, _ = gae(rewards, values, mask, gamma=1.0, lam=1.0)  # λ=1: Monte-Carlo return minus value
    torch.testing.assert_close(adv1[0], torch.tensor([0.5, 0.5, 0.5]))
    assert math.isclose(adv1[1, 0].item(), 2.0 - 1.0)
