"""Model merging on real peft adapters over the builtin tiny model (in-process, no training needed).

The adapters are LoRA adapters with random A and B (peft's `init_lora_weights=False`), saved with
`save_pretrained` like a trained run's final/. Expected results are computed by hand from the saved
adapter files: delta W = (alpha / r) * B @ A.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tunekit.errors import UserError
from tunekit.merge.models import merge_models, merge_states
from tunekit.model.builtin import materialize

R, ALPHA, TARGETS = 4, 8, ["q_proj", "v_proj", "down_proj"]


def make_adapter(out: Path, seed: int, base_seed: int = 0) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(materialize("builtin:tiny-llama", base_seed))
    torch.manual_seed(seed)
    model = get_peft_model(base, LoraConfig(r=R, lora_alpha=ALPHA, target_modules=TARGETS, init_lora_weights=False))
    model.save_pretrained(out)
    return out


def hand_deltas(adapter: Path) -> dict[str, torch.Tensor]:
    """base weight name -> (alpha/r) * B @ A, from the adapter file alone."""
    sd = load_file(adapter / "adapter_model.safetensors")
    out = {}
    for k, a in sd.items():
        if ".lora_A." in k:
            b = sd[k.replace(".lora_A.", ".lora_B.")]
            name = k.replace("base_model.model.", "").replace(".lora_A.weight", ".weight")
            out[name] = (ALPHA / R) * b @ a
    return out


@pytest.fixture(scope="module")
def adapters(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("adapters")
    return make_adapter(tmp / "a", 1), make_adapter(tmp / "b", 2)


def merged_deltas(out: Path) -> tuple[dict, dict]:
    base = load_file(materialize("builtin:tiny-llama", 0) / "model.safetensors")
    merged = load_file(out / "model.safetensors")
    return base, {k: merged[k] - base[k] for k in base}


def test_linear_merge_is_the_average_of_the_deltas(adapters: tuple[Path, Path], tmp_path: Path) -> None:
    a, b = adapters
    merge_models([str(a), str(b)], tmp_path / "lin", "linear", None, 0.5, 1.0, None, None, "float32", 0)
    da, db = hand_deltas(a), hand_deltas(b)
    base, delta = merged_deltas(tmp_path / "lin")
    assert len(da) == 2 * len(TARGETS)  # 2 layers
    for k, d in delta.items():
        expected = (da[k] + db[k]) / 2 if k in da else torch.zeros_like(d)
        assert torch.allclose(d, expected, atol=1e-6), k
    # task arithmetic: base + scale * sum(w_i * tau_i)
    merge_models([str(a), str(b)], tmp_path / "ta", "task_arithmetic", [1.0, -0.5], 0.5, 0.8, None, None,
                 "float32", 0)
    _, delta = merged_deltas(tmp_path / "ta")
    for k in da:
        assert torch.allclose(delta[k], 0.8 * (da[k] - 0.5 * db[k]), atol=1e-6), k
    info = json.loads((tmp_path / "ta" / "merge.json").read_text())
    assert info["method"] == "task_arithmetic" and info["scale"] == 0.8


def topk_mask(t: torch.Tensor, density: float) -> torch.Tensor:
    k = int(density * t.numel())
    mask = torch.zeros(t.numel(), dtype=torch.bool)
    mask[t.abs().reshape(-1).topk(k).indices] = True
    return mask.reshape(t.shape)


def test_ties_and_dare_produce_the_expected_sparsity(adapters: tuple[Path, Path], tmp_path: Path) -> None:
    a, b = adapters
    da, db = hand_deltas(a), hand_deltas(b)
    merge_models([str(a), str(b)], tmp_path / "ties", "ties", None, 0.2, 1.0, None, None, "float32", 0)
    _, delta = merged_deltas(tmp_path / "ties")
    for k in da:  # TIES keeps the union of each delta's top-20% entries (sign election drops none of the union)
        union = topk_mask(da[k], 0.2) | topk_mask(db[k], 0.2)
        assert torch.equal(delta[k].abs() > 1e-9, union), k
    untouched = [k for k in delta if k not in da]
    assert untouched and all(torch.count_nonzero(delta[k]) == 0 for k in untouched)

    merge_models([str(a), str(b)], tmp_path / "dare", "dare_linear", None, 0.3, 1.0, None, None, "float32", 0)
    _, delta = merged_deltas(tmp_path / "dare")
    kept = sum(int((delta[k].abs() > 1e-9).sum()) for k in da)
    total = sum(delta[k].numel() for k in da)
    assert kept / total == pytest.approx(1 - 0.7**2, abs=0.02)  # each delta keeps ~30% at random
    merge_models([str(a), str(b)], tmp_path / "dt", "dare_ties", None, 0.3, 1.0, None, None, "float32", 0)
    _, delta = merged_deltas(tmp_path / "dt")
    assert sum(int((delta[k].abs() > 1e-9).sum()) for k in da) / total == pytest.approx(1 - 0.7**2, abs=0.02)


def test_pruning_methods_on_state_dicts() -> None:
    torch.manual_seed(0)
    base = {"w": torch.zeros(100, 100), "step": torch.tensor(3)}
    tau = torch.randn(100, 100)
    states = [{"w": tau, "step": torch.tensor(3)}, {"w": tau.clone(), "step": torch.tensor(3)}]
    mp = merge_states(base, states, "magnitude_prune", [0.5, 0.5], density=0.1)["w"]
    assert torch.equal(mp != 0, topk_mask(tau, 0.1)) and torch.allclose(mp[mp != 0], tau[mp != 0])
    bc = merge_states(base, states, "breadcrumbs", [0.5, 0.5], density=0.1, outliers=0.05)["w"]
    assert int((bc != 0).sum()) == 1000  # 10% kept
    assert torch.equal(bc != 0, topk_mask(tau, 0.15) & ~topk_mask(tau, 0.05))  # the top 5% outliers dropped
    assert merge_states(base, states, "linear", None)["step"] == 3  # integer buffers are left alone


def test_greedy_soup_keeps_what_does_not_hurt(adapters: tuple[Path, Path], tmp_path: Path) -> None:
    from tunekit.data.sources import resolve_path

    a, b = adapters
    held_out = tmp_path / "held-out.jsonl"
    held_out.write_text("".join(resolve_path("builtin:quickstart/eval.jsonl").read_text().splitlines(True)[:16]))
    info = merge_models([str(a), str(b)], tmp_path / "gs", "greedy_soup", None, 0.5, 1.0, None, str(held_out),
                        "float32", 0)
    assert len(info["individual_losses"]) == 2 and info["kept"][0] == min((0, 1), key=lambda i: info["individual_losses"][i])
    assert info["soup_loss"] <= min(info["individual_losses"])


def test_different_bases_and_shapes_are_refused(adapters: tuple[Path, Path], tmp_path: Path) -> None:
    other = make_adapter(tmp_path / "other", 3, base_seed=1)
    with pytest.raises(UserError) as info:
        merge_models([str(adapters[0]), str(other)], tmp_path / "x", "linear", None, 0.5, 1.0, None, None, "float32", 0)
    assert str(other / "adapter_config.json") in str(info.value) and "same base" in str(info.value)
    small = materialize("builtin:small-llama", 0)
    with pytest.raises(UserError) as info:
        merge_models([str(adapters[0]), str(small)], tmp_path / "y", "linear", None, 0.5, 1.0, None, None,
                     "float32", 0)
    assert str(small / "config.json") in str(info.value) and "shape" in str(info.value)
    with pytest.raises(UserError, match="one weight per input"):
        merge_models([str(adapters[0]), str(adapters[1])], tmp_path / "z", "linear", [1.0], 0.5, 1.0, None, None,
                     "float32", 0)


def test_model_stock_equals_its_closed_form_by_hand() -> None:
    # w0 = [1, 1]; task vectors (2, 0) and (1, 1): cos = 2 / (2 * sqrt 2) = 1/sqrt 2,
    # t = 2 cos / (1 + cos) = sqrt 2 / (1 + 1/sqrt 2) = 0.828427..., merged = w0 + t * mean(tau) = w0 + t * (1.5, 0.5).
    base = {"w": torch.tensor([1.0, 1.0]), "same": torch.ones(3)}
    states = [{"w": torch.tensor([3.0, 1.0]), "same": torch.ones(3)},
              {"w": torch.tensor([2.0, 2.0]), "same": torch.ones(3)}]
    t = 0.8284271247
    merged = merge_states(base, states, "model_stock", None)
    assert torch.allclose(merged["w"], torch.tensor([1 + 1.5 * t, 1 + 0.5 * t]), atol=1e-6)  # float32 rounding
    assert torch.equal(merged["same"], torch.ones(3))  # zero task vectors: the base (t = 0, nothing to move)
    # three models at equal pairwise angles of 60 degrees: cos = 0.5, t = 3 * 0.5 / (1 + 2 * 0.5) = 0.75
    taus = [torch.tensor([1.0, 1.0, 0.0]), torch.tensor([1.0, 0.0, 1.0]), torch.tensor([0.0, 1.0, 1.0])]
    merged = merge_states({"w": torch.zeros(3)}, [{"w": x} for x in taus], "model_stock", None)
    assert torch.allclose(merged["w"], 0.75 * torch.stack(taus).mean(0), atol=1e-6)
    # orthogonal task vectors: t = 0, the base is kept
    merged = merge_states({"w": torch.zeros(2)}, [{"w": torch.tensor([1.0, 0.0])}, {"w": torch.tensor([0.0, 2.0])}],
                          "model_stock", None)
    assert torch.equal(merged["w"], torch.zeros(2))


def test_model_stock_on_two_adapters_matches_a_per_tensor_hand_computation(adapters: tuple[Path, Path],
                                                                             tmp_path: Path) -> None:
    a, b = adapters
    info = merge_models([str(a), str(b)], tmp_path / "ms", "model_stock", None, 0.5, 1.0, None, None, "float32", 0)
    da, db = hand_deltas(a), hand_deltas(b)
    _, delta = merged_deltas(tmp_path / "ms")
    ratios = []
    for k, d in delta.items():
        if k not in da:
            assert torch.count_nonzero(d) == 0, k  # tensors no adapter touched stay the base's
            continue
        x, y = da[k].reshape(-1).double(), db[k].reshape(-1).double()
        cos = float(x @ y / (x.norm() * y.norm()))
        t = 2 * cos / (1 + cos)
        ratios.append(t)
        # atol: the merged weights are float32 sums base + delta, read back and differenced (~1e-7 relative)
        assert torch.allclose(d, (t * (da[k] + db[k]) / 2).float(), atol=1e-6), k
    # merge.json reports the range of t over the 6 adapted tensors
    assert info["model_stock_t"]["tensors"] == len(ratios) == 2 * len(TARGETS)
    assert info["model_stock_t"]["min"] == pytest.approx(min(ratios), abs=1e-9)
    with pytest.raises(UserError, match="model_stock sets its own"):
        merge_models([str(a), str(b)], tmp_path / "w", "model_stock", [0.5, 0.5], 0.5, 1.0, None, None, "float32", 0)
