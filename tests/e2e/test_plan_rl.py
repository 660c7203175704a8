"""The planner's RL-stage parts of a reft run are exact: weights, gradients, optimizer state, the KL reference and
PPO's value head equal the bytes of the real tensors at the RL stage's first optimizer step of a real run
(tunekit/plan/rl_stage.py), and `tunekit plan` reports both stages with the larger as the peak."""

from __future__ import annotations

import gc
import json
from pathlib import Path

import pytest

from tunekit.recipe.schema import Recipe

ROWS = [{"question": f"What is {a} plus 1?", "answer": str(a + 1), "solution": f"{a} + 1 = {a + 1}\n#### {a + 1}"}
        for a in range(8)]
CASES = {
    "lora-ppo-beta": ({"name": "lora", "r": 4, "alpha": 8, "target_modules": "all-linear"}, "ppo", 0.1),
    "full-grpo-beta": ({"name": "full"}, "grpo", 0.1),
    "full-ppo-nobeta": ({"name": "full"}, "ppo", 0.0),
}


def reft_recipe(data: Path, out: Path, method: dict, algorithm: str, beta: float) -> dict:
    step = {"max_steps": 1, "per_device_batch_size": 4, "seed": 0, "learning_rate": 1e-3}
    return {
        "model": {"path": "builtin:tiny-llama", "dtype": "float32"},
        "data": {"train": [{"path": str(data), "format": "prompt_answer"}], "max_length": 48},
        "method": method,
        "trainer": {"kind": "reft", "warmup": step,
                    "rl": {**step, "algorithm": algorithm, "beta": beta, "num_generations": 2,
                           "max_completion_length": 8, "eval_samples": 1, "rewards": [{"type": "numeric_match"}]}},
        "output": {"dir": str(out), "save_steps": 0},
    }


def _bytes(tensors: list) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _rl_trainer(model):  # noqa: ANN001, ANN202
    """The Trainer training `model` (a callback is not handed its trainer; the KL reference model hangs off it)."""
    from transformers import Trainer

    return next(o for o in gc.get_objects() if isinstance(o, Trainer) and o.model is model)


def real_bytes(model, optimizer) -> dict:  # noqa: ANN001
    import torch

    trainer = _rl_trainer(model)
    ref_model = getattr(trainer, "ref_model", None) or getattr(getattr(trainer, "ppo", None), "ref_model", None)
    named = dict(model.named_parameters())
    policy = [p for n, p in named.items() if ".ref." not in n]
    mine = {id(p) for p in named.values()}
    head = [p for g in optimizer.param_groups for p in g["params"] if id(p) not in mine]
    state = {id(p): [v for v in s.values() if isinstance(v, torch.Tensor)] for p, s in optimizer.state.items()}
    ref = [p for n, p in named.items() if ".ref." in n]
    if ref_model is not None:
        ref += [*ref_model.parameters(), *ref_model.buffers()]
    return {"weights": _bytes(policy) + _bytes(list(model.buffers())),
            "gradients": _bytes([p.grad for p in policy if p.grad is not None]),
            "optimizer": sum(_bytes(state.get(id(p), [])) for p in policy),
            "reference": _bytes(ref),
            "value_head": _bytes(head) * 2 + sum(_bytes(state.get(id(p), [])) for p in head)
            if all(p.grad is not None for p in head) else -1}


def predicted_bytes(recipe: Recipe) -> dict:
    from tunekit.plan import optimizers
    from tunekit.plan.activations import Shape
    from tunekit.plan.params import gradient_bytes, param_table, weight_bytes
    from tunekit.plan.report import planned_recipe
    from tunekit.plan.rl_stage import reference_bytes, value_head_bytes

    table = param_table(planned_recipe(recipe), device="cpu")
    return {"weights": weight_bytes(table, recipe), "gradients": gradient_bytes(table),
            "optimizer": optimizers.state_bytes(recipe.trainer.rl.optim, table.trainable),
            "reference": reference_bytes(recipe, table),
            "value_head": sum(value_head_bytes(recipe, Shape.of(table.config)).values())}


@pytest.mark.full
@pytest.mark.parametrize("case", list(CASES))
def test_rl_stage_parts_are_exact(case: str, tmp_path: Path) -> None:
    from transformers import TrainerCallback

    from tunekit.pipeline import train

    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    recipe = Recipe.model_validate(reft_recipe(data, tmp_path / "run", *CASES[case]))
    seen: list[dict] = []

    class Probe(TrainerCallback):
        def on_optimizer_step(self, args, state, control, model=None, optimizer=None, **kw):  # noqa: ANN001
            if state.global_step == 0:  # each stage's first step, before the gradients are cleared
                seen.append(real_bytes(model, optimizer))

    train(recipe, callbacks=[Probe()])
    assert len(seen) == 2  # the warm-up's first step, then the RL stage's
    assert predicted_bytes(recipe) == seen[1]
    expected = {"lora-ppo-beta": ("ref adapter", "head"), "full-grpo-beta": ("ref model",),
                "full-ppo-nobeta": ("head",)}[case]
    assert (seen[1]["reference"] > 0) == any(e.startswith("ref") for e in expected)
    assert (seen[1]["value_head"] > 0) == ("head" in expected)


def test_plan_reports_both_reft_stages(tmp_path: Path) -> None:
    """`tunekit plan` on a reft recipe (in process, no data plan: the model is built on the meta device): both
    stages' parts, the peak is the larger. With long completions and a KL reference the RL stage holds more (1024
    tokens: the warm-up's fused LM head holds a fixed 32768-column buffer, 24 MB here, where PPO's full logits over the
    tiny vocabulary take 16 bytes x 518 per token)."""
    from tunekit.plan import hardware
    from tunekit.plan.report import plan, render

    recipe = reft_recipe(tmp_path / "unused.jsonl", tmp_path / "run", {"name": "full"}, "ppo", 0.1)
    recipe["trainer"]["rl"]["max_completion_length"] = 1024
    out = plan(Recipe.model_validate(recipe), hardware.gpu("H100"), with_data=False)
    warm, rl = out["stages"]["warmup"], out["stages"]["rl"]
    assert rl["peak_bytes"] > warm["peak_bytes"] == sum(warm["per_device"].values())
    assert out["fit"]["peak_bytes"] == rl["peak_bytes"] == sum(out["per_device"].values())
    assert rl["per_device"]["reference"] == rl["per_device"]["weights"] > 0 and rl["per_device"]["value_head"] > 0
    assert rl["micro_batch"] == [4, 48 + 1024] and warm["micro_batch"] == [4, 48]
    text = render(out)
    assert "stage rl:" in text and "<- the peak" in text and "KL reference (RL stage)" in text
    # beta 0: no reference; grpo: no value head
    recipe["trainer"]["rl"].update(beta=0.0, algorithm="grpo")
    rl = plan(Recipe.model_validate(recipe), hardware.gpu("H100"), with_data=False)["stages"]["rl"]["per_device"]
    assert rl["reference"] == rl["value_head"] == 0
