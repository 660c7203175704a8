"""The FSDP2 cases of the 2-process parity tests (tests/e2e/test_launch.py: the construction, the tolerances and
the DDP/DeepSpeed cases), in a file of their own so that the two pytest workers run them beside those."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from tests.conftest import losses, read_metrics
from tests.e2e.test_launch import (
    LOGITS_TOL,
    LOSS_TOL,
    PARITY_FULL,
    PARITY_SLOW,
    check_parity,
    final_logits,
    logits_atol,
    ok,
    params,
    recipe_for,
    runs,
    tunekit,
    weights_logits,
)

pytestmark = pytest.mark.multiprocess
__all__ = ["runs"]  # the module-scoped fixture: this file's own cache of runs


@pytest.mark.parametrize("name", [*params([n for n in PARITY_FULL if "fsdp" in n], pytest.mark.full),
                                  *params([n for n in PARITY_SLOW if "fsdp" in n], pytest.mark.slow)])
def test_two_fsdp_processes_match_one(runs, name: str) -> None:  # noqa: F811 - the fixture
    check_parity(runs, name)


@pytest.mark.full
def test_fsdp_full_state_dict_checkpoints_hold_the_whole_adapter(runs) -> None:  # noqa: F811 - the fixture
    """With FSDP activation checkpointing and FULL_STATE_DICT, every checkpoint's adapter (not only final/) holds
    the trained LoRA weights: the same outputs as the single-process run's checkpoint at that step. (peft once saved
    an empty adapter here: it matched the adapter by module names that still held the checkpoint wrapper.)"""
    single, _ = runs("single-lora")
    multi, _ = runs("fsdpac-lora")
    assert losses(multi) == pytest.approx(losses(single), abs=LOSS_TOL)
    from safetensors.torch import load_file

    assert len(load_file(multi / "checkpoints/checkpoint-2/adapter_model.safetensors")) == len(
        load_file(single / "checkpoints/checkpoint-2/adapter_model.safetensors"))
    for step in (2, 4):
        ckpt = Path("checkpoints") / f"checkpoint-{step}"
        want = weights_logits(single / ckpt)
        torch.testing.assert_close(weights_logits(multi / ckpt), want, atol=logits_atol("lora", want), rtol=0)
    want = final_logits(single)
    torch.testing.assert_close(final_logits(multi), want, atol=logits_atol("lora", want), rtol=0)


@pytest.mark.full
def test_resume_two_process_fsdp_run_on_one_process(runs, tmp_path: Path) -> None:  # noqa: F811 - the fixture
    """FSDP2's sharded checkpoints (torch.distributed.checkpoint) reshard on load: a 2-process run stopped
    after checkpoint-2 resumes on 1 process (4 per device: the same global batch) and ends like the full run."""
    full, _ = runs("fsdp-lora")
    stopped = tmp_path / "run"
    shutil.copytree(full, stopped)
    for p in ("final", "summary.json", "checkpoints/checkpoint-4"):
        shutil.rmtree(stopped / p) if (stopped / p).is_dir() else (stopped / p).unlink()
    assert (stopped / "checkpoints/checkpoint-2/pytorch_model_fsdp_0/.metadata").exists()  # sharded, not gathered
    proc = tunekit("eval", stopped)  # an unfinished sharded run: no HF weights yet, and eval says why
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "a sharded FSDP checkpoint" in " ".join(proc.stderr.split())
    proc = ok(tunekit("train", recipe_for(tmp_path, "lora", 4), "--nproc", "1", "--strategy", "fsdp", "--resume"))
    assert "resumingfrom" in "".join(proc.stderr.split())
    summary = json.loads((stopped / "summary.json").read_text())
    assert summary["global_step"] == 4 and summary["launch"]["engine"] == "FSDP"
    assert [m["step"] for m in read_metrics(stopped) if "loss" in m] == [1, 2, 3, 4]
    assert losses(stopped) == pytest.approx(losses(full), abs=LOSS_TOL)
    torch.testing.assert_close(final_logits(stopped), final_logits(full), atol=LOGITS_TOL, rtol=0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusal")
def test_fsdp_cpu_offload_without_a_gpu_is_refused_with_the_reason(tmp_path: Path) -> None:
    proc = tunekit("train", recipe_for(tmp_path, "lora", 2), "--nproc", "2", "--strategy", "fsdp",
                   "launch.fsdp.config=fsdp2-offload")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    text = " ".join(proc.stderr.split())
    assert "launch.fsdp.cpu_offload: true needs a GPU" in text and "set launch.fsdp.cpu_offload: false" in text
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # no worker started
