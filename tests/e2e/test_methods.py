"""Every method in the catalogue, in-process on the builtin tiny model: train, resume, save, reload.

For each method: one optimizer step with a checkpoint, then `--resume` to a second step. The trainable
parameters must have moved, the frozen ones must be bit-identical, and the model reloaded from final/ by
`load_trained` must give the trained model's logits (max abs difference printed, < 1e-5 in fp32).
"""

from __future__ import annotations

import gc
import json
from pathlib import Path

import pytest
import torch

from tunekit.methods.peft_schema import EXCLUDED
from tunekit.methods.schema import ALL_METHODS, LORA_VARIANTS, method_name
from tunekit.recipe.schema import Recipe

# Options that make each method fit the 2-layer, hidden-64 builtin model (peft defaults assume hidden >= 256).
TINY_OPTIONS: dict[str, dict] = {
    "freeze": {"trainable_patterns": [r"layers\.1\.mlp"], "train_head": True},
    "lora": {"r": 4, "alpha": 8, "use_rslora": True},
    "qlora": {"r": 4, "alpha": 8},
    "lisa": {"layers": 1, "interval": 1},
    "galore": {"rank": 4, "update_proj_gap": 1, "target_modules": ["self_attn", "mlp"]},
    "loreft": {"rank": 2, "layers": [0], "positions": "first", "first_n": 3},  # layer 0: later tokens attend
    "lofit": {"heads": [[0, 1], [1, 3]], "scale": True},
    "bottleneck": {"bottleneck_size": 8, "activation": "tanh"},  # series (the default)
    "c3a": {"block_size": 16},
    "shira": {"r": 2},
    "road": {"group_size": 16},
    "vblora": {"vector_length": 16, "num_vectors": 32},
    "waveft": {"n_frequency": 64},
    "fourierft": {"n_frequency": 64},
    "trainable_tokens": {"token_indices": [20, 21, 22, 202]},  # digits and newline: in every row
    "prompt_tuning": {"num_virtual_tokens": 4},
    "prefix_tuning": {"num_virtual_tokens": 4},
    "p_tuning": {"num_virtual_tokens": 4, "encoder_hidden_size": 16},
    "cartridge": {"num_virtual_tokens": 4},
    "adalora": {"init_r": 4, "target_r": 2, "tinit": 4, "tfinal": 2, "total_step": 10},  # no rank pruning yet
    # LoRA's named variants (dora, pissa, olora, corda, lora_ga: `lora` with one setting fixed). pissa, olora, corda
    # and lora_ga rewrite the base weights (the base keeps a residual): their final/ must still reload onto the
    # original base with the trained model's outputs.
    **{name: {"r": 4, "alpha": 8} for name in LORA_VARIANTS},
    # The tiny rows train 1-2 answer tokens each: fewer than EVA's r * rho components, so EVA reads every token.
    "eva": {"r": 4, "alpha": 8, "eva_config": {"use_label_mask": False}},
}
METHODS = [method_name(m) for m in ALL_METHODS if method_name(m) not in EXCLUDED]
INIT_VARIANTS = {"lora-kasa": {"r": 4, "alpha": 8, "kasa_config": {}}}  # KaSA truncates the base's SVD too
# Other methods' variants (a "name" here replaces lora).
INIT_VARIANTS["bottleneck-parallel"] = {"name": "bottleneck", "placement": "parallel", "bottleneck_size": 8,
                                        "activation": "relu"}
# Methods whose trainable set is not all updated in two steps, by design: LISA trains 1 of 2 layers per step;
# ShadowPEFT's last-layer update modules only feed a next layer, which the 2-layer model does not have.
PARTLY_UPDATED = {"lisa", "shadow"}

ROWS = [{"messages": [{"role": "user", "content": f"{a}+{a}"}, {"role": "assistant", "content": str(2 * a)}]}
        for a in range(8)]


@pytest.fixture(scope="module")
def data_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return path


def method_recipe(name: str, data: Path, out: Path, max_steps: int) -> Recipe:
    return Recipe.model_validate({
        "model": {"path": "builtin:tiny-llama", "dtype": "float32"},
        "data": {"train": [{"path": str(data), "format": "messages"}], "max_length": 24},
        "method": {"name": "lora", **INIT_VARIANTS[name]} if name in INIT_VARIANTS
        else {"name": name, **TINY_OPTIONS.get(name, {})},
        "trainer": {"kind": "sft", "learning_rate": 1e-2, "max_steps": max_steps, "per_device_batch_size": 2,
                    "logging_steps": 1, "seed": 0, "lr_scheduler": "constant"},
        "output": {"dir": str(out), "save_steps": 1},
    })


# bitsandbytes 0.50 on CPUs with avx512bf16 repacks 4-bit weights for eval-mode inference, which needs every
# output size divisible by 32 (the tiny model's MLP has 176): QLoRA logits are taken in train mode (no dropout).
EVAL_IN_TRAIN_MODE = {"qlora"}
PROBE_IDS = torch.tensor([[3, 17, 42, 9, 11, 5, 8, 60]])


def probe() -> object:
    from transformers import TrainerCallback

    class Probe(TrainerCallback):
        """Snapshots the model's parameters when training starts and its state + logits when it ends."""

        begin: dict | None = None
        trainable: set | None = None
        end: dict | None = None
        logits: torch.Tensor | None = None
        train_mode = False

        def on_train_begin(self, args, state, control, model=None, **kw):  # noqa: ANN001
            self.begin = {n: p.detach().clone().float() for n, p in model.named_parameters()}
            self.trainable = {n for n, p in model.named_parameters() if p.requires_grad}

        def on_train_end(self, args, state, control, model=None, **kw):  # noqa: ANN001
            self.end = {n: p.detach().clone().float() for n, p in model.named_parameters()}
            was = model.training
            model.train(self.train_mode)
            with torch.no_grad():
                self.logits = model(input_ids=PROBE_IDS.to(model.device)).logits[:, -PROBE_IDS.shape[1]:].float()
            model.train(was)

    return Probe()


# `make test` trains one representative of each method family; the rest are `full` (`make test-full`, CI).
REPRESENTATIVES = {
    "full", "freeze", "lora", "qlora", "lisa", "hft", "galore", "loreft", "lofit",  # tunekit's own builders
    "pissa",  # a LoRA init that rewrites the base weights
    "loha", "ia3", "oft", "vera", "adalora",  # peft weight tuners: low-rank, scaling, orthogonal, shared, rank-pruning
    "prompt_tuning", "prefix_tuning", "trainable_tokens",  # virtual tokens, key/value prefixes, embedding rows
}
assert not REPRESENTATIVES - set(METHODS) - set(INIT_VARIANTS), "a representative is not in the catalogue"


@pytest.mark.parametrize("name", [n if n in REPRESENTATIVES else pytest.param(n, marks=pytest.mark.full)
                                  for n in METHODS + list(INIT_VARIANTS)])
def test_method_trains_resumes_saves_and_reloads(name: str, data_file: Path, tmp_path: Path) -> None:
    from tunekit.methods.registry import load_trained
    from tunekit.pipeline import train

    out = tmp_path / "run"
    gc.freeze()  # earlier tests' objects: keeps accelerate's gc.collect() after each run from slowing down
    first, second = probe(), probe()
    first.train_mode = second.train_mode = name in EVAL_IN_TRAIN_MODE
    train(method_recipe(name, data_file, out, max_steps=1), callbacks=[first])
    assert (out / "checkpoints" / "checkpoint-1").is_dir()
    recipe = method_recipe(name, data_file, out, max_steps=2)
    train(recipe, resume=True, callbacks=[second])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["global_step"] == 2 and summary["resumed_from"].endswith("checkpoint-1")
    assert 0 < summary["params"]["trainable"] <= summary["params"]["total"]

    before, after = first.begin, second.end
    assert set(before) == set(after)
    frozen = [n for n in before if n not in first.trainable]
    moved = [n for n in first.trainable if not torch.equal(before[n], after[n])]
    assert all(torch.equal(before[n], after[n]) for n in frozen), "a frozen parameter changed"
    if name in PARTLY_UPDATED:
        assert moved
    else:
        assert sorted(moved) == sorted(first.trainable), f"did not move: {set(first.trainable) - set(moved)}"

    reloaded = load_trained(out / "final", recipe).train(name in EVAL_IN_TRAIN_MODE)
    with torch.no_grad():
        logits = reloaded(input_ids=PROBE_IDS.to(reloaded.device)).logits[:, -PROBE_IDS.shape[1]:].float()
    diff = (logits - second.logits).abs().max().item()
    print(f"METHOD {name}: reload max abs logit diff {diff:.3e}; params {summary['params']}")
    assert diff < 1e-5
