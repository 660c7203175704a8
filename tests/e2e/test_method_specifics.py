"""LISA's layer schedule, HFT's frozen half, LoReFT/LoFiT touching only their interventions, and parameter counts
without weights (`validate --params`) equal to peft's own counts."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import run_cli, tiny_recipe
from tests.e2e.test_methods import PROBE_IDS, ROWS, method_recipe
from tunekit.methods.layerwise import lisa_layers
from tunekit.model.builtin import materialize
from tunekit.recipe.schema import Recipe


@pytest.fixture(scope="module")
def data_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return path


def with_method(recipe, **method):  # noqa: ANN001, ANN201
    return recipe.model_copy(update={"method": type(recipe.method).model_validate(
        {**recipe.method.model_dump(exclude_unset=True), **method})})


def test_lisa_switches_layers_on_schedule(data_file: Path, tmp_path: Path) -> None:
    from transformers import TrainerCallback

    from tunekit.pipeline import train

    recipe = with_method(method_recipe("lisa", data_file, tmp_path / "run", max_steps=3), layers=1, interval=1,
                         seed=0)
    expected = [lisa_layers(2, 1, 0, p) for p in range(3)]  # [[0], [1], [1]]
    assert len({tuple(e) for e in expected}) > 1, "the schedule for this seed never changes; pick another seed"
    seen: list[dict] = []

    class Watch(TrainerCallback):
        def on_step_begin(self, args, state, control, model=None, **kw):  # noqa: ANN001
            self.before = {n: p.detach().clone() for n, p in model.named_parameters()}
            self.flags = {n: p.requires_grad for n, p in model.named_parameters()}

        def on_step_end(self, args, state, control, model=None, optimizer=None, **kw):  # noqa: ANN001
            inner = getattr(optimizer, "optimizer", optimizer)
            step = state.global_step - 1
            active = {i for i in range(2) if self.flags[f"model.layers.{i}.mlp.up_proj.weight"]}
            moved = {n for n, p in model.named_parameters() if not torch.equal(self.before[n], p)}
            with_state = {n for n, p in model.named_parameters() if inner.state.get(p)}
            seen.append({"step": step, "active": active, "moved": moved, "with_state": with_state})

    train(recipe, callbacks=[Watch()])
    assert [s["step"] for s in seen] == [0, 1, 2]
    assert [sorted(s["active"]) for s in seen] == expected
    for s in seen:
        frozen_layer = f"model.layers.{1 - next(iter(s['active']))}."
        assert not any(n.startswith(frozen_layer) for n in s["moved"] | s["with_state"]), s["step"]
        assert {"model.embed_tokens.weight", "lm_head.weight"} <= s["moved"]  # always trained
        assert any(n.startswith(f"model.layers.{next(iter(s['active']))}.") for n in s["moved"])


def test_hft_freezes_the_expected_half() -> None:
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    from tunekit.methods.layerwise import build_hft
    from tunekit.methods.schema import HftMethod

    cfg = AutoConfig.from_pretrained(materialize("builtin:tiny-llama", 0))

    def frozen(stage: int, seed: int = 0) -> set[str]:
        with init_empty_weights():
            model = AutoModelForCausalLM.from_config(cfg)
        recipe = type("R", (), {"trainer": type("T", (), {"seed": seed})})()
        build_hft(model, HftMethod(name="hft", stage=stage), recipe)
        return {n for n, p in model.named_parameters() if not p.requires_grad}

    f0 = frozen(0)
    assert {"model.embed_tokens.weight", "lm_head.weight"} <= f0 and not any("norm" in n for n in f0)
    for layer, mlp_frozen in ((0, 1), (1, 2)):  # 3 MLP matrices: rounding alternates between layers
        assert len([n for n in f0 if f".{layer}.self_attn." in n]) == 2
        assert len([n for n in f0 if f".{layer}.mlp." in n]) == mlp_frozen
    assert frozen(0) == f0  # seeded: the same half every time
    assert frozen(1) != f0 and frozen(0, seed=1) != f0  # another stage or seed: another half


@pytest.mark.parametrize("name", ["loreft", "lofit"])
def test_representation_methods_touch_only_interventions(name: str, data_file: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    from tunekit.methods.interventions import ATTR
    from tunekit.methods.registry import load_trained
    from tunekit.pipeline import train

    recipe = method_recipe(name, data_file, tmp_path / "run", max_steps=3)
    run = train(recipe)
    final = run / "final"
    assert (final / "interventions.safetensors").is_file() and (final / "interventions.json").is_file()
    assert not (final / "model.safetensors").exists()  # only the interventions are saved
    base_dir = materialize("builtin:tiny-llama", 0)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    trained = load_trained(final, recipe)
    base_sd = load_file(base_dir / "model.safetensors")
    sd = {k: v for k, v in trained.state_dict().items() if not k.startswith(ATTR)}
    assert set(sd) == set(base_sd) and all(torch.equal(sd[k], base_sd[k]) for k in sd)
    with torch.no_grad():
        plain = base(input_ids=PROBE_IDS).logits
        changed = trained(input_ids=PROBE_IDS).logits
        getattr(trained, ATTR).enabled = False
        off = trained(input_ids=PROBE_IDS).logits
    assert torch.equal(off, plain)  # without the interventions the model is exactly the base
    assert (changed - plain).abs().max() > 1e-4  # the interventions (and only they) change the outputs
    saved = load_file(final / "interventions.safetensors")
    assert saved and all(v.abs().sum() > 0 for k, v in saved.items() if "offset" in k or "learned" in k)


def test_lofit_selects_the_top_heads_by_learned_scale(data_file: Path, tmp_path: Path) -> None:
    """`select_heads: 3` (of tiny-llama's 2 x 4 heads): a first pass learns a scale per head on training batches and
    keeps the 3 with the largest L1 norm; only those get offsets. The selection is recorded, is the top 3 of the
    recorded scores, does not depend on the run (the same heads twice), and a reloaded run uses the same heads."""
    from tunekit.methods.interventions import ATTR
    from tunekit.methods.registry import load_trained
    from tunekit.pipeline import train

    def run(out: Path, **method: object) -> tuple[dict, Recipe]:
        recipe = method_recipe("lofit", data_file, out, max_steps=2)
        recipe = recipe.model_copy(update={"method": recipe.method.model_copy(update=method)})
        final = train(recipe) / "final"
        return json.loads((final / "interventions.json").read_text()), recipe

    cfg, recipe = run(tmp_path / "a", heads="all", scale=False, select_heads=3, select_steps=4)
    sel = cfg["selection"]
    assert sel["candidates"] == 8 and sel["kept"] == 3 and sel["steps"] == 4 and len(cfg["heads"]) == 3
    ranked = sorted(sel["scores"], key=lambda k: -sel["scores"][k])
    assert {f"{i}.{h}" for i, h in cfg["heads"]} == set(ranked[:3])
    assert sel["scores"][ranked[2]] > sel["scores"][ranked[3]] > 0  # a real ranking, not ties at zero
    model = load_trained(tmp_path / "a" / "final", recipe)
    offsets = {k: v.shape for k, v in getattr(model, ATTR).state_dict().items() if k.endswith("offset")}
    assert sum(shape[0] for shape in offsets.values()) == 3  # offsets on the 3 chosen heads only
    again, _ = run(tmp_path / "b", heads="all", scale=False, select_heads=3, select_steps=4)
    assert again["heads"] == cfg["heads"]
    fraction, _ = run(tmp_path / "c", heads="all", scale=False, select_heads=0.25, select_steps=2)
    assert len(fraction["heads"]) == 2  # a quarter of 8 candidates


def test_loreft_last_positions_follow_the_prompt_boundary() -> None:
    """positions: last intervenes on the `last_n` tokens before each trained span (from the labels; TRL's loss path
    drops them, so the SFT trainer hands them over) and, without labels, on the last prompt tokens at prefill and
    never on decoding steps. Checked on the model's outputs: positions before the first intervened one are
    exactly the base's (causal attention), the intervened one is not."""
    from transformers import AutoModelForCausalLM

    from tunekit.methods.interventions import attach, labels_for_positions, position_mask

    cfg = {"last_n": 2, "first_n": 1, "positions": "last"}
    labels = torch.tensor([[-100, -100, -100, 5, 6, -100, -100, -100, 7, 8, -100]])
    assert position_mask(cfg, labels, None, (1, 11), False)[0].nonzero().flatten().tolist() == [1, 2, 6, 7]
    padded = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 0, 0]])  # left and right padding
    assert position_mask(cfg, None, padded, (2, 5), False).int().tolist() == [[0, 0, 0, 1, 1], [0, 1, 1, 0, 0]]
    assert not position_mask(cfg, None, None, (1, 1), True).any()  # a decoding step
    both = position_mask({**cfg, "positions": "first_last"}, labels, None, (1, 11), False)
    assert both[0].nonzero().flatten().tolist() == [0, 1, 2, 6, 7]
    first = position_mask({**cfg, "positions": "first", "first_n": 2}, None, padded, (2, 5), False)
    assert first.int().tolist() == [[0, 0, 1, 1, 0], [1, 1, 0, 0, 0]]  # left padding skipped
    assert not position_mask({**cfg, "positions": "first"}, None, None, (2, 1), True).any()  # generated tokens

    base_dir = materialize("builtin:tiny-llama", 0)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    model = attach(AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval(),
                   {"method": "loreft", "rank": 2, "layers": "all", "dropout": 0.0, **cfg})
    ids = torch.tensor([[3, 17, 42, 9, 11, 5, 8, 60]])
    span = torch.tensor([[-100, -100, -100, -100, -100, 5, 8, -100]])  # the prompt's last 2 tokens: 3 and 4
    with torch.no_grad():
        plain = base(input_ids=ids).logits
        with labels_for_positions(model, span):
            trained = model(input_ids=ids).logits
        prefill = model(input_ids=ids[:, :5]).logits  # no labels: the prompt's last 2 tokens are 3 and 4 again
    assert torch.equal(trained[:, :3], plain[:, :3]) and not torch.allclose(trained[:, 3], plain[:, 3])
    assert torch.allclose(prefill, trained[:, :5], atol=1e-6)  # inference intervenes where training did


def test_loreft_last_positions_train_and_evaluate(tmp_path: Path) -> None:
    recipe = tiny_recipe(tmp_path, method={"name": "loreft", "rank": 2, "positions": "last", "last_n": 3},
                         trainer={"max_steps": 3, "learning_rate": 1e-2})
    run_cli("train", recipe, check=True)
    cfg = json.loads((tmp_path / "run" / "final" / "interventions.json").read_text())
    assert cfg["positions"] == "last" and cfg["last_n"] == 3
    proc = run_cli("eval", tmp_path / "run", "--task", "quickstart-arith", "--max-examples", "4", check=True)
    assert "quickstart-arith:" in proc.stderr
    refused = tiny_recipe(tmp_path, "dpo.yaml", method={"name": "loreft", "positions": "last"},
                          data={"train": [{"path": "builtin:arith/pref_train.jsonl", "format": "preference"}]},
                          trainer={"kind": "dpo"})
    proc = run_cli("validate", refused)
    assert proc.returncode == 2 and "method.positions: last finds the prompt's last tokens from the SFT labels" in \
        " ".join(proc.stderr.split())


PARAM_CASES = {
    "lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
    "ia3": {},
    "loha": {"r": 2},
    "prefix_tuning": {"num_virtual_tokens": 4},
    "vera": {"r": 8},
}


@pytest.mark.parametrize("name", list(PARAM_CASES))
def test_counts_without_weights_equal_peft(name: str, data_file: Path, tmp_path: Path) -> None:
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from tunekit.methods import lora, peft_generic
    from tunekit.methods.registry import count_without_weights

    recipe = with_method(method_recipe(name, data_file, tmp_path / "run", max_steps=2), **PARAM_CASES[name])
    counts = count_without_weights(recipe)
    model = AutoModelForCausalLM.from_pretrained(materialize("builtin:tiny-llama", 0))
    config = lora.peft_config(recipe.method) if name == "lora" else peft_generic.peft_config(recipe.method, recipe)
    trainable, total = get_peft_model(model, config).get_nb_trainable_parameters()
    assert (counts["trainable"], counts["total"]) == (trainable, total)


def test_validate_params_cli_matches_the_trained_model(data_file: Path, tmp_path: Path) -> None:
    """`validate --params` (meta device, no weights) prints the counts summary.json gets from the real model."""
    from tunekit.methods.registry import apply_method
    from tunekit.model.load import load_model

    recipe_path = tiny_recipe(tmp_path, trainer={"max_steps": 1})
    proc = run_cli("validate", recipe_path, "--params")
    assert proc.returncode == 0, proc.stderr
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("# params"))
    from tunekit.recipe.load import load_recipe

    recipe = load_recipe(recipe_path)
    p = apply_method(load_model(recipe.model, str(materialize("builtin:tiny-llama", 0))), recipe).parameters()
    assert f"trainable {p['trainable']:,} of total {p['total']:,}" in line


def test_loraplus_gives_b_matrices_a_higher_learning_rate(data_file: Path, tmp_path: Path) -> None:
    from transformers import TrainerCallback

    from tunekit.pipeline import train

    recipe = with_method(method_recipe("lora", data_file, tmp_path / "run", max_steps=1), loraplus_lr_ratio=16)
    lrs: dict[str, set] = {"A": set(), "B": set()}

    class Watch(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, optimizer=None, **kw):  # noqa: ANN001
            names = {id(p): n for n, p in model.named_parameters()}
            for group in optimizer.param_groups:
                for p in group["params"]:
                    lrs["B" if "lora_B" in names[id(p)] else "A"].add(group["lr"])

    train(recipe, callbacks=[Watch()])
    assert lrs["A"] == {1e-2} and len(lrs["B"]) == 1 and lrs["B"].pop() == pytest.approx(0.16)


@pytest.mark.parametrize("init", ["gaussian", "pissa", "pissa_niter_2", "olora", "orthogonal", "loftq"])
def test_lora_initialisations_build_and_run(init: str, data_file: Path, tmp_path: Path) -> None:
    from tunekit.methods.registry import apply_method
    from tunekit.model.load import load_model

    extra = {"loftq_config": {"loftq_bits": 4}} if init == "loftq" else {}
    recipe = with_method(method_recipe("lora", data_file, tmp_path / "run", max_steps=1), init_lora_weights=init,
                         **extra)
    base = load_model(recipe.model, str(materialize("builtin:tiny-llama", 0)))
    if init == "loftq" and importlib.util.find_spec("scipy") is None:  # peft's LoftQ needs scipy
        from tunekit.errors import UserError

        with pytest.raises(UserError, match="scipy"):
            apply_method(base, recipe)
        return
    plan = apply_method(base, recipe)
    assert plan.model.peft_config["default"].init_lora_weights == init
    loss = plan.model(input_ids=PROBE_IDS, labels=PROBE_IDS).loss
    loss.backward()
    assert torch.isfinite(loss) and any(p.grad is not None for p in plan.model.parameters() if p.requires_grad)


@pytest.mark.parametrize("init", ["eva", "corda"])
def test_data_driven_lora_inits_calibrate_on_the_training_data(init: str, data_file: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, TrainerCallback

    from tunekit.errors import UserError
    from tunekit.methods.registry import apply_method
    from tunekit.model.load import load_model
    from tunekit.pipeline import train

    # The tiny rows train 1-2 answer tokens each: fewer than EVA's r * rho components, so EVA reads every token.
    extra = {"eva_config": {"use_label_mask": False}} if init == "eva" else {}
    recipe = with_method(method_recipe("lora", data_file, tmp_path / "run", max_steps=2), init_lora_weights=init,
                         **extra)
    base_dir = materialize("builtin:tiny-llama", 0)
    with pytest.raises(UserError, match="calibration"):  # the builder alone has no data to read
        apply_method(load_model(recipe.model, str(base_dir)), recipe)
    if init == "corda" and importlib.util.find_spec("attr") is None:  # peft's CorDA imports attrs
        with pytest.raises(UserError, match="attrs"):
            train(recipe)
        return
    seen: dict = {}

    class Initial(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kw):  # noqa: ANN001
            model.eval()
            with torch.no_grad():
                seen["logits"] = model(input_ids=PROBE_IDS).logits
            model.train()
            seen["state"] = {k: v.detach().clone() for k, v in model.state_dict().items()}

    run = train(recipe, callbacks=[Initial()])
    assert json.loads((run / "summary.json").read_text())["global_step"] == 2
    sd = seen["state"]
    a_keys = [k for k in sd if "lora_A" in k]
    assert a_keys and all(sd[k].abs().sum() > 0 for k in a_keys)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        plain = base(input_ids=PROBE_IDS).logits
    # Both inits keep the base model's function at step 0 (EVA: B = 0; CorDA: W - B A is kept as the base).
    assert (seen["logits"] - plain).abs().max() < 1e-4
    base_sd = base.state_dict()
    residual = {k: v for k, v in sd.items() if k.endswith("base_layer.weight")}
    originals = {k: base_sd[k.removeprefix("base_model.model.").replace(".base_layer", "")] for k in residual}
    if init == "eva":
        # lora_A rows are the top right-singular vectors of the layers' inputs: orthonormal, unlike kaiming rows.
        for k in a_keys:
            a = sd[k]
            assert torch.allclose(a @ a.T, torch.eye(a.shape[0]), atol=1e-4), k
        assert all(sd[k.replace("lora_A", "lora_B")].abs().sum() == 0 for k in a_keys)
        assert all(torch.equal(residual[k], originals[k]) for k in residual)  # the base weights are untouched
    else:
        # lora_B lora_A is the top-r part of the covariance-weighted SVD of W, and the base keeps the residual.
        assert all(sd[k.replace("lora_A", "lora_B")].abs().sum() > 0 for k in a_keys)
        assert all(not torch.allclose(residual[k], originals[k]) for k in residual)


def test_lora_ga_aligns_the_adapter_with_the_full_fine_tuning_gradient(data_file: Path, tmp_path: Path) -> None:
    """LoRA-GA (arXiv 2407.05000, peft's default direction ArB2r): lora_A's rows span the top-r right singular
    vectors of the full fine-tuning gradient averaged over the calibration batches, lora_B's columns the next r
    left ones, and the base keeps W - s·B·A, so the model computes the base's function at step 0."""
    from tunekit.methods.registry import apply_method
    from tunekit.model.load import load_model

    r = 4
    recipe = with_method(method_recipe("lora", data_file, tmp_path / "run", max_steps=1), init_lora_weights="lora_ga",
                         r=r, use_rslora=False)
    ids = [PROBE_IDS, PROBE_IDS.flip(1)]
    batches = [{"input_ids": i, "attention_mask": torch.ones_like(i), "labels": i} for i in ids]
    base_dir = str(materialize("builtin:tiny-llama", 0))
    reference = load_model(recipe.model, base_dir)
    weight = reference.model.layers[0].self_attn.q_proj.weight
    grads = []
    for b in batches:
        reference.zero_grad()
        reference(**b).loss.backward()
        grads.append(weight.grad.clone())
    u, _, vh = torch.linalg.svd(torch.stack(grads).mean(0))
    with torch.no_grad():
        plain = reference.eval()(input_ids=PROBE_IDS).logits

    model = apply_method(load_model(recipe.model, base_dir), recipe, calibration=batches).model
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    a, b = layer.lora_A["default"].weight.detach(), layer.lora_B["default"].weight.detach()

    def captured(m: torch.Tensor, basis: torch.Tensor) -> float:  # share of m's rows inside basis's row span
        return float((m @ basis.T).norm() ** 2 / m.norm() ** 2)

    assert captured(a, vh[:r]) > 0.99  # A: top-r right singular vectors of the gradient
    assert captured(b.T, u[:, r:2 * r].T) > 0.99  # B: the next r left singular vectors
    assert captured(a, vh[r:2 * r]) < 0.01  # and not some other part of it
    shifted = layer.base_layer.weight.detach() + layer.scaling["default"] * b @ a
    torch.testing.assert_close(shifted, weight.detach(), atol=1e-5, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(input_ids=PROBE_IDS).logits, plain, atol=1e-4, rtol=0)


def test_eva_that_cannot_converge_is_a_clear_error(data_file: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from tunekit.errors import UserError
    from tunekit.methods import lora
    from tunekit.methods.registry import apply_method
    from tunekit.model.load import load_model

    monkeypatch.setattr(lora, "EVA_MAX_PASSES", 2)
    recipe = with_method(method_recipe("lora", data_file, tmp_path / "run", max_steps=1), init_lora_weights="eva")
    labels = torch.full_like(PROBE_IDS, -100)
    labels[0, -1] = PROBE_IDS[0, -1]  # one trained token: fewer than EVA's r * rho components, never an SVD step
    batch = {"input_ids": PROBE_IDS, "attention_mask": torch.ones_like(PROBE_IDS), "labels": labels}
    base = load_model(recipe.model, str(materialize("builtin:tiny-llama", 0)))
    with pytest.raises(UserError, match="did not converge in 2 passes"):
        apply_method(base, recipe, calibration=[batch])


def test_params_for_weight_dependent_init_is_a_clear_error(data_file: Path, tmp_path: Path) -> None:
    from tunekit.errors import UserError
    from tunekit.methods.registry import count_without_weights

    recipe = with_method(method_recipe("shira", data_file, tmp_path / "run", max_steps=1), r=2)
    with pytest.raises(UserError, match="summary.json"):
        count_without_weights(recipe)


@pytest.mark.parametrize("quant", [{"bits": 8}, {"bits": 4, "quant_type": "fp4", "double_quant": False},
                                   {"bits": 4, "quant_storage": "auto"}, {"bits": 4, "quant_storage": "bfloat16"}])
def test_qlora_variants_quantize_the_base(quant: dict, data_file: Path, tmp_path: Path) -> None:
    import bitsandbytes as bnb

    from tunekit.methods.plan import count_parameters
    from tunekit.methods.registry import apply_method, load_kwargs
    from tunekit.model.load import load_model

    recipe = with_method(method_recipe("qlora", data_file, tmp_path / "run", max_steps=1), **quant)
    model = load_model(recipe.model, str(materialize("builtin:tiny-llama", 0)), **load_kwargs(recipe))
    plan = apply_method(model, recipe)
    layer = plan.model.base_model.model.model.layers[0].mlp.up_proj.base_layer
    assert isinstance(layer, bnb.nn.Linear8bitLt if quant["bits"] == 8 else bnb.nn.Linear4bit)
    if quant.get("quant_type") == "fp4":
        assert layer.weight.quant_state.quant_type == "fp4" and not layer.weight.quant_state.nested
    if quant["bits"] == 4:  # the packed 4-bit weights' storage dtype: what ZeRO-3 / FSDP shard (auto: model.dtype)
        storage = {None: torch.uint8, "auto": torch.float32, "bfloat16": torch.bfloat16}[quant.get("quant_storage")]
        assert layer.weight.dtype == storage
    plan.model(input_ids=PROBE_IDS, labels=PROBE_IDS).loss.backward()
    assert all(p.grad is not None for p in plan.model.parameters() if p.requires_grad)
    assert count_parameters(plan.model)["total"] == 168128  # logical counts, same as unquantized LoRA
