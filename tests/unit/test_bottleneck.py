"""Bottleneck adapters on the builtin tiny model: the base's function at initialisation, and the series /
parallel formulas checked against a hand computation on one decoder layer's MLP."""

from __future__ import annotations

import pytest
import torch

from tunekit.methods.interventions import ATTR, attach, config_of
from tunekit.methods.schema import BottleneckMethod
from tunekit.model.builtin import materialize

IDS = torch.tensor([[3, 17, 42, 9, 11, 5]])


def tiny() -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(materialize("builtin:tiny-llama", 0)).eval()


@pytest.mark.parametrize("placement", ["series", "parallel"])
def test_bottleneck_starts_as_the_base_and_follows_its_formula(placement: str) -> None:
    base = tiny()
    with torch.no_grad():
        expected = base(input_ids=IDS).logits
    cfg = BottleneckMethod(name="bottleneck", placement=placement, bottleneck_size=4, activation="tanh",
                           scaling=0.5, layers=[1])
    model = attach(tiny(), config_of(cfg))
    with torch.no_grad():
        assert torch.equal(model(input_ids=IDS).logits, expected)  # up-projection starts at zero
        ad = getattr(model, ATTR).per_layer["1"]
        torch.nn.init.normal_(ad.up.weight)
        torch.nn.init.normal_(ad.up.bias)
        mlp = model.model.layers[1].mlp
        x = torch.randn(1, 6, 64)
        plain = mlp.down_proj(mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x))  # Llama MLP, no adapter
        src = plain if placement == "series" else x
        hand = plain + 0.5 * (torch.tanh(src @ ad.down.weight.T + ad.down.bias) @ ad.up.weight.T + ad.up.bias)
        # atol: float32 matmuls in a different order than nn.Linear's
        assert torch.allclose(mlp(x), hand, atol=1e-5)
        assert not torch.allclose(model(input_ids=IDS).logits, expected)
    assert set(dict(getattr(model, ATTR).named_parameters())) == {"per_layer.1.down.weight", "per_layer.1.down.bias",
                                                                 "per_layer.1.up.weight", "per_layer.1.up.bias"}
