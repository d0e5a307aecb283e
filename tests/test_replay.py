import random

import torch

from methods.engine.replay import ReplayBuffer, stored_log_rewards
from methods.engine.reward import LogReward
from methods.engine.rollout import Trajectories


def traj(rows):
    return Trajectories([0] * len(rows), [[1]] * len(rows), [r[0] for r in rows], [r[1] for r in rows],
                        [True] * len(rows), [1.0] * len(rows))


def test_buffer_keeps_the_best_unique_items_with_their_tool_tokens():
    buffer = ReplayBuffer(capacity_per_query=2)
    rows = [([5, 6, 7], [True, False, True]), ([5, 6, 7], [True, False, True]), ([8], [True]), ([9, 4], [True, True])]
    # per-state untempered log-rewards: s_0..s_n
    rewards = torch.tensor([[-3.0, -2.0, -1.0], [-3.0, -2.0, -1.0], [-9.0, -5.0, 0.0], [-4.0, -3.0, -2.0]])
    buffer.add("q", traj(rows), LogReward(rewards))
    assert len(buffer) == 2  # duplicate dropped, lowest reward (-5) evicted
    best = buffer.items["q"][0]
    assert best.tokens == [5, 6, 7] and best.is_action == [True, False, True]
    assert best.log_rewards == [-3.0, -2.0, -1.0]  # two actions: three states
    assert {it.log_reward for it in buffer.sample("q", 20, random.Random(0))} == {-1.0, -2.0}
    restored = ReplayBuffer(1)
    restored.load_state_dict(buffer.state_dict())
    assert restored.items == buffer.items and restored.capacity == 2


def test_buffer_keeps_the_shaping_apart_and_ranks_by_the_sum():
    """The shaping (SUBJ's wrong-label penalty) is stored per state beside the base log R, so that
    replay can add it after tempering; the buffer ranks by base + shaping."""
    buffer = ReplayBuffer(capacity_per_query=2)
    rows = [([5], [True]), ([6], [True]), ([7], [True])]
    base = torch.tensor([[-2.0, -1.0], [-3.0, -2.0], [-4.0, -3.0]])
    shaping = torch.tensor([[0.0, -50.0], [0.0, 0.0], [-50.0, 0.0]])
    buffer.add("q", traj(rows), LogReward(base, shaping))
    assert [it.tokens for it in buffer.items["q"]] == [[6], [7]]  # -2 and -3 beat -1 - 50
    assert buffer.items["q"][1].log_rewards == [-4.0, -3.0] and buffer.items["q"][1].shaping == [-50.0, 0.0]
    replayed = stored_log_rewards(buffer.items["q"], per_prefix=True)
    assert replayed.tempered(0.5).tolist() == [[-6.0, -4.0], [-58.0, -6.0]]
    assert stored_log_rewards(buffer.items["q"], per_prefix=False).tempered(0.5).tolist() == [-4.0, -6.0]
    restored = ReplayBuffer(1)
    restored.load_state_dict(buffer.state_dict())
    assert restored.items == buffer.items


def test_reward_replay_draws_items_in_proportion_to_their_tempered_reward():
    buffer = ReplayBuffer(capacity_per_query=3)
    rows = [([5], [True]), ([6], [True]), ([7], [True])]
    base = torch.tensor([[0.0, -1.0], [0.0, -2.0], [0.0, -3.0]])
    shaping = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.0, -1.0]])  # added after tempering
    buffer.add("q", traj(rows), LogReward(base, shaping))
    for temperature in (1.0, 0.5):
        drawn = buffer.sample("q", 40_000, random.Random(0), temperature)
        logits = torch.tensor([-1.0, -2.0, -3.0]) / temperature + torch.tensor([0.0, 0.0, -1.0])
        expected = logits.softmax(0).tolist()
        freq = [sum(it.tokens == [t] for it in drawn) / len(drawn) for t in (5, 6, 7)]
        assert all(abs(f - e) < 0.01 for f, e in zip(freq, expected)), (freq, expected)
    uniform = buffer.sample("q", 30_000, random.Random(0))
    assert all(abs(sum(it.tokens == [t] for it in uniform) / 30_000 - 1 / 3) < 0.01 for t in (5, 6, 7))
