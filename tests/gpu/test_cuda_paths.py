"""The CUDA paths CPU cannot show: bf16 training, attention kernels on packed rows, QLoRA in 4-bit, and the
throughput/MFU figures a GPU run records. Every test here is marked `gpu` and skipped without CUDA (so CI, which
has no GPU, skips them all); on a GPU machine `pytest -m gpu tests/gpu` runs them (they are also in the default
set there, since `gpu` is not excluded by addopts).

Tolerances were derived from the numerics, not calibrated on a GPU run (none was lent while writing them):
- float32 attention kernels on CUDA: same 1e-4 as the CPU packing test (per-token loss over a tiny model; the
  kernels sum in different orders, float32 rounding ~1e-6 relative on logits of magnitude < 10).
- bf16: unit roundoff 2^-8 = 0.0039 relative on every stored activation; on logits of magnitude < 10 that is
  at most ~0.04 absolute per logit, and the per-token log-softmax averages it over the vocabulary. Packed vs
  unpacked bf16 on CPU differ by 0.001 (measured 2026-12-03, sdpa, tiny-llama); the bug the check must catch
  (packed documents attending to each other) moves per-token losses by 0.195 (float32, same rows). 0.03 sits
  between, an order of magnitude from each.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from tests.conftest import losses, run_cli, tiny_recipe

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (no GPU on this machine)")]

ATTENTION = [("sdpa", torch.float32, 1e-4), ("sdpa", torch.bfloat16, 0.03), ("eager", torch.float32, 1e-4),
             ("flash_attention_2", torch.bfloat16, 0.03)]


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


@pytest.mark.parametrize(("attn", "dtype", "tol"), ATTENTION, ids=lambda v: str(v).replace("torch.", ""))
def test_packed_rows_equal_unpacked_on_cuda(attn: str, dtype: torch.dtype, tol: float) -> None:
    """Padding-free packed rows through each CUDA attention kernel (flash-attention's varlen path when
    installed) give every document the per-token losses it has alone: no attention across documents."""
    if attn == "flash_attention_2" and not _installed("flash_attn"):
        pytest.skip("flash-attn is not installed")
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from tests.unit.test_packing import _check_batch, _reference
    from tunekit.data.build import build_datasets
    from tunekit.data.packing import unpack
    from tunekit.data.schema import DataConfig
    from tunekit.model.builtin import TOKENIZER_DIR, materialize

    tok = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    spec = [{"path": "builtin:quickstart/eval.jsonl", "format": "messages"}]
    plain, _, _ = build_datasets(DataConfig(train=spec, max_length=96), tok, seed=0)
    packed, _, _ = build_datasets(DataConfig(train=spec, max_length=96, packing=True), tok, seed=0)
    model = AutoModelForCausalLM.from_pretrained(materialize("builtin:tiny-llama", 0), dtype=dtype,
                                                 attn_implementation=attn).cuda().eval()
    batch_rows = [packed[i] for i in range(4)]
    needed = {tuple(ex["input_ids"]) for r in batch_rows for ex in unpack(r)}
    rows = [r for r in plain if tuple(r["input_ids"]) in needed]

    class OnCuda(torch.nn.Module):  # _reference/_check_batch build CPU tensors; move them to the model
        def forward(self, **kw):  # noqa: ANN003, ANN202
            out = model(**{k: v.cuda() if torch.is_tensor(v) else v for k, v in kw.items()})
            out.logits = out.logits.float().cpu()
            return out

    wrapped = OnCuda()
    reference = _reference(wrapped, rows)
    batch = DataCollatorForLanguageModeling(pad_token_id=tok.pad_token_id, padding_free=True)(batch_rows)
    lengths = [n for r in batch_rows for n in r["seq_lengths"]]
    assert _check_batch(wrapped, batch, reference, lengths) < tol


def _train(tmp: Path, name: str, **sections: dict) -> Path:
    recipe = tiny_recipe(tmp, f"{name}.yaml", output={"dir": str(tmp / name)}, **sections)
    run_cli("train", recipe, check=True, timeout=600)
    return tmp / name


def test_bf16_training_on_cuda_tracks_float32(tmp_path: Path) -> None:
    """The tiny model trained in bf16 on the GPU starts at the float32 loss (bf16 roundoff 2^-8 on the logits,
    averaged by the log-softmax: 2% is ~5x what it can move the mean loss) and learns; the run records CUDA
    peak memory, tokens/s and an MFU (the H100/H200 are in the GPU table)."""
    fp32 = _train(tmp_path, "fp32")
    bf16 = _train(tmp_path, "bf16", model={"path": "builtin:tiny-llama", "dtype": "bfloat16"})
    a, b = losses(fp32), losses(bf16)
    assert abs(b[0] - a[0]) / a[0] < 0.02, (a[0], b[0])
    assert b[-1] < b[0]
    summary = json.loads((bf16 / "summary.json").read_text())
    throughput = summary["throughput"]
    assert throughput["tokens_per_s"] > 0
    if torch.cuda.get_device_name().startswith(("NVIDIA H100", "NVIDIA H200")):
        assert throughput["mfu"] is not None and 0 < throughput["mfu"] < 1


@pytest.mark.skipif(not _installed("bitsandbytes"), reason="QLoRA needs bitsandbytes")
def test_qlora_trains_in_4bit_on_cuda_and_evaluates(tmp_path: Path) -> None:
    """QLoRA's 4-bit base (bitsandbytes NF4) trains on CUDA: the loss falls and the saved adapter reloads on its
    quantized base for `tunekit eval`."""
    run = _train(tmp_path, "qlora", method={"name": "qlora", "r": 8, "alpha": 16})
    curve = losses(run)
    assert curve[-1] < curve[0]
    run_cli("eval", run, "--task", "quickstart-loss", check=True, timeout=600)


def _first_losses(run: Path, n: int = 4) -> list[float]:
    return losses(run)[:n]


@pytest.mark.skipif(not _installed("liger_kernel"), reason="liger-kernel is not installed (pip install tunekit[gpu])")
def test_liger_kernels_match_the_plain_model(tmp_path: Path) -> None:
    """Liger's RMSNorm/SwiGLU/RoPE kernels in float32 compute the same functions as transformers' modules:
    the first steps' losses agree to 1e-4 relative (float32 rounding in a different summation order, compounded
    over 4 steps of updates), and the run records that Liger was on."""
    plain = _train(tmp_path, "plain", trainer={"kernels": "none"})
    liger = _train(tmp_path, "liger", trainer={"kernels": "liger"})
    assert json.loads((liger / "summary.json").read_text())["fast_paths"]["kernels"] == "liger"
    for a, b in zip(_first_losses(plain), _first_losses(liger), strict=True):
        assert abs(a - b) / a < 1e-4, (a, b)


def test_compile_and_activation_offload_on_cuda_match_eager(tmp_path: Path) -> None:
    """`trainer.compile` (inductor on CUDA) and checkpointing with activations offloaded to pinned CPU memory
    change how the step runs, not what it computes: first losses agree with the eager run to 1e-4 relative
    (inductor may fuse and reorder float32 reductions; offload copies tensors bit for bit)."""
    eager = _train(tmp_path, "eager")
    compiled = _train(tmp_path, "compiled", trainer={"compile": True})
    offload = _train(tmp_path, "offload", trainer={"gradient_checkpointing": True, "activation_offload": True})
    for run in (compiled, offload):
        for a, b in zip(_first_losses(eager), _first_losses(run), strict=True):
            assert abs(a - b) / a < 1e-4, (run.name, a, b)


def test_token_budget_and_fused_adamw_are_the_cuda_defaults_in_a_run(tmp_path: Path) -> None:
    """On CUDA `optim: auto` resolves to fused AdamW, and a token-budget run trains with it."""
    run = _train(tmp_path, "budget", data={"tokens_per_batch": 256})
    paths = json.loads((run / "summary.json").read_text())["fast_paths"]
    assert paths["optim"] == "adamw_torch_fused" and paths["tokens_per_batch"] == 256
    curve = losses(run)
    assert curve[-1] < curve[0]
