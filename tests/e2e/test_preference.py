"""dpo / kto / orpo / cpo end to end through the real CLI on the builtin tiny model (CPU, offline)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.conftest import losses, read_metrics, run_cli, tiny_recipe

RUN_FILES = ["recipe.resolved.yaml", "versions.json", "data.json", "metrics.jsonl", "summary.json"]
PAIRS = {"path": "builtin:arith/pref_train.jsonl", "format": "preference"}


def _run(tmp: Path, trainer: dict, data: dict | None = None) -> Path:
    recipe = tiny_recipe(tmp, data=data or {"train": [PAIRS]},
                         trainer={"max_steps": 3, "learning_rate": 5e-3, "logging_steps": 1, "seed": 0, **trainer})
    run_cli("train", recipe, check=True)
    return tmp / "run"


def _standard_outputs(run: Path, keys: set[str]) -> list[dict]:
    for name in RUN_FILES:
        assert (run / name).is_file(), name
    assert (run / "final" / "adapter_model.safetensors").is_file()
    assert not (run / "final" / "ref").exists()  # the reference is the adapter-disabled base, never saved
    metrics = read_metrics(run)
    logged = set().union(*metrics)
    assert keys <= logged, keys - logged
    assert json.loads((run / "summary.json").read_text())["global_step"] == 3
    return metrics


def test_dpo_robust_loss(tmp_path: Path) -> None:
    run = _run(tmp_path, {"kind": "dpo", "loss_type": "robust", "beta": 0.1, "label_smoothing": 0.1})
    metrics = _standard_outputs(run, {"loss", "rewards/chosen", "rewards/rejected", "rewards/margins",
                                      "rewards/accuracies"})
    assert all(m["loss"] > 0 for m in metrics if "loss" in m)


@pytest.mark.full
def test_dpo_weighted_loss_combination(tmp_path: Path) -> None:
    run = _run(tmp_path, {"kind": "dpo", "loss_type": ["sigmoid", "bco_pair", "sft"], "loss_weights": [0.8, 0.2, 1.0]})
    _standard_outputs(run, {"loss", "rewards/margins"})
    resolved = (run / "recipe.resolved.yaml").read_text()
    assert "bco_pair" in resolved and "0.2" in resolved


@pytest.mark.full
def test_explicit_reference_model_is_the_one_used(tmp_path: Path) -> None:
    """`ref_model` is the reference DPO measures against. At step 1 the policy is the untrained model, so with a
    reference of the same weights every margin is 0 and the sigmoid loss is ln 2; an explicit reference with those
    same weights (here with the reference log-probs precomputed before training) gives the implicit run's losses
    at every step; an explicit reference with other weights moves the step-1 loss off ln 2."""
    import math

    import torch
    from transformers import AutoModelForCausalLM

    from tunekit.model.builtin import materialize

    other = AutoModelForCausalLM.from_pretrained(materialize("builtin:tiny-llama", 0))
    torch.manual_seed(0)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    other.save_pretrained(tmp_path / "other-ref")

    from tunekit.pipeline import train
    from tunekit.recipe.load import load_recipe

    runs = {}  # in this process: three CLI start-ups cost more than the training
    for name, ref in {"implicit": {}, "precomputed": {"ref_model": "builtin:tiny-llama",
                                                      "precompute_ref_log_probs": True},
                      "other": {"ref_model": str(tmp_path / "other-ref")}}.items():
        (tmp_path / name).mkdir()
        recipe = tiny_recipe(tmp_path / name, data={"train": [PAIRS]},
                             trainer={"kind": "dpo", "max_steps": 3, "learning_rate": 5e-3, **ref})
        runs[name] = losses(train(load_recipe(recipe)))
    assert runs["implicit"][0] == pytest.approx(math.log(2), abs=1e-5)
    assert runs["precomputed"] == pytest.approx(runs["implicit"], abs=1e-5)
    assert abs(runs["other"][0] - math.log(2)) > 1e-3


@pytest.mark.full
def test_kto_unpaired(tmp_path: Path) -> None:
    data = {"train": [{"path": "builtin:arith/kto_train.jsonl", "format": "unpaired_preference"}]}
    run = _run(tmp_path, {"kind": "kto", "desirable_weight": 1.0, "undesirable_weight": 1.0}, data)
    _standard_outputs(run, {"loss", "kl"})


def test_kto_on_paired_data_mixes_both_labels_and_counts_dropped_rows(tmp_path: Path) -> None:
    """KTO reads rows in order; paired rows are unpaired and shuffled, so the first batches already hold
    undesirable completions (TRL's own unpairing puts every chosen completion first). Rows whose prompt alone
    fills max_length, which TRL filters out, are counted in data.json and reported."""
    recipe = tiny_recipe(tmp_path, data={"train": [PAIRS], "max_length": 64},
                         trainer={"kind": "kto", "max_steps": 3, "learning_rate": 5e-3, "logging_steps": 1})
    proc = run_cli("train", recipe, check=True)
    steps = [m for m in read_metrics(tmp_path / "run") if "loss" in m]
    assert len(steps) == 3 and any("rewards/rejected" in m for m in steps)
    data = json.loads((tmp_path / "run" / "data.json").read_text())["stats"]["train"]
    (reason, n), = data["dropped_by_trainer"].items()
    assert reason == "prompt alone fills data.max_length (64 tokens)" and 0 < n < 2 * data["rows_out"]
    assert f"{n} train examples of the kto trainer were dropped" in " ".join(proc.stderr.split())


def test_dpo_counts_eval_rows_dropped_and_answers_cut_at_max_length(tmp_path: Path) -> None:
    """At max_length 64, TRL drops the eval rows whose prompt fills it as it does training rows (the console and
    data.json said 100 eval rows, fewer were evaluated), and its collator cuts answers that do not fit (their end and
    end-of-turn token are not scored): both are now warned and counted per split in data.json."""
    recipe = tiny_recipe(tmp_path, data={"train": [PAIRS], "eval": [PAIRS], "max_length": 64},
                         trainer={"kind": "dpo", "max_steps": 1, "per_device_batch_size": 4})
    proc = run_cli("train", recipe, check=True)
    err = " ".join(proc.stderr.split())
    stats = json.loads((tmp_path / "run" / "data.json").read_text())["stats"]
    for split in ("train", "eval"):
        (reason, dropped), = stats[split]["dropped_by_trainer"].items()
        assert reason == "prompt alone fills data.max_length (64 tokens)" and 0 < dropped < stats[split]["rows_out"]
        (reason, cut), = stats[split]["cut_by_trainer"].items()
        assert reason == "prompt + answer longer than data.max_length (64 tokens)" and cut > 0
        assert dropped + cut <= stats[split]["rows_out"]
        assert f"warning: {dropped} {split} examples of the dpo trainer were dropped" in err
        assert f"warning: {cut} {split} examples of the dpo trainer are scored without the end" in err
    # `tunekit preprocess`, the command for checking data before a run, says the same of the training rows
    shown = " ".join(run_cli("preprocess", recipe, check=True).stdout.split())
    (dropped,), (cut,) = (stats["train"][k].values() for k in ("dropped_by_trainer", "cut_by_trainer"))
    assert (f"at data.max_length 64, the dpo trainer will drop {dropped} train examples (prompt alone fills it) and "
            f"score {cut} without the end of their answer") in shown


@pytest.mark.full
def test_orpo(tmp_path: Path) -> None:
    run = _run(tmp_path, {"kind": "orpo", "beta": 0.1}, data={"train": [PAIRS], "max_length": 128})
    _standard_outputs(run, {"loss", "rewards/accuracies", "rewards/margins", "log_odds_ratio", "nll_loss"})


@pytest.mark.parametrize("kind", ["orpo", "cpo"])
def test_orpo_and_cpo_drop_and_count_pairs_without_completion_tokens(tmp_path: Path, kind: str) -> None:
    """At max_length 64 some prompts fill the whole length. TRL's ORPO/CPO keep such a pair with no completion
    token (only a warning): ORPO's mean log-prob is then 0/0 and the loss NaN from step 1, CPO trains on nothing.
    tunekit drops them as DPO and KTO do, counts them in data.json and says so; the loss stays finite."""
    recipe = tiny_recipe(tmp_path, data={"train": [PAIRS], "max_length": 64},
                         trainer={"kind": kind, "max_steps": 2, "learning_rate": 1e-3, "logging_steps": 1})
    proc = run_cli("train", recipe, check=True)
    assert all(math.isfinite(m["loss"]) for m in read_metrics(tmp_path / "run") if "loss" in m)
    data = json.loads((tmp_path / "run" / "data.json").read_text())["stats"]["train"]
    (reason, n), = data["dropped_by_trainer"].items()
    assert reason == "prompt alone fills data.max_length (64 tokens)" and 0 < n < data["rows_out"]
    assert f"{n} train examples of the {kind} trainer were dropped" in " ".join(proc.stderr.split())


@pytest.mark.full
def test_simpo_through_cpo(tmp_path: Path) -> None:
    run = _run(tmp_path, {"kind": "cpo", "loss_type": "simpo", "cpo_alpha": 0.0, "beta": 2.0, "simpo_gamma": 0.5},
               data={"train": [PAIRS], "max_length": 128})  # as for ORPO: every completion kept
    _standard_outputs(run, {"loss", "rewards/margins"})


@pytest.mark.full
def test_bad_pairs_name_the_row_or_are_counted(tmp_path: Path) -> None:
    rows = [{"prompt": "q1", "chosen": "a", "rejected": "b"}, {"prompt": "q2", "chosen": "same", "rejected": "same"},
            {"prompt": "q3", "chosen": "a"}]
    bad = tmp_path / "pairs.jsonl"
    bad.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = tiny_recipe(tmp_path, data={"train": [{"path": str(bad), "format": "preference"}]},
                         trainer={"kind": "dpo", "max_steps": 1, "per_device_batch_size": 1})
    proc = run_cli("train", recipe)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "pairs.jsonl: row 2" in proc.stderr and "identical" in proc.stderr
    proc = run_cli("train", recipe, "data.drop_invalid_pairs=true", "--overwrite", check=True)
    stats = json.loads((tmp_path / "run" / "data.json").read_text())["stats"]["train"]
    assert stats["rows_out"] == 1
    assert stats["dropped"] == {"chosen identical to rejected": 1, "invalid row": 1}


def test_missing_model_directories_are_named_by_validate_and_before_train_writes(tmp_path: Path) -> None:
    """A missing trainer.ref_model passed validate, then train failed after the data stage naming `model.path`."""
    missing = tmp_path / "nope"
    for key in ("trainer.ref_model", "model.path"):
        recipe = tiny_recipe(tmp_path, data={"train": [PAIRS]}, trainer={"kind": "dpo"})
        for command in ("validate", "train"):
            proc = run_cli(command, recipe, f"{key}={missing}")
            assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
            assert f"{key}: local directory `{missing}` does not exist" in " ".join(proc.stderr.split())
        assert not (tmp_path / "run").exists()  # nothing was written


def test_trainer_kind_and_data_format_must_fit(tmp_path: Path) -> None:
    recipe = tiny_recipe(tmp_path, trainer={"kind": "dpo"})  # default data is `messages`
    proc = run_cli("validate", recipe)
    assert proc.returncode == 2 and "reads data in format preference" in proc.stderr


ONLINE = {"kind": "online_dpo", "max_new_tokens": 8, "per_device_batch_size": 4, "save_steps": None,
          "rewards": [{"type": "numeric_match"}, {"type": "format", "weight": 0.1}]}


@pytest.mark.slow  # ~50-60 s on 2 cores (by hand: make test-all): three runs that sample completions, and an eval
def test_online_dpo_trains_saves_resumes_and_reloads(tmp_path: Path) -> None:
    """Online DPO (two samples per prompt ranked by the answer rewards) through the real CLI: the standard outputs,
    the sampled rewards logged; a run stopped after checkpoint-2 and resumed ends where the uninterrupted run ends
    (sampling restarts from the checkpoint's RNG state, so the same completions are drawn: equal to fp32
    rounding); the adapter reloads for `tunekit eval`."""
    trainer = {k: v for k, v in ONLINE.items() if k != "save_steps"}
    data = {"train": [{"path": "builtin:arith/train.jsonl", "format": "prompt_answer"}], "max_length": 96}
    recipe = tiny_recipe(tmp_path, data=data, trainer={"max_steps": 3, "learning_rate": 5e-3, "logging_steps": 1,
                                                       "lr_scheduler": "constant",  # max_steps 2 then 3: same rates
                                                       "seed": 0, **trainer},
                         output={"dir": str(tmp_path / "run"), "save_steps": 2})
    run_cli("train", recipe, check=True)
    full = tmp_path / "run"
    _standard_outputs(full, {"loss", "rewards/accuracies", "rewards/margins", "objective/scores", "objective/kl"})
    stopped = tmp_path / "stopped"
    run_cli("train", recipe, "trainer.max_steps=2", f"output.dir={stopped}", check=True)
    run_cli("train", recipe, f"output.dir={stopped}", "--resume", "--allow-changes", check=True)
    assert losses(stopped) == pytest.approx(losses(full), abs=1e-5)
    # the tokens of the pairs trained on are counted (the batches hold prompts only): tokens/s in every row, and
    # the resumed run, drawing the same completions, counts the same tokens
    seen = [m["tokens_seen"] for m in read_metrics(full) if "loss" in m]
    assert all(m["tokens_per_s"] for m in read_metrics(full) if "loss" in m) and seen == sorted(seen) and seen[0] > 0
    assert read_metrics(stopped)[-1]["tokens_seen"] == read_metrics(full)[-1]["tokens_seen"]
    proc = run_cli("eval", full, "--task", "quickstart-arith", "--max-examples", "4", check=True)
    assert "quickstart-arith:" in proc.stderr


@pytest.mark.parametrize("kind", ["orpo", "cpo"])
def test_orpo_and_cpo_count_the_tokens_they_train_on(kind: str, tmp_path: Path) -> None:
    """ORPO's and CPO's batches have no `input_ids`, so transformers counted no tokens (no tokens/s, no MFU). Over
    one epoch the count is every pair's chosen and rejected sequence (prompt + answer), padding excluded: the sum
    of the tokenized rows' attention masks."""
    from datasets import Dataset

    from tunekit.data.preference import preference_row
    from tunekit.data.schema import DatasetSpec
    from tunekit.data.templates import apply_chat_template_choice
    from tunekit.methods.registry import build_for_training
    from tunekit.model.load import load_tokenizer, resolve_model_path
    from tunekit.recipe.schema import Recipe
    from tunekit.trainers.registry import BUILDERS

    recipe = Recipe.model_validate({
        "model": {"path": "builtin:tiny-llama", "dtype": "float32"}, "data": {"train": [PAIRS], "max_length": 256},
        "method": {"name": "lora", "r": 8}, "output": {"dir": str(tmp_path)},
        "trainer": {"kind": kind, "num_epochs": 1, "per_device_batch_size": 3, "logging_steps": 1}})
    rows = [json.loads(line) for line in (Path(__file__).parents[2] / "tunekit/assets/data/arith/pref_train.jsonl")
            .read_text().splitlines()[:7]]  # 3 batches, the last one short: padding in every batch
    spec = DatasetSpec(path="x.jsonl", format="preference")
    tokenizer_path = resolve_model_path(recipe.model)
    tok = load_tokenizer(recipe.model, tokenizer_path)
    apply_chat_template_choice(tok, "chatml")
    train = Dataset.from_list([preference_row(r, spec, f"x:{i}") for i, r in enumerate(rows)])
    trainer = BUILDERS[kind](recipe, build_for_training(recipe, tokenizer_path).model, tok, train, None,
                             str(tmp_path / "ckpt"), [])
    trainer.train()
    ds = trainer.train_dataset
    expected = sum(sum(m) for m in ds["chosen_attention_mask"]) + sum(sum(m) for m in ds["rejected_attention_mask"])
    assert len(ds) == 7 and trainer.state.global_step == 3  # nothing dropped: every pair counted once
    assert trainer.state.num_input_tokens_seen == expected > 0
