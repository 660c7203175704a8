"""The planner's exact parts are exact: for each method family, the predicted bytes of weights (with 4-bit
quantization state), gradients and optimizer state equal the bytes of the real tensors after the first
optimizer step of a real `tunekit train` run (tunekit/plan/params.py, optimizers.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunekit.recipe.schema import Recipe

ROWS = [{"messages": [{"role": "user", "content": f"{a}+{a}"}, {"role": "assistant", "content": str(2 * a)}]}
        for a in range(8)]
METHODS = {
    "full": {"name": "full"},
    "lora": {"name": "lora", "r": 4, "alpha": 8, "target_modules": "all-linear"},
    "qlora": {"name": "qlora", "r": 4, "alpha": 8},
    "prefix_tuning": {"name": "prefix_tuning", "num_virtual_tokens": 4},
    "loreft": {"name": "loreft", "rank": 2, "layers": [0]},
}


@pytest.fixture(scope="module")
def data_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return path


def recipe_for(method: dict, data: Path, out: Path, optim: str = "adamw_torch") -> Recipe:
    return Recipe.model_validate({
        "model": {"path": "builtin:tiny-llama", "dtype": "float32"},
        "data": {"train": [{"path": str(data), "format": "messages"}], "max_length": 24},
        "method": method,
        "trainer": {"kind": "sft", "max_steps": 1, "per_device_batch_size": 2, "optim": optim, "seed": 0},
        "output": {"dir": str(out), "save_steps": 0},
    })


def quant_state_bytes(p) -> int:  # noqa: ANN001
    state = getattr(p, "quant_state", None)
    if state is None:
        return 0
    tensors = [state.absmax, state.code, state.offset]
    if state.state2 is not None:
        tensors += [state.state2.absmax, state.state2.code]
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def real_bytes(model, optimizer) -> dict:  # noqa: ANN001
    import torch

    params = list(model.parameters())
    tensors = [v for s in optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
    return {"weights": sum(p.numel() * p.element_size() + quant_state_bytes(p) for p in params)
            + sum(b.numel() * b.element_size() for b in model.buffers()),
            "gradients": sum(p.grad.numel() * p.grad.element_size() for p in params if p.grad is not None),
            "optimizer": sum(t.numel() * t.element_size() for t in tensors)}


def predicted_bytes(recipe: Recipe) -> dict:
    from tunekit.plan import optimizers
    from tunekit.plan.params import gradient_bytes, param_table, weight_bytes

    table = param_table(recipe, device="cpu")
    return {"weights": weight_bytes(table, recipe), "gradients": gradient_bytes(table),
            "optimizer": optimizers.state_bytes(recipe.trainer.optim, table.trainable)}


def measured(recipe: Recipe) -> dict:
    from transformers import TrainerCallback

    from tunekit.pipeline import train

    seen: dict = {}

    class Probe(TrainerCallback):
        def on_optimizer_step(self, args, state, control, model=None, optimizer=None, **kw):  # noqa: ANN001
            if not seen:  # after the first step, before the gradients are cleared
                seen.update(real_bytes(model, optimizer))

    train(recipe, callbacks=[Probe()])
    return seen


@pytest.mark.full
@pytest.mark.parametrize("name", list(METHODS))
def test_weights_gradients_optimizer_are_exact(name: str, data_file: Path, tmp_path: Path) -> None:
    recipe = recipe_for(METHODS[name], data_file, tmp_path / "run")
    assert predicted_bytes(recipe) == measured(recipe)


@pytest.mark.full
@pytest.mark.parametrize("optim", ["adafactor", "sgd"])
def test_other_optimizers_are_exact(optim: str, data_file: Path, tmp_path: Path) -> None:
    recipe = recipe_for(METHODS["lora"], data_file, tmp_path / "run", optim=optim)
    assert predicted_bytes(recipe) == measured(recipe)
