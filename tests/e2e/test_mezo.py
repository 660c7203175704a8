"""MeZO (`trainer.optim: mezo`) on the builtin tiny model, in-process through the real pipeline.

Learning signal (fixed seeds, CPU): on the 8 `a+a` rows, the loss at the start (the first logged loss: the mean of
the two perturbed losses, the base loss up to O(eps^2)) was 6.284; after 60 MeZO steps of full training (lr 1e-3,
eps 1e-3, batch 8) the eval loss on the same rows was 5.464; after 100 steps of LoRA (r 4, lr 1e-2) 5.933 with the
libraries of 2026-11 and 6.021 with those of constraints.txt (transformers 5.25, peft 0.21.2): a zeroth-order
walk amplifies small numeric differences, so the test asserts a drop of at least half the smallest one seen, not a
figure. Resuming gives exactly the uninterrupted run's weights (the perturbation of step t is seeded by
(trainer.seed, t)).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.e2e.test_methods import ROWS
from tunekit.recipe.schema import Recipe


@pytest.fixture(scope="module")
def data_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return path


def mezo_recipe(data: Path, out: Path, method: dict, lr: float, steps: int, save: int = 0) -> Recipe:
    return Recipe.model_validate({
        "model": {"path": "builtin:tiny-llama", "dtype": "float32"},
        "data": {"train": [{"path": str(data), "format": "messages"}],
                 "eval": [{"path": str(data), "format": "messages"}], "max_length": 24},
        "method": method,
        "trainer": {"kind": "sft", "optim": "mezo", "mezo_eps": 1e-3, "learning_rate": lr, "max_steps": steps,
                    "per_device_batch_size": 8, "logging_steps": 1, "seed": 0, "lr_scheduler": "constant",
                    "eval_steps": steps},
        "output": {"dir": str(out), "save_steps": save},
    })


def start_and_end(out: Path) -> tuple[float, float]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return next(r["loss"] for r in rows if "loss" in r), next(r["eval_loss"] for r in rows if "eval_loss" in r)


@pytest.mark.full  # a learning-signal test
@pytest.mark.parametrize(("method", "lr", "steps", "min_drop"), [
    ({"name": "full"}, 1e-3, 60, 0.4),  # seen: 0.82
    ({"name": "lora", "r": 4, "alpha": 8}, 1e-2, 100, 0.13),  # seen: 0.35, 0.26
])
def test_mezo_lowers_the_loss(method: dict, lr: float, steps: int, min_drop: float, data_file: Path,
                              tmp_path: Path) -> None:
    from transformers import TrainerCallback

    from tunekit.pipeline import train

    class Snap(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kw):  # noqa: ANN001
            self.before = {n: (p.detach().clone(), p.requires_grad) for n, p in model.named_parameters()}

        def on_train_end(self, args, state, control, model=None, **kw):  # noqa: ANN001
            self.after = {n: p.detach().clone() for n, p in model.named_parameters()}

    snap = Snap()
    train(mezo_recipe(data_file, tmp_path / "run", method, lr, steps), callbacks=[snap])
    start, end = start_and_end(tmp_path / "run")
    print(f"MEZO {method['name']}: loss {start:.3f} -> eval {end:.3f} after {steps} steps")
    assert start == pytest.approx(6.284, abs=0.01)
    assert end < start - min_drop  # without learning (or with the update's sign flipped) it stays at or above start
    for n, (p, trainable) in snap.before.items():
        assert torch.equal(p, snap.after[n]) != trainable, n  # trainable moved, frozen bit-identical


def test_mezo_resume_equals_the_uninterrupted_run(data_file: Path, tmp_path: Path) -> None:
    from tunekit.pipeline import train

    straight = tmp_path / "straight"
    train(mezo_recipe(data_file, straight, {"name": "full"}, 1e-3, 4))
    resumed = tmp_path / "resumed"
    train(mezo_recipe(data_file, resumed, {"name": "full"}, 1e-3, 2, save=2))
    train(mezo_recipe(data_file, resumed, {"name": "full"}, 1e-3, 4, save=2), resume=True)
    a = load_file(straight / "final" / "model.safetensors")
    b = load_file(resumed / "final" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_mezo_refusals(data_file: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="gradient_accumulation_steps: 1"):
        Recipe.model_validate({**mezo_recipe(data_file, tmp_path, {"name": "full"}, 1e-3, 2).model_dump(),
                               "trainer": {"kind": "sft", "optim": "mezo", "gradient_accumulation_steps": 2}})
