"""Measured memory, to set beside the estimate: the run's peak (summary.json) and, for tests and benchmarks,
the peak bytes live in torch's CPU allocator during one call.

CPU: torch's profiler with `profile_memory=True` records every allocation and free of torch's CPU allocator
as a `[memory]` event with its signed size, in order. Their running sum is the bytes torch has live; its
maximum over the call minus the live bytes at the start is the call's peak, allocator-exact (no RSS noise from
the Python heap or glibc arenas, no sampling). CUDA: `torch.cuda.max_memory_allocated`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def run_peak() -> dict:
    """The peak memory of this process so far: CUDA's max allocated (and max reserved by the caching allocator) on
    the current device, else peak RSS."""
    import resource
    import sys

    import torch

    if torch.cuda.is_available():
        return {"peak_bytes": int(torch.cuda.max_memory_allocated()), "source": "torch.cuda.max_memory_allocated",
                "peak_reserved_bytes": int(torch.cuda.max_memory_reserved())}
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"peak_bytes": int(rss if sys.platform == "darwin" else rss * 1024), "source": "process peak RSS (CPU)"}


def cpu_peak(fn: Callable[[], Any], leaves: Callable[[], int], reset: Callable[[], Any] = lambda: None,
             tries: int = 3) -> int:
    """Peak bytes allocated by torch on CPU during `fn()` above the bytes live at its start.

    `leaves()` is what `fn` leaves allocated when it returns (the gradients a training step writes): a trace whose
    allocations and frees do not sum to it has lost events (torch's profiler does, rarely: its trace then starts
    part-way through the call, the peak is far too low and the sum negative; seen in 1 of 16 traced steps), so it is
    traced again, after `reset()` (which must bring `fn` back to the state it started from), up to `tries` times."""
    for _ in range(tries):
        reset()
        peak, net = _trace(fn)
        if net == leaves():
            return peak
    raise RuntimeError(f"torch's profiler lost memory events in {tries} traces of the same call (the allocations "
                       f"sum to {net} bytes, the call leaves {leaves()})")


def _trace(fn: Callable[[], Any]) -> tuple[int, int]:
    """(the running sum's maximum, its final value) of torch's CPU allocator events during fn()."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events()
              if e.name() == "[memory]" and e.device_type().name == "CPU"]
    live = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        live += e.nbytes()
        peak = max(peak, live)
    return peak, live
