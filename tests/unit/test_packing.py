"""Packing: best-fit-decreasing bins, and loss parity of packed rows vs the same examples run one by one."""

from __future__ import annotations

import random

import pytest
import torch

from tunekit.data.build import build_datasets
from tunekit.data.packing import bfd_bins, pack, unpack
from tunekit.data.schema import DataConfig
from tunekit.model.builtin import TOKENIZER_DIR, materialize


def test_bfd_hand_computed_instance() -> None:
    lengths = [6, 5, 4, 3, 2, 2, 2]
    bins = bfd_bins(lengths, 8)
    assert sorted(sorted(lengths[i] for i in b) for b in bins) == [[2, 2, 4], [2, 6], [3, 5]]


def test_bfd_places_every_example_once_within_capacity_and_packs_tightly() -> None:
    rng = random.Random(0)
    lengths = [rng.randint(20, 400) for _ in range(3000)]
    bins = bfd_bins(lengths, 2048)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= 2048 for b in bins)
    assert sum(lengths) / (len(bins) * 2048) >= 0.98


def test_pack_keeps_examples_whole_and_unpack_restores_them() -> None:
    rows = [{"input_ids": list(range(n)), "labels": [-100] + list(range(1, n))} for n in (5, 3, 7, 2)]
    packed, stats = pack(rows, 8)
    assert stats == {"examples": 4, "rows": 3, "capacity": 8, "efficiency": round(17 / 24, 4)}
    back = [ex for row in packed for ex in unpack(row)]
    assert sorted(map(str, back)) == sorted(map(str, rows))
    assert all(sum(r["seq_lengths"]) == len(r["input_ids"]) <= 8 for r in packed)


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(TOKENIZER_DIR)


def _model(attn: str):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(materialize("builtin:tiny-llama", 0), dtype=torch.float32,
                                                 attn_implementation=attn)
    return model.eval()


def _token_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-position loss of predicting labels[t + 1] from position t (0 where the label is -100)."""
    return torch.nn.functional.cross_entropy(logits[:-1].float(), labels[1:], ignore_index=-100, reduction="none")


def _reference(model, rows) -> dict[tuple, torch.Tensor]:
    out = {}
    with torch.no_grad():
        for r in rows:
            ids, labels = torch.tensor([r["input_ids"]]), torch.tensor(r["labels"])
            out[tuple(r["input_ids"])] = _token_losses(model(input_ids=ids, use_cache=False).logits[0], labels)
    return out


def _check_batch(model, batch: dict, reference: dict, lengths: list[int]) -> float:
    """Max |packed - unpacked| per-token loss over every example in a padding-free batch."""
    from tunekit.data.packing import unpack

    # use_cache=False as in training (SFTTrainer.compute_loss): with a KV cache transformers skips the
    # packed-sequence detection, and packed examples would attend to each other.
    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=False).logits[0]
    flat = {"input_ids": batch["input_ids"][0].tolist(), "labels": batch["labels"][0].tolist(), "seq_lengths": lengths}
    worst, start = 0.0, 0
    for ex in unpack(flat):
        n = len(ex["input_ids"])
        got = _token_losses(logits[start : start + n], batch["labels"][0][start : start + n])
        want = reference[tuple(ex["input_ids"])]
        assert (batch["labels"][0][start + 1 : start + n] != -100).sum() > 0
        worst = max(worst, (got - want).abs().max().item())
        start += n
    return worst


# flex_attention builds its per-document block mask from the packed position ids too; it compiles its kernel on
# first use (2-3 minutes on 2 CPU cores), so it runs by hand (slow). Passed 2026-12-03, torch 2.13 CPU.
@pytest.mark.parametrize("attn", ["sdpa", "eager", pytest.param("flex_attention", marks=pytest.mark.slow)])
def test_packed_loss_equals_unpacked_loss(tok, attn: str) -> None:
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    spec = [{"path": "builtin:quickstart/eval.jsonl", "format": "messages"}]
    plain, _, _ = build_datasets(DataConfig(train=spec, max_length=96), tok, seed=0)
    packed, _, stats = build_datasets(DataConfig(train=spec, max_length=96, packing=True), tok, seed=0)
    assert stats["train"]["packing"]["rows"] < len(plain)
    model = _model(attn)
    batch_rows = [packed[i] for i in range(4)]
    needed = {tuple(ex["input_ids"]) for r in batch_rows for ex in unpack(r)}
    rows = [r for r in plain if tuple(r["input_ids"]) in needed]
    reference = _reference(model, rows)
    # The collator the trainer uses for packed data (SFTConfig(padding_free=True)), on rows from tunekit's packer.
    collate = DataCollatorForLanguageModeling(pad_token_id=tok.pad_token_id, padding_free=True)
    batch = collate(batch_rows)
    lengths = [n for r in batch_rows for n in r["seq_lengths"]]
    assert len(lengths) > 8  # several examples share each row
    assert _check_batch(model, batch, reference, lengths) < 1e-4
    # Padding-free without packing: the collator restarts positions per unpacked example.
    batch = collate(rows[:6])
    assert _check_batch(model, batch, reference, [len(r["input_ids"]) for r in rows[:6]]) < 1e-4
    # The check can fail: the same packed tokens with positions that do not restart attend across examples.
    batch = collate(batch_rows)
    batch["position_ids"] = torch.arange(batch["input_ids"].shape[1])[None]
    batch = {k: v for k, v in batch.items() if k in ("input_ids", "labels", "position_ids")}
    assert _check_batch(model, batch, reference, lengths) > 1e-3
