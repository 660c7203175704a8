"""The GPUs `tunekit plan --gpu NAME` knows: memory and peak dense bf16 tensor FLOP/s (vendor datasheets).

Memory is the total the driver reports (nvidia-smi's MiB / 1024), not the marketing GB. FLOP/s are dense (no
2:4 sparsity) bf16 with fp32 accumulation, from each vendor's datasheet; throughput estimates multiply them by
an MFU assumption (`throughput.MFU`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tunekit.errors import UserError, did_you_mean


@dataclass(frozen=True)
class Gpu:
    name: str
    memory_gib: float
    bf16_tflops: float  # dense peak
    note: str = ""


GPUS: dict[str, Gpu] = {g.name.lower(): g for g in [
    Gpu("A100-40", 40.0, 312.0, "A100 SXM/PCIe 40GB"),
    Gpu("A100-80", 80.0, 312.0, "A100 SXM 80GB"),
    Gpu("H100", 79.6, 989.0, "H100 SXM 80GB (81559 MiB)"),
    Gpu("H100-PCIE", 79.6, 756.0, "H100 PCIe 80GB"),
    Gpu("H200", 140.4, 989.0, "H200 SXM 141GB (143771 MiB)"),
    Gpu("B200", 179.0, 2250.0, "B200 180GB"),
    Gpu("L40S", 45.0, 362.0, "L40S 48GB (46068 MiB)"),
    Gpu("L4", 22.5, 121.0, "L4 24GB"),
    Gpu("A10G", 22.5, 125.0, "A10G 24GB (AWS g5)"),
    Gpu("RTX-4090", 24.0, 165.0, "GeForce RTX 4090 24GB (fp32 accumulate)"),
    Gpu("RTX-3090", 24.0, 71.0, "GeForce RTX 3090 24GB (fp32 accumulate)"),
    Gpu("MI300X", 192.0, 1307.0, "AMD Instinct MI300X 192GB"),
]}
DEFAULT_GPU = "A100-80"


def gpu(name: str) -> Gpu:
    key = name.lower().replace(" ", "-").replace("_", "-")
    key = {"rtx4090": "rtx-4090", "4090": "rtx-4090", "rtx3090": "rtx-3090", "a100": "a100-80"}.get(key, key)
    if key not in GPUS:
        names = [g.name for g in GPUS.values()]
        raise UserError(f"--gpu: unknown GPU `{name}`.{did_you_mean(name, names)} Known: {', '.join(names)}; "
                        "or give --gpu-memory GiB")
    return GPUS[key]


def custom(memory_gib: float, like: Gpu | None = None) -> Gpu:
    """A GPU given by its memory (FLOP/s of `like`, else of the default GPU)."""
    base = like or GPUS[DEFAULT_GPU.lower()]
    return Gpu(f"{like.name} with {memory_gib:g} GiB" if like else f"{memory_gib:g} GiB", memory_gib, base.bf16_tflops, f"memory given; FLOP/s of {base.name}")


# torch.cuda.get_device_name() -> the table's entry, first match wins ("NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-40GB",
# "NVIDIA GeForce RTX 4090", "AMD Instinct MI300X" ...). None: a GPU whose peak is not in the table (GH200 and H100 NVL
# differ from the entries their names contain; L40 is not L40S), so its MFU is not reported rather than guessed.
DEVICE_NAMES: tuple[tuple[str, str | None], ...] = (
    (r"\bgh200\b", None), (r"\bh100 nvl\b", None), (r"\bh200\b", "H200"), (r"\bh100\b.*\bpcie\b", "H100-PCIE"),
    (r"\bh100\b", "H100"), (r"\ba100\b.*\b40gb\b", "A100-40"), (r"\ba100\b", "A100-80"), (r"\bb200\b", "B200"),
    (r"\bl40s\b", "L40S"), (r"\bl4\b", "L4"), (r"\ba10g\b", "A10G"), (r"\brtx 4090\b", "RTX-4090"),
    (r"\brtx 3090\b", "RTX-3090"), (r"\bmi300x\b", "MI300X"),
)


def for_device_name(name: str) -> Gpu | None:
    """The table's GPU for a CUDA device name, or None when its peak FLOP/s are not in the table."""
    low = name.lower().replace("-", " ").replace("_", " ")
    for pattern, key in DEVICE_NAMES:
        if re.search(pattern, low):
            return GPUS[key.lower()] if key else None
    return None


def local_device() -> tuple[str, Gpu | None]:
    """This process's training device: ("cuda:NAME", its table entry or None) on a GPU, ("cpu", None) without."""
    import torch

    if not torch.cuda.is_available():
        return "cpu", None
    name = torch.cuda.get_device_name()
    return f"cuda:{name}", for_device_name(name)
