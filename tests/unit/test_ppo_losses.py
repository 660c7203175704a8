"""PPO's arithmetic (tunekit/trainers/ppo_losses.py) on small tensors whose answers are worked out by hand,
and the recipe rules of `trainer.rl.algorithm: ppo` (fields of one algorithm refused for the others)."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

from tunekit.trainers.ppo_losses import explained_variance, gae, policy_loss, seq_mean, value_loss, whiten
from tunekit.trainers.reft_schema import RLStage


def test_gae_on_a_three_step_trajectory() -> None:
    # r = (0, 0, 1), V = (0.5, 0.6, 0.7), gamma 0.9, lambda 0.5; V = 0 after the last step:
    #   delta_2 = 1 - 0.7 = 0.3;  delta_1 = 0.9*0.7 - 0.6 = 0.03;  delta_0 = 0.9*0.6 - 0.5 = 0.04
    #   A_2 = 0.3;  A_1 = 0.03 + 0.45*0.3 = 0.165;  A_0 = 0.04 + 0.45*0.165 = 0.11425;  R = A + V
    rewards, values, mask = torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[0.5, 0.6, 0.7]]), torch.ones(1, 3)
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.5)
    assert torch.allclose(adv, torch.tensor([[0.11425, 0.165, 0.3]]))
    assert torch.allclose(ret, torch.tensor([[0.61425, 0.765, 1.0]]))
    # gamma = lambda = 1: A_t = (sum of the rewards from t on) - V_t, so every return is the episode's reward, 1
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    assert torch.allclose(adv, torch.tensor([[0.5, 0.4, 0.3]])) and torch.allclose(ret, torch.ones(1, 3))


def test_gae_stops_at_the_end_of_each_row() -> None:
    # a second, 2-token completion padded to 3: what sits in the padding (5, 9) must not leak into the steps before
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 5.0]])
    values = torch.tensor([[0.5, 0.6, 0.7], [1.0, 1.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.5)
    # row 2: delta_1 = 2 - 1 = 1, delta_0 = 0.9*1 - 1 = -0.1; A_1 = 1, A_0 = -0.1 + 0.45*1 = 0.35
    assert torch.allclose(adv[1], torch.tensor([0.35, 1.0, 0.0]))
    assert torch.allclose(ret[1], torch.tensor([1.35, 2.0, 0.0]))
    assert torch.allclose(adv[0], torch.tensor([0.11425, 0.165, 0.3]))


def test_clipped_policy_loss_inside_and_outside_the_clip_range() -> None:
    # epsilon 0.2; per token the loss is max(-A*rho, -A*clip(rho, 0.8, 1.2)):
    #   A=+1 rho=1.1 (inside):            -1.1  unclipped
    #   A=+1 rho=1.5 (above the range):   max(-1.5, -1.2) = -1.2  clipped: no gradient
    #   A=-1 rho=0.5 (below the range):   max( 0.5,  0.8) =  0.8  clipped: no gradient
    #   A=-1 rho=1.5 (above, A < 0):      max( 1.5,  1.2) =  1.5  unclipped (the pessimistic bound)
    #   A=+1 rho=0.5 (below, A > 0):      max(-0.5, -0.8) = -0.5  unclipped
    ratio = torch.tensor([[1.1, 1.5, 0.5, 1.5, 0.5]])
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0, 1.0]])
    logp = ratio.log().requires_grad_(True)
    loss, clipfrac, approx_kl = policy_loss(logp, torch.zeros(1, 5), adv, torch.ones(1, 5), clip=0.2)
    assert loss.item() == pytest.approx((-1.1 - 1.2 + 0.8 + 1.5 - 0.5) / 5)
    assert clipfrac.item() == pytest.approx(2 / 5)
    assert approx_kl.item() == pytest.approx(sum(0.5 * math.log(r) ** 2 for r in ratio[0].tolist()) / 5, rel=1e-6)
    loss.backward()  # d(-A*rho)/d(log rho) = -A*rho where unclipped, 0 where the clipped term won
    assert torch.allclose(logp.grad, torch.tensor([[-1.1, 0.0, 0.0, 1.5, -0.5]]) / 5)


def test_policy_loss_at_ratio_one_is_minus_the_mean_advantage() -> None:
    # the first minibatch of a rollout: rho = 1 everywhere, nothing clipped; padding ignored, mean per row first
    adv = torch.tensor([[1.0, 3.0, 100.0], [-1.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    loss, clipfrac, _ = policy_loss(torch.zeros(2, 3), torch.zeros(2, 3), adv, mask, clip=0.2)
    assert loss.item() == pytest.approx(-((1 + 3) / 2 + -1) / 2) and clipfrac.item() == 0


def test_value_clipping() -> None:
    # old values 0, clip range 0.2; per token max((v - R)^2, (clip(v, -0.2, 0.2) - R)^2):
    #   v=0.1 R=1 (inside):             0.81 both
    #   v=0.5 R=1 (moved too far):      max(0.25, 0.64) = 0.64  clipped: no gradient
    #   v=0.5 R=0 (overshoot):          max(0.25, 0.04) = 0.25  unclipped
    values = torch.tensor([[0.1, 0.5, 0.5]], requires_grad=True)
    returns = torch.tensor([[1.0, 1.0, 0.0]])
    loss, clipfrac = value_loss(values, torch.zeros(1, 3), returns, torch.ones(1, 3), clip=0.2)
    assert loss.item() == pytest.approx(0.5 * (0.81 + 0.64 + 0.25) / 3)
    assert clipfrac.item() == pytest.approx(1 / 3)
    loss.backward()  # d(0.5 (v-R)^2 / 3)/dv = (v - R) / 3 where unclipped
    assert torch.allclose(values.grad, torch.tensor([[-0.9, 0.0, 0.5]]) / 3)


def test_whiten_seq_mean_and_explained_variance() -> None:
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    assert torch.allclose(whiten(torch.tensor([[1.0, 2.0, 3.0, 50.0]]), mask), torch.tensor([[-1.0, 0.0, 1.0, 0.0]]))
    assert seq_mean(torch.tensor([[1.0, 2.0, 3.0, 50.0]]), mask).item() == pytest.approx(2.0)
    returns = torch.tensor([[1.0, 2.0, 3.0, 0.0]])
    assert explained_variance(returns, returns, mask) == pytest.approx(1.0)
    assert explained_variance(torch.full((1, 4), 2.0), returns, mask) == pytest.approx(0.0)


REWARDS = [{"type": "numeric_match"}]


def test_ppo_settings_are_filled_for_ppo_and_refused_for_the_others() -> None:
    rl = RLStage(algorithm="ppo", rewards=REWARDS)
    assert rl.ppo is not None and (rl.ppo.epochs, rl.ppo.gamma, rl.ppo.lam, rl.ppo.vf_coef) == (2, 1.0, 0.95, 0.1)
    assert RLStage(algorithm="grpo", rewards=REWARDS).ppo is None
    assert RLStage(**rl.model_dump()).ppo == rl.ppo  # a resolved recipe validates again
    for algorithm in ("grpo", "rloo"):
        with pytest.raises(ValidationError, match="ppo: PPO's settings apply to algorithm ppo only"):
            RLStage(algorithm=algorithm, rewards=REWARDS, ppo={"epochs": 4})


@pytest.mark.parametrize("fields,message", [
    ({"num_iterations": 2}, "num_iterations: grpo/rloo only; for ppo set ppo.epochs"),
    ({"use_vllm": True}, "use_vllm: grpo/rloo only"),
    ({"per_device_batch_size": 4, "num_generations": 3}, r"x ppo.num_mini_batches \(4\) counts the completions"),
])
def test_grpo_fields_refused_for_ppo(fields: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        RLStage(algorithm="ppo", rewards=REWARDS, **fields)


def test_one_sample_per_question_only_for_ppo() -> None:
    assert RLStage(algorithm="ppo", rewards=REWARDS, num_generations=1, per_device_batch_size=4).num_generations == 1
    with pytest.raises(ValidationError, match="num_generations: grpo compares samples"):
        RLStage(algorithm="grpo", rewards=REWARDS, num_generations=1, per_device_batch_size=4)
