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


# A 3-step toy: actions a1..a3, states s0..s3, ⊤ forbidden at s0 (min length 1).
ACTION_LOGP = torch.tensor([[-0.5, -1.0, -0.25]])
TERM_LOGP = torch.tensor([[-INF, -2.0, -1.0, -0.1]])
LOG_R = torch.tensor([[-9.0, -3.0, -2.0, -1.0]])
STATES = torch.tensor([[True, True, True, True]])
# log F(s) = log R(s) - log q(⊤|s): F1 = -1, F2 = -1, F3 = -0.9; cumulative log q: -0.5, -1.5, -1.75
# pairs: (1,2) -1 - 1 + 1 = -1; (2,3) -1 - 0.25 + 0.9 = -0.35; (1,3) -1 - 1.25 + 0.9 = -1.35
PAIRS = {(1, 2): -1.0, (2, 3): -0.35, (1, 3): -1.35}


@pytest.mark.parametrize("lam", [1.0, 0.5])
def test_subtb_loss_by_hand(lam):
    weights = {p: lam ** (p[1] - p[0] - 1) for p in PAIRS}
    expected = sum(weights[p] * r * r for p, r in PAIRS.items()) / sum(weights.values())
    assert subtb_loss(ACTION_LOGP, TERM_LOGP, LOG_R, STATES, lam).item() == pytest.approx(expected)
    assert expected == pytest.approx(0.981666667 if lam == 1.0 else 0.8135)


def test_subtb_equals_sum_of_per_step_residuals():
    """The telescoped pair residual equals the paper's per-step δ_k summed over the pair."""
    log_f = LOG_R - TERM_LOGP
    delta = [log_f[0, k] + ACTION_LOGP[0, k] - log_f[0, k + 1] for k in range(1, 3)]  # δ1, δ2
    assert float(delta[0]) == pytest.approx(PAIRS[(1, 2)])
    assert float(delta[1]) == pytest.approx(PAIRS[(2, 3)])
    assert float(delta[0] + delta[1]) == pytest.approx(PAIRS[(1, 3)])


def test_subtb_ignores_missing_states_and_keeps_gradients_finite():
    action_logp = torch.tensor([[-0.5, -1.0, -0.25], [-0.3, 0.0, 0.0]], requires_grad=True)
    term = torch.tensor([[-INF, -2.0, -1.0, -0.1], [-INF, -1.0, 0.0, 0.0]])
    log_r = torch.tensor([[-9.0, -3.0, -2.0, -1.0], [-5.0, -2.0, 0.0, 0.0]])
    states = torch.tensor([[True] * 4, [True, True, False, False]])
    loss = subtb_loss(action_logp, term, log_r, states, 1.0)
    loss.backward()
    # the second row has one terminable state: no pair, so the loss is the first row's
    assert loss.item() == pytest.approx(0.981666667)
    assert torch.isfinite(action_logp.grad).all()


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
