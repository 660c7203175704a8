"""PPO's arithmetic on padded token tensors (rows = sampled completions, columns = completion tokens).

`mask` is 1 on a completion's tokens (up to and including its end-of-sequence token) and 0 after, so every
row's trajectory is a prefix. Pure functions of their inputs: unit-tested on hand-worked examples
(tests/unit/test_ppo_losses.py).
"""

from __future__ import annotations

from typing import Any


def masked_mean(x: Any, mask: Any) -> Any:
    """Mean of `x` over the positions where `mask` is 1 (0 when there are none)."""
    return (x * mask).sum() / mask.sum().clamp(min=1)


def seq_mean(x: Any, mask: Any) -> Any:
    """Mean over each row's tokens, then over rows (the ReFT paper's code aggregates both losses this way)."""
    return ((x * mask).sum(-1) / mask.sum(-1).clamp(min=1)).mean()


def whiten(x: Any, mask: Any, eps: float = 1e-8) -> Any:
    """`x` shifted and scaled to mean 0 and (unbiased) variance 1 over the masked positions; 0 elsewhere."""
    mean = masked_mean(x, mask)
    n = mask.sum()
    var = (((x - mean) ** 2) * mask).sum() / (n - 1).clamp(min=1)
    return (x - mean) * (var + eps).rsqrt() * mask


def gae(rewards: Any, values: Any, mask: Any, gamma: float, lam: float) -> tuple[Any, Any]:
    """Generalized advantage estimation (Schulman et al. 2016) per row: advantages and λ-returns.

    δ_t = r_t + γ V_{t+1} - V_t, with V = 0 after a row's last token (the episode ends there);
    A_t = Σ_l (γλ)^l δ_{t+l};  R_t = A_t + V_t.
    """
    import torch

    rewards, values = rewards * mask, values * mask
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    steps = rewards.shape[1]
    for t in reversed(range(steps)):
        next_value = values[:, t + 1] if t + 1 < steps else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * running
        advantages[:, t] = running
    advantages = advantages * mask
    return advantages, (advantages + values) * mask


def policy_loss(logp: Any, old_logp: Any, advantages: Any, mask: Any, clip: float) -> tuple[Any, Any, Any]:
    """PPO's clipped surrogate: mean of max(-A·ρ, -A·clip(ρ, 1-ε, 1+ε)), ρ = π/π_old per token.

    Returns (loss, fraction of tokens where the clipped term was the larger, approximate KL ½(log ρ)²)."""
    log_ratio = logp - old_logp
    ratio = log_ratio.exp()
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip, 1.0 + clip)
    loss = seq_mean(unclipped.maximum(clipped), mask)
    clipfrac = masked_mean((clipped > unclipped).float(), mask)
    approx_kl = masked_mean(0.5 * log_ratio.detach() ** 2, mask)
    return loss, clipfrac.detach(), approx_kl


def value_loss(values: Any, old_values: Any, returns: Any, mask: Any, clip: float) -> tuple[Any, Any]:
    """PPO's clipped value loss: ½ · mean of max((V - R)², (V_clip - R)²), V_clip = V_old + clip(V - V_old, ±c).

    Returns (loss, fraction of tokens where the clipped term was the larger)."""
    clipped_values = old_values + (values - old_values).clamp(-clip, clip)
    unclipped = (values - returns) ** 2
    clipped = (clipped_values - returns) ** 2
    loss = 0.5 * seq_mean(unclipped.maximum(clipped), mask)
    clipfrac = masked_mean((clipped > unclipped).float(), mask)
    return loss, clipfrac.detach()


def explained_variance(values: Any, returns: Any, mask: Any) -> float:
    """1 - Var(R - V) / Var(R) over the masked tokens: 1 for a perfect critic, 0 for a constant one."""
    def var(x: Any) -> Any:
        return masked_mean((x - masked_mean(x, mask)) ** 2, mask)

    denominator = var(returns)
    return float(1.0 - var(returns - values) / denominator) if float(denominator) > 0 else 0.0
