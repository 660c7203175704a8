"""Bottleneck adapters (LLM-Adapters, Hu et al. 2023): a small down-projection, a non-linearity and an
up-projection added to each chosen decoder layer's MLP, the base frozen.

- series (Houlsby et al. 2019, as LLM-Adapters places it: after the MLP): mlp(x) + s * up(act(down(mlp(x))))
- parallel (He et al. 2022, beside the MLP): mlp(x) + s * up(act(down(x)))

The up-projection starts at zero, so the adapted model computes the base model's function at step 0 (as
LLM-Adapters initialises it). The adapters live in the same hooked container as LoReFT/LoFiT
(`interventions.py`): Trainer checkpoints hold their weights, final/ gets `interventions.safetensors` +
`interventions.json`, and reloading re-attaches them to a fresh base.
"""

from __future__ import annotations

from typing import Any

ACTIVATIONS = ("tanh", "relu", "gelu", "silu")


def adapter(d: int, cfg: dict) -> Any:
    """One adapter for hidden size `d` (weights drawn from torch's current seed)."""
    import torch
    from torch import nn

    class BottleneckAdapter(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.down = nn.Linear(d, cfg["bottleneck_size"])
            self.up = nn.Linear(cfg["bottleneck_size"], d)
            nn.init.zeros_(self.up.weight)
            nn.init.zeros_(self.up.bias)
            self.act = {"tanh": nn.Tanh, "relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}[cfg["activation"]]()
            self.dropout = nn.Dropout(cfg["dropout"])

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.down(self.dropout(x.to(self.down.weight.dtype)))
            return (self.up(self.act(h)) * cfg["scaling"]).to(x.dtype)

    return BottleneckAdapter()


def hook(box: Any, module: Any, placement: str) -> Any:
    """A forward hook for a decoder layer's MLP: adds the adapter's output (of the MLP's output for series, of
    its input for parallel) to the MLP's output."""

    def forward_hook(_mod: Any, args: Any, output: Any) -> Any:
        if not box.enabled:
            return None
        return output + module(output if placement == "series" else args[0])

    return forward_hook
