"""online_dpo's pair choice: the best and the worst sample per prompt; a prompt whose samples all tie is paired with
itself (`ties: skip`), which gives its DPO term a zero logit and a zero gradient."""

from __future__ import annotations

import torch

from tunekit.trainers.online_dpo import pick_pairs


def test_best_and_worst_per_prompt_and_ties() -> None:
    # rows: samples, columns: prompts. Prompt 0: best 2, worst 1; prompt 1: all tied; prompt 2: equal best values
    # (the first is taken) and equal worst values (the first is taken).
    rewards = torch.tensor([[0.5, 1.0, 1.0], [0.0, 1.0, 0.0], [1.0, 1.0, 1.0], [0.2, 1.0, 0.0]])
    best, worst, tied = pick_pairs(rewards, "skip")
    assert best.tolist() == [2, 0, 0] and worst.tolist() == [1, 0, 1] and tied.tolist() == [False, True, False]
    best, worst, tied = pick_pairs(rewards, "keep")
    assert best.tolist() == [2, 0, 0] and worst.tolist() == [1, 1, 1]  # a tie: two different samples (TRL's way)


def test_a_sample_paired_with_itself_has_a_zero_dpo_gradient() -> None:
    """The DPO logit of (y, y) is (log pi(y) - log pi(y)) - (the same under the reference): exactly zero, whatever
    the parameters (the two rows are the same computation in one batch). Its gradient is zero up to float rounding:
    backward sums the two rows' equal and opposite contributions into each weight's gradient in whatever order the
    matmul takes, so float32 leaves residues of about 1e-7 of a real pair's gradient; a real pair is compared."""
    torch.manual_seed(0)
    policy = torch.nn.Sequential(torch.nn.Embedding(11, 8), torch.nn.Linear(8, 11))
    ids = torch.randint(0, 11, (1, 6)).repeat(2, 1)  # chosen and rejected: the same sequence

    def logp(model: torch.nn.Module) -> torch.Tensor:
        return model(ids[:, :-1]).log_softmax(-1).gather(2, ids[:, 1:, None]).squeeze(-1).sum(1)

    lp = logp(policy)
    with torch.no_grad():
        ref = logp(policy) + 0.3
    logits = (lp[0] - lp[1]) - (ref[0] - ref[1])
    loss = -torch.nn.functional.logsigmoid(0.1 * logits)
    loss.backward()
    assert logits.item() == 0.0
    tied = max(p.grad.abs().max().item() for p in policy.parameters())
    policy.zero_grad()
    other = torch.randint(0, 11, (1, 6))
    ids = torch.cat([ids[:1], other])  # a real pair: chosen and rejected differ
    lp = logp(policy)
    (-torch.nn.functional.logsigmoid(0.1 * (lp[0] - lp[1]))).backward()
    real = max(p.grad.abs().max().item() for p in policy.parameters())
    assert tied <= 1e-5 * real, (tied, real)
