"""`tunekit eval` and `tunekit merge` end to end: the quickstart recipe (made fast) through the real CLI.

One trained run is shared by every test here (module-scoped fixture): it is trained with
eval.run_after_train, so the run already holds eval/report.json; `tunekit eval RUN --task ...` then
writes eval-2/ next to it (an earlier report is never overwritten).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from tests.conftest import RECIPES, run_cli
from tunekit.errors import UserError

TASKS = ("quickstart-loss", "quickstart-arith", "quickstart-choice")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("evalrun")
    run_cli("train", RECIPES / "quickstart.yaml", "model.path=builtin:tiny-llama", "trainer.max_steps=20",
            "trainer.per_device_batch_size=8", "trainer.eval_steps=10", "output.save_steps=0", f"output.dir={tmp / 'run'}", "eval.run_after_train=true",
            check=True)
    proc = run_cli("eval", tmp / "run", *(a for t in TASKS for a in ("--task", t)), "--batch-size", "16",
                   "--max-examples", "16", check=True)
    assert "writing this report to" in proc.stderr and "eval-2" in proc.stderr
    return tmp / "run"


def md_tables(md: str) -> dict[str, dict[str, list[str]]]:
    """task heading -> metric -> the number cells of its row, parsed from report.md."""
    tables: dict[str, dict[str, list[str]]] = {}
    task = None
    for line in md.splitlines():
        if line.startswith("### "):
            task = line[4:].strip()
        elif task and line.startswith("| ") and not line.startswith(("| metric", "| prompt", "| ---")):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if re.fullmatch(r"-?[\d.e+-]+", cells[-1]):
                tables.setdefault(task, {})[cells[0]] = cells[1:]
    return tables


def test_train_with_eval_section_ends_with_a_report(run: Path) -> None:
    report = json.loads((run / "eval" / "report.json").read_text())
    task = report["tasks"]["heldout-loss"]  # default task: loss on the recipe's data.eval
    assert task["kind"] == "loss" and task["n"] == 100  # the whole data.eval file
    assert task["tuned"]["loss"] < task["base"]["loss"]
    assert (run / "eval" / "report.md").is_file() and (run / "eval" / "training.png").is_file()


def test_eval_report_files_and_numbers(run: Path) -> None:
    out = run / "eval-2"
    for name in ("report.json", "report.md", "training.png", "metrics.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    report = json.loads((out / "report.json").read_text())
    assert list(report["tasks"]) == list(TASKS) and report["plots"] == ["training.png", "metrics.png"]
    tables = md_tables((out / "report.md").read_text())
    assert set(tables) == set(TASKS)
    for name, task in report["tasks"].items():
        assert list(tables[name]) == list(task["tuned"])
        for metric, cells in tables[name].items():
            assert [float(c) for c in cells] == [task["base"][metric], task["tuned"][metric], task["diff"][metric]]
    loss = report["tasks"]["quickstart-loss"]
    assert loss["tuned"]["loss"] < loss["base"]["loss"]
    assert loss["tuned"]["perplexity"] < loss["base"]["perplexity"]
    gen = report["tasks"]["quickstart-arith"]
    assert set(gen["tuned"]) == {"numeric_match", "exact_match", "contains", "regex", "token_f1", "rouge_l"}
    assert gen["n"] == 16 and all({"prompt", "reference", "base", "tuned"} <= set(s) for s in gen["samples"])
    assert gen["tuned"]["token_f1"] > gen["base"]["token_f1"]  # the tuned model answers in the trained shape
    assert report["training"]["global_step"] == 20


def test_eval_never_overwrites_a_report(run: Path) -> None:
    first = json.loads((run / "eval" / "report.json").read_text())
    assert list(first["tasks"]) == ["heldout-loss"]  # the first report is intact next to eval-2/


def test_merge_adapter_matches_adapter_logits(run: Path, tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunekit.model.builtin import materialize

    out = tmp_path / "merged"
    run_cli("merge", run, "--out", out, check=True)
    info = json.loads((out / "merge.json").read_text())
    assert info["max_logit_diff"] <= 1e-4
    assert (out / "model.safetensors").is_file() and (out / "chat_template.jinja").is_file()
    merged = AutoModelForCausalLM.from_pretrained(out)  # plain transformers, no peft, no tunekit
    tok = AutoTokenizer.from_pretrained(out)
    adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(materialize("builtin:tiny-llama", 0)),
                                        run / "final")
    text = tok.apply_chat_template([{"role": "user", "content": "What is 3 times 4?"}], tokenize=False,
                                   add_generation_prompt=True) + "3 times 4 is 12."
    ids = tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        diff = (merged(ids).logits - adapter(ids).logits).abs().max().item()
    assert diff <= 1e-4, diff
    assert not any("lora" in k for k in merged.state_dict())


def test_merge_refuses_existing_out_and_drifting_logits(run: Path, tmp_path: Path) -> None:
    from tunekit.merge.adapter import merge_adapter

    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("x")
    with pytest.raises(UserError, match="not an empty directory"):
        merge_adapter(str(run), tmp_path / "taken")
    with pytest.raises(UserError, match="differ from the adapter model's") as info:
        merge_adapter(str(run), tmp_path / "m16", dtype="bfloat16", tolerance=1e-9)
    assert str(run / "final") in str(info.value) and not (tmp_path / "m16").exists()


def test_bad_run_dirs_name_the_file(run: Path, tmp_path: Path) -> None:
    from tunekit.eval.run import evaluate

    empty = tmp_path / "no-weights"
    empty.mkdir()
    shutil.copy(run / "recipe.resolved.yaml", empty)
    proc = run_cli("eval", empty)
    assert proc.returncode == 2 and "no trained weights" in proc.stderr and str(empty) in proc.stderr
    assert "Traceback" not in proc.stderr
    broken = tmp_path / "broken"
    shutil.copytree(run / "final", broken)
    (broken / "adapter_config.json").unlink()
    with pytest.raises(UserError, match=re.escape(str(broken / "adapter_config.json"))):
        evaluate(broken, ["quickstart-loss"], tmp_path / "r")
    with pytest.raises(UserError, match="pip install lm-eval"):
        evaluate(run, ["lm_eval:hellaswag"], tmp_path / "r2")


def test_sampling_reports_pass_at_k_and_majority(run: Path) -> None:
    from tunekit.eval.run import run_tasks
    from tunekit.eval.schema import EvalTask
    from tunekit.targets import load_run_model

    model, tok = load_run_model(run)
    task = EvalTask(name="k", kind="generate", data={"path": "builtin:eval/arith-qa.jsonl", "format": "qa"},
                    metrics=["numeric_match", "token_f1"], max_examples=4,
                    generation={"num_samples": 3, "temperature": 1.0, "max_new_tokens": 12})
    res = run_tasks(model, tok, [task], {"max_length": 128, "batch_size": 4, "which": "tuned"})["k"]
    assert res["n"] == 4 and all(len(s["samples"]) == 3 for s in res["samples"])
    m = res["metrics"]
    assert set(m) == {"numeric_match", "numeric_match_pass@3", "numeric_match_maj@3", "token_f1", "token_f1_pass@3",
                      "token_f1_maj@3"}
    assert m["token_f1_pass@3"] >= m["token_f1"] and m["numeric_match_pass@3"] >= m["numeric_match_maj@3"]


def test_eval_of_a_run_with_an_eval_fraction_hold_out_scores_that_hold_out(tmp_path: Path) -> None:
    """`tunekit eval RUN` with no tasks on a run whose eval split is a data.eval_fraction hold-out rebuilds that
    hold-out (same seed, same rows) and reports its loss: equal to the eval_loss training logged on the same rows
    with the same weights (packed there, unpacked here: the same per-document sums; fp32 reduction order only)."""
    run = tmp_path / "run"
    run_cli("train", RECIPES / "quickstart.yaml", "model.path=builtin:tiny-llama", "trainer.max_steps=6",
            "data.eval=[]", "data.eval_fraction=0.05", "data.packing=true", "trainer.eval_steps=6",
            f"output.dir={run}", check=True)
    proc = run_cli("eval", run, check=True)
    assert "the run's hold-out (data.eval_fraction 0.05" in " ".join(proc.stderr.split())
    task = json.loads((run / "eval" / "report.json").read_text())["tasks"]["heldout-loss"]
    trained = json.loads((run / "summary.json").read_text())["eval"]["eval_loss"]
    assert task["n"] == 100  # 5% of the 2000 quickstart rows
    assert task["tuned"]["loss"] == pytest.approx(trained, rel=1e-4)
    assert task["base"]["loss"] > task["tuned"]["loss"]


@pytest.mark.parametrize("method", ["loreft", "bottleneck"])
def test_merging_several_inputs_refuses_an_interventions_run(method: str, run: Path, tmp_path: Path) -> None:
    """Their weights are not in the model's state dict: a multi-input merge must not treat them as the base."""
    from tests.conftest import tiny_recipe

    recipe = tiny_recipe(tmp_path, method={"name": method}, trainer={"max_steps": 2},
                         output={"dir": str(tmp_path / method)})
    run_cli("train", recipe, check=True)
    proc = run_cli("merge", run, tmp_path / method, "--out", tmp_path / "m")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert f"{tmp_path / method / 'final'}: holds LoReFT/LoFiT interventions or bottleneck adapters" in proc.stderr
    assert not (tmp_path / "m").exists() and not list(tmp_path.glob("m.partial-*"))
