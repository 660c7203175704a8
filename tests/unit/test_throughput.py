"""FLOPs per token (plan/throughput.py), the GPU peak looked up by CUDA device name (plan/hardware.py), and the
run-level throughput arithmetic of tunekit/metrics.py."""

from __future__ import annotations

import json

import pytest

from tests.conftest import REPO
from tunekit.metrics import WARMUP_STEPS, Speed, StepClock
from tunekit.plan import hardware, throughput
from tunekit.plan.activations import Shape


@pytest.mark.parametrize(("name", "entry"), [
    ("NVIDIA H100 80GB HBM3", "H100"), ("NVIDIA H100 PCIe", "H100-PCIE"), ("NVIDIA H200", "H200"),
    ("NVIDIA A100-SXM4-80GB", "A100-80"), ("NVIDIA A100-SXM4-40GB", "A100-40"), ("NVIDIA A100 80GB PCIe", "A100-80"),
    ("NVIDIA L40S", "L40S"), ("NVIDIA L4", "L4"), ("NVIDIA A10G", "A10G"), ("NVIDIA GeForce RTX 4090", "RTX-4090"),
    ("AMD Instinct MI300X", "MI300X"), ("NVIDIA B200", "B200"),
    # peaks the table does not have: no MFU rather than a wrong one
    ("NVIDIA GH200 480GB", None), ("NVIDIA H100 NVL", None), ("NVIDIA L40", None), ("Tesla T4", None),
])
def test_gpu_by_device_name(name: str, entry: str | None) -> None:
    gpu = hardware.for_device_name(name)
    assert (gpu.name if gpu else None) == entry


def test_flops_per_token_full_and_adapters() -> None:
    s = Shape(hidden=8, layers=2, heads=2, kv_heads=2, head_dim=4, intermediate=16, vocab=10)
    attention = 2.0 * 2 * 100 * 2 * 4  # forward, causal, at s = 100
    assert throughput.flops_per_token(1000, s, 100, full=True, checkpointing=False) == 6000 + 3 * attention
    # LoRA-adjusted: 4 N_base + 6 A (+ attention); checkpointing adds one forward
    assert throughput.flops_per_token(1000, s, 100, False, False, adapter=10) == 4000 + 60 + 3 * attention
    assert throughput.flops_per_token(1000, s, 100, False, True, adapter=10) == 4000 + 60 + 3 * attention + \
        2000 + 20 + attention


def test_attention_length_is_token_weighted() -> None:
    assert throughput.attention_length([2, 4]) == pytest.approx((4 + 16) / 6)
    assert throughput.attention_length([]) == 0.0


def test_llama_8b_flops_per_token() -> None:
    from transformers import LlamaConfig

    config = LlamaConfig(**json.loads((REPO / "tests/fixtures/llama-3.1-8b/config.json").read_text()))
    total = 8_030_261_248  # Llama-3.1-8B's parameter count
    full = throughput.training_flops(config, {"trainable": total, "total": total}, "full", False, 0.0)
    n = total - 128256 * 4096  # the input embedding table does no matmul
    assert full["flops_per_token"] == 6 * n
    lora = throughput.training_flops(config, {"trainable": 41_943_040, "total": total + 41_943_040}, "lora", False,
                                     0.0)
    assert lora["flops_per_token"] == 4 * n + 6 * 41_943_040 and "adapters" in lora["flops_formula"]


def test_mfu_and_per_device() -> None:
    speed = Speed(world=4, flops_per_token=1e9, peak_flops=1e12, device="cuda:NVIDIA H100")
    assert speed.per_device(4000.0) == 1000.0 and speed.mfu(1000.0) == 1.0
    assert Speed().mfu(1000.0) is None  # CPU: no peak


def test_step_clock_leaves_out_the_warmup_steps() -> None:
    clock = StepClock()
    seen = 0
    for step in range(1, 6):
        clock.begin(seen)
        seen += 100
        clock.end(step, seen)
    t = clock.summary(Speed())
    assert t["timed_steps"] == 5 - WARMUP_STEPS and t["tokens"] == 100 * (5 - WARMUP_STEPS)
    assert t["tokens_per_s"] > 0 and t["mfu"] is None
    one = StepClock()
    one.begin(0)
    one.end(1, 50)
    assert one.summary(Speed())["timed_steps"] == 1 and one.summary(Speed())["warmup_steps"] == 0
