"""One small run through the real CLI with stdout/stderr redirected (not a terminal): the console holds tunekit's
own lines only, as plain text; metrics.jsonl follows its schema; final/README.md is tunekit's model card."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, cli_env, read_metrics, run_cli, tiny_recipe
from tunekit import __version__
from tunekit.model_card import write_card
from tunekit.recipe.load import load_recipe

LIBRARY_NOISE = re.compile(r"Warning|warnings\.warn|\[WARNING\]|Failed to load|it/s\]|s/it\]|%\||Loading weights|"
                           r"Generating .* split|Tokenizing|Dropping fully truncated|Writing model shards")
DICT_REPR = re.compile(r"\{'\w+': ")
REPO_TOOLS = Path(__file__).resolve().parents[2] / "tunekit" / "assets" / "data" / "tools" / "tools.json"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    tmp = tmp_path_factory.mktemp("console")
    recipe = tiny_recipe(tmp, data={"eval": [{"path": "builtin:quickstart/eval.jsonl", "format": "messages"}]},
                         trainer={"max_steps": 6, "logging_steps": 2, "eval_steps": 3},
                         output={"dir": str(tmp / "run"), "save_steps": 3})
    return tmp / "run", run_cli("train", recipe, check=True)


def test_train_console_is_plain_and_quiet(trained: tuple[Path, subprocess.CompletedProcess]) -> None:
    run, proc = trained
    console = proc.stdout + proc.stderr
    assert "\r" not in console and "\x1b" not in console, console
    for line in console.splitlines():
        assert not LIBRARY_NOISE.search(line), line
        assert not DICT_REPR.search(line), line
    steps = [ln for ln in proc.stderr.splitlines() if ln.startswith("step ")]
    assert [ln.split()[1] for ln in steps if "eval_loss" not in ln] == ["1/6", "2/6", "4/6", "6/6"]
    assert all(re.search(r"loss +\d+\.\d{4}  lr .*tok/s .*mem .* GB", ln) for ln in steps if "eval_loss" not in ln)
    assert sum("eval_loss" in ln for ln in steps) == 2
    assert re.search(r"final loss \d+\.\d{4},", proc.stderr), proc.stderr


def test_verbose_shows_what_the_quiet_console_hides(tmp_path: Path) -> None:
    """`--verbose` leaves the libraries at their own defaults: their warnings and progress bars come back (the
    quiet console is a choice made at the source, not output swallowed for good)."""
    from tunekit.quiet import ENV

    recipe = tiny_recipe(tmp_path, trainer={"max_steps": 1})
    # the environment a user's shell has: without the settings an in-process tunekit import put into this one
    env = {k: v for k, v in cli_env().items() if k not in ENV}
    proc = subprocess.run([sys.executable, "-m", "tunekit", "--verbose", "train", str(recipe)], capture_output=True,
                          text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    noise = [ln for ln in (proc.stdout + proc.stderr).splitlines() if LIBRARY_NOISE.search(ln)]
    assert any("Loading weights" in ln for ln in noise), noise  # transformers' own progress bar
    assert any("Warning" in ln or "[WARNING]" in ln for ln in noise), noise


def readme_metrics_keys() -> set[str]:
    """The keys the README's metrics.jsonl table names (backticked, in its first and third columns)."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    table = text[text.index("`metrics.jsonl` has one JSON object per log event"):text.index("transformers' own")]
    return set(re.findall(r"`([\w/.*]+)`", table))


def test_metrics_schema(trained: tuple[Path, subprocess.CompletedProcess]) -> None:
    # one throughput number (total and per device, MFU), elapsed time and peak memory on every training row
    rows = read_metrics(trained[0])
    train_rows = [m for m in rows if "loss" in m]
    for row in train_rows:
        assert {"step", "epoch", "learning_rate", "grad_norm", "tokens_seen", "tokens_per_s", "tokens_per_s_per_device",
                "mfu", "elapsed_s", "peak_mem_gb", "peak_mem_reserved_gb"} <= set(row)
        assert not {"train_tokens_per_second", "num_input_tokens_seen", "train_runtime", "num_tokens"} & set(row)
        assert row["tokens_per_s_per_device"] == row["tokens_per_s"] > 0  # one process
        assert row["mfu"] is None and row["peak_mem_reserved_gb"] is None and row["peak_mem_gb"] > 0  # CPU
    assert all({"peak_mem_gb", "peak_mem_reserved_gb"} <= set(m) for m in rows)
    # the README's table defines every key a row carries
    documented = readme_metrics_keys()
    prefixes = tuple(k.rstrip("*.") for k in documented if k.endswith(("*", "...")))  # `eval_*`, `logps/...`
    undocumented = {k for m in rows for k in m if k not in documented and not k.startswith(prefixes)}
    assert not undocumented, f"metrics.jsonl keys missing from the README's table: {sorted(undocumented)}"


def test_summary_throughput(trained: tuple[Path, subprocess.CompletedProcess]) -> None:
    summary = json.loads((trained[0] / "summary.json").read_text())
    t = summary["throughput"]
    assert t["timed_steps"] == 5 and t["warmup_steps"] == 1 and t["world_size"] == 1 and t["device"] == "cpu"
    assert t["tokens_per_s"] > 0 and t["tokens_per_s_per_device"] == t["tokens_per_s"]
    assert t["tokens"] > 0 and 0 < t["step_seconds"] < summary["train_seconds"]
    assert t["mfu"] is None and t["mfu_note"] == "no MFU on CPU" and t["peak_tflops_per_device"] is None
    assert t["flops_per_token"] > 0 and t["flops_formula"].startswith("4N_base + 6A")  # LoRA
    seen = [m["tokens_seen"] for m in read_metrics(trained[0]) if "loss" in m]
    assert t["tokens"] < seen[-1]  # the first step is left out
    assert summary["memory"]["measured"]["peak_bytes"] > 0


def test_model_card(trained: tuple[Path, subprocess.CompletedProcess]) -> None:
    run = trained[0]
    card = (run / "final" / "README.md").read_text()
    assert "More Information Needed" not in card and "None" not in card and "huggingface.co/None" not in card
    sha = next(iter(json.loads((run / "data.json").read_text())["files"]["builtin:quickstart/train.jsonl"].values()))
    for text in ("`builtin:tiny-llama` fine-tuned with tunekit " + __version__, "method `lora`, trainer `sft`",
                 "`r: 8`", "`alpha: 16.0`", "| train | `builtin:quickstart/train.jsonl` | messages | 2,000 |",
                 sha[:16], "| learning_rate | `0.005` |", "| max_steps | `6` |", "| optimizer steps | 6 |",
                 "final training loss", "eval loss", "AutoPeftModelForCausalLM.from_pretrained",
                 "vllm serve", "--enable-lora", f"tunekit chat {run}", "randomly initialised"):
        assert text in card, text
    assert not (run / "checkpoints" / "README.md").exists() and not (run / "final" / "training_args.bin").exists()
    assert not list((run / "checkpoints").glob("*/README.md"))
    # eval results join the card when the run has a report (as `tunekit eval RUN` writes it)
    (run / "eval").mkdir(exist_ok=True)
    (run / "eval" / "report.json").write_text(json.dumps({"tasks": {"arith": {
        "tuned": {"exact_match": 0.25, "tokens": 10}, "base": {"exact_match": 0.0, "tokens": 10}}}}))
    write_card(run, load_recipe(run / "recipe.resolved.yaml", []))
    assert "| arith | exact_match | 0.2500 | 0.0000 |" in (run / "final" / "README.md").read_text()


@pytest.mark.full
def test_eval_task_file(trained: tuple[Path, subprocess.CompletedProcess], tmp_path: Path) -> None:
    run = trained[0]
    qa = tmp_path / "my_questions.jsonl"
    qa.write_text("".join(json.dumps({"prompt": f"What is {a} plus {a}?", "answer": str(2 * a)}) + "\n"
                          for a in range(3)))
    proc = run_cli("eval", run, "--task-file", qa, "--kind", "generation", "--metric", "numeric_match",
                   "--no-base", "--out", tmp_path / "report", check=True)
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert set(report["tasks"]["my_questions"]["tuned"]) >= {"numeric_match"}
    assert "\r" not in proc.stderr and "Warning" not in proc.stderr
    bad = run_cli("eval", run, "--task-file", qa, "--kind", "generaton")
    assert bad.returncode == 2 and "Did you mean `generation`?" in bad.stderr


def _chat(run: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tunekit", "chat", str(run), "--temperature", "0",
                           "--max-new-tokens", "8", *args], input=stdin, capture_output=True, text=True,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})


def test_chat_prompt_one_shot(trained: tuple[Path, subprocess.CompletedProcess]) -> None:
    proc = _chat(trained[0], "--prompt", "What is 2 plus 3?")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.endswith("\n") and "\x1b" not in proc.stdout  # the reply alone on stdout, streamed
    assert "chat:" in proc.stderr and "Warning" not in proc.stderr


@pytest.mark.full
def test_chat_loop_from_piped_stdin(trained: tuple[Path, subprocess.CompletedProcess]) -> None:
    proc = _chat(trained[0], stdin="What is 4 plus 4?\n/system Be brief.\nCompute 3 times 3.\n/bogus\n/reset\n"
                 "/exit\nnever read\n")
    assert proc.returncode == 0, proc.stderr
    assert "(new conversation; system: Be brief.)" in proc.stderr and "unknown command /bogus" in proc.stderr
    assert proc.stderr.count("(new conversation; system: Be brief.)") == 2  # /system, then /reset keeps it
    assert proc.stdout.count("\n") >= 2  # two replies


@pytest.mark.slow  # ~30 s on 2 cores (by hand: make test-all): a tool-data build and two chat processes
def test_chat_uses_the_tools_the_run_trained_with(trained: tuple[Path, subprocess.CompletedProcess],
                                                  tmp_path: Path) -> None:
    """A run trained with a dataset `tools:` file chats with those tool schemas in its prompt (as in training);
    `--tools` names a file; a template that ignores tools is refused rather than silently dropping them."""
    recipe = tiny_recipe(tmp_path, data={"train": [{"path": "builtin:tools/train.jsonl", "format": "messages",
                                                    "tools": "builtin:tools/tools.json"}],
                                         "chat_template": "qwen2.5", "max_length": 1024},
                         trainer={"max_steps": 1, "per_device_batch_size": 2})
    run_cli("train", recipe, check=True)
    proc = _chat(tmp_path / "run", "--prompt", "Weather in Oslo?")
    assert proc.returncode == 0, proc.stderr
    assert "tools: calc, weather (from builtin:tools/tools.json, the run’s training data)" in proc.stderr
    refused = _chat(trained[0], "--tools", str(REPO_TOOLS), "--prompt", "hi")
    assert refused.returncode == 2 and "ignores tool schemas" in refused.stderr and "Traceback" not in refused.stderr
    (tmp_path / "bad.json").write_text("[{")
    bad = _chat(tmp_path / "run", "--tools", str(tmp_path / "bad.json"), "--prompt", "hi")
    assert bad.returncode == 2 and "--tools: file" in bad.stderr and "data:" not in bad.stderr  # the flag, not data:
