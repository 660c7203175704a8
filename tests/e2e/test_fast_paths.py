"""Fast paths through the real CLI on CPU: token-budget batches (loss, resume, two processes) and torch.compile.
Liger and activation offload need a GPU: their CPU refusals are in tests/unit/test_token_batches.py. Each test
here trains (about a minute on a loaded 2-core machine): CI's full set; compile is by hand (slow)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

from tests.conftest import losses, read_metrics, run_cli, tiny_recipe, tunekit_process

BUDGET = 192  # tokens per micro-batch: 3 rows of max_length 64, or many more short ones
ROWS = 24


def budget_recipe(tmp: Path, name: str = "recipe.yaml", **trainer: object) -> Path:
    return tiny_recipe(
        tmp, name,
        data={"train": [{"path": "builtin:quickstart/train.jsonl", "format": "messages", "samples": ROWS}],
              "max_length": 64, "tokens_per_batch": BUDGET},
        trainer={"kind": "sft", "learning_rate": 5e-3, "num_epochs": 2, "logging_steps": 1, "seed": 0,
                 "gradient_accumulation_steps": 2, "per_device_batch_size": BUDGET // 64, "max_steps": -1, **trainer},
        output={"dir": str(tmp / "run"), "save_steps": 2})


@pytest.fixture(scope="module")
def budget_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("budget")
    recipe = budget_recipe(tmp)
    run_cli("train", recipe, check=True)
    return recipe, tmp / "run"


def step_one_rows(recipe_path: Path) -> tuple[list[list[dict]], str]:
    """The rows of step 1's two micro-batches, rebuilt from the data stage's cache and the sampler."""
    from tunekit.data.build import build_datasets
    from tunekit.data.token_batches import TokenBudgetSampler
    from tunekit.model.load import load_tokenizer, resolve_model_path
    from tunekit.recipe.load import load_recipe
    from tunekit.trainers.batching import row_lengths

    r = load_recipe(recipe_path, [])
    path = resolve_model_path(r.model)
    ds, _, _ = build_datasets(r.data, load_tokenizer(r.model, path), r.trainer.seed, r.model)
    batches = list(TokenBudgetSampler(row_lengths(ds), BUDGET, True, r.trainer.seed))
    return [[ds[i] for i in b] for b in batches[:2]], path


@pytest.mark.full
def test_loss_is_the_per_token_mean_over_the_step(budget_run: tuple[Path, Path]) -> None:
    """Step 1's logged loss (two micro-batches of different row and token counts) is the mean over all their
    labelled tokens (transformers' num_items_in_batch), not the mean of the two micro-batches' means. Computed here
    with the base model: LoRA's B starts at zero, so the adapted model's first forward is the base model's."""
    from transformers import AutoModelForCausalLM

    recipe, run = budget_run
    micro, path = step_one_rows(recipe)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    sums, counts = [], []
    with torch.no_grad():
        for rows in micro:
            s = n = 0.0
            for row in rows:
                logits = model(torch.tensor([row["input_ids"]])).logits[0, :-1]
                labels = torch.tensor(row["labels"][1:])
                s += torch.nn.functional.cross_entropy(logits, labels, ignore_index=-100, reduction="sum").item()
                n += int((labels != -100).sum())
            sums.append(s)
            counts.append(n)
    per_token = sum(sums) / sum(counts)
    per_batch = sum(s / n for s, n in zip(sums, counts, strict=True)) / 2
    logged = losses(run)[0]
    # float32 forward in another summation order (batched and padded vs one row at a time, TRL's LM head in
    # tiles): relative differences of order 1e-6 (float32's 6e-8 per op over a few hundred-term sums); 2e-5
    # relative is ten times below the gap between the two conventions on these rows (5e-4: the random-init model
    # gives every token a loss near ln V, so the conventions differ only by the spread of the micro-batch means).
    assert abs(per_token - per_batch) / per_token > 2e-4  # the two conventions differ here: the test can tell
    assert logged == pytest.approx(per_token, rel=2e-5), (logged, per_token, per_batch)
    assert [len(b) for b in micro] != [BUDGET // 64] * 2  # the budget, not a fixed row count, sized the batches


@pytest.mark.full
def test_every_token_once_per_epoch(budget_run: tuple[Path, Path]) -> None:
    recipe, run = budget_run
    rows = [r for batch in step_one_rows(recipe)[0] for r in batch]
    metrics = [m for m in read_metrics(run) if "tokens_seen" in m]
    assert rows and metrics[-1]["tokens_seen"] == 2 * sum_row_tokens(recipe)  # 2 epochs


def sum_row_tokens(recipe_path: Path) -> int:
    from tunekit.data.build import build_datasets
    from tunekit.model.load import load_tokenizer, resolve_model_path
    from tunekit.recipe.load import load_recipe
    from tunekit.trainers.batching import row_lengths

    r = load_recipe(recipe_path, [])
    ds, _, _ = build_datasets(r.data, load_tokenizer(r.model, resolve_model_path(r.model)), r.trainer.seed, r.model)
    return sum(row_lengths(ds))


@pytest.mark.full
def test_resume_in_the_second_epoch_continues_with_the_same_batches(budget_run: tuple[Path, Path],
                                                                    tmp_path: Path) -> None:
    """Stopped after a checkpoint inside epoch 2 and resumed: the same losses as the uninterrupted run (the
    batches are formed from the seed, their order from (seed, epoch), and the skipped batches are the same)."""
    recipe, full = budget_run
    metrics = read_metrics(full)
    steps_per_epoch = max(m["step"] for m in metrics if "loss" in m and m["epoch"] <= 1.0)
    last = max(m["step"] for m in metrics if "loss" in m)
    resume_at = next(s for s in range(steps_per_epoch + 1, last) if s % 2 == 0)
    stopped = tmp_path / "stopped"
    shutil.copytree(full, stopped)
    for p in ("final", "summary.json"):
        shutil.rmtree(stopped / p) if (stopped / p).is_dir() else (stopped / p).unlink()
    for ckpt in (stopped / "checkpoints").glob("checkpoint-*"):
        if int(ckpt.name.split("-")[1]) > resume_at:
            shutil.rmtree(ckpt)
    proc = run_cli("train", recipe, f"output.dir={stopped}", "--resume", check=True)
    assert f"checkpoint-{resume_at}" in proc.stderr
    # the same computation resumed from saved state: float32 reduction order at most (as tests/e2e/test_train.py)
    assert losses(stopped) == pytest.approx(losses(full), abs=1e-4)
    assert read_metrics(stopped)[-1]["tokens_seen"] == read_metrics(full)[-1]["tokens_seen"]


@pytest.mark.full
@pytest.mark.multiprocess
# CI (full) runs DDP; FSDP and DeepSpeed by hand (slow: CI time, make test-all)
@pytest.mark.parametrize("strategy", ["ddp", *(pytest.param(s, marks=pytest.mark.slow) for s in ("fsdp", "deepspeed"))])
def test_two_processes_see_every_row_once(strategy: str, tmp_path: Path) -> None:
    """2 processes (gloo; DDP, FSDP2, DeepSpeed ZeRO-2): together they see each row's tokens exactly once per epoch
    (tokens_seen is summed over the ranks), with the same number of steps on both (a rank with fewer batches would
    hang the other): the engines take the token-budget batches as DDP does, whatever their size."""
    recipe = budget_recipe(tmp_path, num_epochs=1)
    extra = {"ddp": [], "fsdp": ["--strategy", "fsdp"],
             "deepspeed": ["--strategy", "deepspeed", "launch.deepspeed.config=zero2"]}[strategy]
    proc = tunekit_process(["train", recipe, "--nproc", "2", *extra], timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "run"
    assert read_metrics(run)[-1]["tokens_seen"] == sum_row_tokens(recipe)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["launch"]["world_size"] == 2 and summary["fast_paths"]["tokens_per_batch"] == BUDGET


@pytest.mark.slow
def test_compiled_run_matches_the_eager_run(tmp_path: Path) -> None:
    """trainer.compile: inductor on CPU trains to the eager run's losses."""
    runs = {}
    for compile_ in (False, True):
        out = tmp_path / f"compile-{compile_}"
        recipe = tiny_recipe(tmp_path, f"{compile_}.yaml",
                             data={"train": [{"path": "builtin:quickstart/train.jsonl", "format": "messages",
                                              "samples": 32}], "max_length": 64},
                             trainer={"max_steps": 4, "compile": compile_}, output={"dir": str(out)})
        run_cli("train", recipe, check=True)
        runs[compile_] = losses(out)
        assert json.loads((out / "summary.json").read_text())["fast_paths"]["compile"] is compile_
    eager, compiled = runs[False], runs[True]
    # Step 1 is one float32 forward of the same weights; inductor fuses and reorders the reductions (RMSNorm,
    # softmax, the matmul epilogues): rounding of order 1e-7 relative per op, 1e-6 after the layers. Later steps
    # add Adam updates computed from gradients rounded that way (an element's update is lr * m / sqrt(v): a
    # relative gradient change of 1e-6 moves it by about that fraction), so the losses stay within 1e-5 relative.
    assert compiled[0] == pytest.approx(eager[0], rel=1e-5)
    assert compiled == pytest.approx(eager, rel=1e-4)


class OptimizerStates(TrainerCallback):
    """The dtypes of every tensor in the optimizer's state after each step, by state name."""

    def __init__(self) -> None:
        self.dtypes: set[tuple[str, torch.dtype]] = set()

    def on_step_end(self, args, state, control, optimizer=None, **kw):  # noqa: ANN001, ANN003, ANN201
        inner = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps the optimizer
        self.dtypes |= {(k, v.dtype) for s in inner.state.values() for k, v in s.items() if torch.is_tensor(v)}


@pytest.mark.full
@pytest.mark.parametrize("optim", ["adamw_8bit", "paged_adamw_8bit"])
def test_bitsandbytes_8bit_adamw_tracks_adamw(tmp_path: Path, optim: str) -> None:
    """bitsandbytes' 8-bit AdamW (and its paged variant, which on CPU falls back to ordinary memory) through
    `trainer.optim`: the moments of the large weights are really stored in uint8 (bitsandbytes keeps tensors under
    4,096 elements in float32), and a full fine-tune follows float32 AdamW's loss curve. Tolerance 5e-3 per step:
    the blockwise 8-bit moments are off by at most ~1% of each update (dynamic quantization, 256 levels per block),
    and over these 8 steps the loss moves by 0.54, so ~0.005 at most; measured 1.4e-4. A broken optimizer (no step,
    wrong learning rate, states not carried) moves the loss by the 0.05-0.15 of a step."""
    from tunekit.pipeline import train
    from tunekit.recipe.load import load_recipe

    curves, states = {}, {}
    for name in ("adamw_torch", optim):
        recipe = tiny_recipe(tmp_path, f"{name}.yaml", method={"name": "full"}, output={"dir": str(tmp_path / name)},
                             trainer={"optim": name, "max_steps": 8, "learning_rate": 1e-3})
        states[name] = OptimizerStates()
        curves[name] = losses(train(load_recipe(recipe, []), callbacks=[states[name]]))
    assert ("state1", torch.uint8) in states[optim].dtypes and ("state2", torch.uint8) in states[optim].dtypes
    assert {d for _, d in states["adamw_torch"].dtypes} == {torch.float32}
    assert len(curves[optim]) == 8 and curves["adamw_torch"][0] - curves["adamw_torch"][-1] > 0.3
    assert max(abs(a - b) for a, b in zip(curves[optim], curves["adamw_torch"])) < 5e-3, curves
