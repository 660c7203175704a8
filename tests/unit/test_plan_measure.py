"""`plan.measure.cpu_peak`: the allocator-exact peak the plan's activation tests compare against, and its check that
a trace did not lose events."""

from __future__ import annotations

import pytest


def test_cpu_peak_is_the_allocations_high_water_mark_above_the_start() -> None:
    import torch

    from tunekit.plan.measure import cpu_peak

    kept: list = []
    before = torch.ones(1 << 20)  # live before the call: not part of its peak

    def fn() -> None:
        a = torch.empty(1 << 18)  # 1 MiB
        b = torch.empty(1 << 19)  # 2 MiB: 3 MiB live together
        del a, b
        kept.append(torch.empty(1 << 16))  # 256 KiB left allocated when fn returns

    peak = cpu_peak(fn, leaves=lambda: sum(t.numel() * 4 for t in kept), reset=kept.clear)
    assert peak == 3 << 20
    assert before.numel() == 1 << 20


def test_a_trace_that_does_not_sum_to_what_the_call_leaves_is_refused() -> None:
    """A trace whose allocations less frees differ from the bytes the call leaves has lost events; after `tries`
    such traces the measurement fails instead of returning a peak that is too low."""
    import torch

    from tunekit.plan.measure import cpu_peak

    calls = []

    def fn() -> None:
        calls.append(torch.empty(1 << 10))

    with pytest.raises(RuntimeError, match="lost memory events in 2 traces"):
        cpu_peak(fn, leaves=lambda: 1, reset=calls.clear, tries=2)
    assert len(calls) == 1  # reset before each trace
