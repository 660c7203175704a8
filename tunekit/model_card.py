"""`final/README.md`: the model card tunekit writes for a run (replacing peft's template and TRL's card).

It is built from the run directory's own records (recipe.resolved.yaml, data.json, summary.json, versions.json and
eval/report.json when there is one), so it says only what the run did: base model, method and its options, data
sources with rows, tokens and sha256, training settings, final metrics, eval results, and how to load the weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from tunekit import __version__, run_dir
from tunekit.data.select import summary_lines
from tunekit.files import write_whole
from tunekit.methods.registry import SAVED_AS

if TYPE_CHECKING:
    from tunekit.recipe.schema import Recipe


def write_card(out: Path, recipe: Recipe) -> Path:
    """Write RUN/final/README.md; remove the cards libraries left in checkpoints/ and final/training_args.bin
    (a pickle of transformers' arguments: recipe.resolved.yaml is the record, and checkpoints keep their copy)."""
    (out / run_dir.FINAL / "training_args.bin").unlink(missing_ok=True)
    # each checkpoint's own copy is removed when it is saved, before its manifest lists the files
    # (checkpoints.checkpoint_callback): removing it here would make good checkpoints look torn to --resume
    (out / run_dir.CHECKPOINTS / "README.md").unlink(missing_ok=True)
    path = out / run_dir.FINAL / "README.md"
    write_whole(path, render(out, recipe))
    return path


def _read(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _num(v: object) -> str:
    return f"{v:.4f}" if isinstance(v, float) else f"{v:,}" if isinstance(v, int) else str(v)


def render(out: Path, recipe: Recipe) -> str:
    summary, data = _read(out / "summary.json"), _read(out / "data.json")
    base, method, kind = recipe.model.path, recipe.method, recipe.trainer.kind
    saved_as = SAVED_AS.get(method.name, "peft")
    front = ["---", f"library_name: {'peft' if saved_as == 'peft' else 'transformers'}"]
    front += [f"base_model: {base}"] * (not base.startswith("builtin:") and not Path(base).exists())
    front += ["tags:", "- tunekit", f"- {method.name}", f"- {kind}", "---", ""]
    lines = [*front, f"# {out.resolve().name}", "",
             f"`{base}` fine-tuned with tunekit {__version__}: method `{method.name}`, trainer `{kind}`."]
    if base.startswith("builtin:"):
        lines.append(f"The base `{base}` is a tiny, randomly initialised model shipped with tunekit for smoke tests: "
                     "this checkpoint shows the pipeline works; it is not a useful model.")
    dump = method.model_dump(mode="json")
    shown = (set(method.model_dump(exclude_defaults=True)) | {"r", "alpha", "target_modules", "rank"}) - {"name"}
    options = {k: v for k, v in dump.items() if k in shown}
    lines += ["", "## Method", "", f"`{method.name}`" + (" with " + ", ".join(
        f"`{k}: {json.dumps(v)}`" for k, v in options.items()) if options else "") + "; every other option at its "
        f"default (`tunekit methods show {method.name}`)."]
    lines += _data_section(data, recipe) + _training_section(summary, recipe) + _results_section(summary, out)
    lines += _load_section(out, base, saved_as) + _files_section(saved_as)
    return "\n".join(lines) + "\n"


def _data_section(data: dict, recipe: Recipe) -> list[str]:
    stats = data.get("stats", {})
    per = stats.get("train", {}).get("datasets", {})
    lines = ["", "## Data", "", "| split | source | format | rows | tokens | trained tokens | sha256 |",
             "|---|---|---|---|---|---|---|"]
    for split, sources in (("train", recipe.data.train), ("eval", recipe.data.eval)):
        for s in sources:
            st = per.get(s.path, {}) if split == "train" else {}
            hashes = data.get("files", {}).get(s.path, {})
            sha = ", ".join(f"`{h[:16]}…`" for h in hashes.values()) if isinstance(hashes, dict) else str(hashes)
            lines.append(f"| {split} | `{s.path}` | {s.format} | {_num(st.get('rows_out', '')) or ''} | "
                         f"{_num(st.get('tokens', ''))} | {_num(st.get('trained_tokens', ''))} | {sha or 'hub'} |")
    lines.append(f"\nRows after preprocessing: {stats.get('train_rows', '?')} train, {stats.get('eval_rows', '?')} "
                 f"eval; max_length {recipe.data.max_length}, packing {str(recipe.data.packing).lower()}. "
                 "Full hashes and statistics: `data.json` in the run directory.")
    selection = summary_lines(stats.get("train", {}).get("select"))
    if selection:
        lines += ["", "Data selection (`data.select`, steps in order):", "", *(f"- {line}" for line in selection)]
    return lines


def _training_section(summary: dict, recipe: Recipe) -> list[str]:
    t, launch = recipe.trainer.model_dump(mode="json"), summary.get("launch", {})
    keep = ("kind", "learning_rate", "lr_scheduler", "warmup_ratio", "warmup_steps", "max_steps", "num_epochs",
            "optim", "weight_decay", "max_grad_norm", "seed", "beta", "loss_type", "algorithm")
    drop = {"num_epochs"} if t.get("max_steps", -1) > 0 else {"max_steps"}
    drop |= {"warmup_steps"} if not t.get("warmup_steps") else {"warmup_ratio"}
    rows = [(k, t[k]) for k in keep if k in t and k not in drop]
    rows += [(k, launch[k]) for k in ("global_batch_size", "per_device_batch_size", "gradient_accumulation_steps",
                                      "world_size", "strategy") if k in launch]
    rows += [("dtype", recipe.model.dtype)]
    return ["", "## Training", "", "| setting | value |", "|---|---|", *(f"| {k} | `{json.dumps(v)}` |"
                                                                      for k, v in rows),
            "", "Every setting: `recipe.resolved.yaml` in the run directory (`tunekit train` reruns it)."]


def _results_section(summary: dict, out: Path) -> list[str]:
    seconds = summary.get("train_seconds")
    facts = [("optimizer steps", summary.get("global_step")),
             ("training time", f"{seconds:.0f} s" if isinstance(seconds, (int, float)) else None),
             ("final training loss", summary.get("final_loss")), ("mean training loss", summary.get("train_loss_mean")),
             ("eval loss", (summary.get("eval") or {}).get("eval_loss"))]
    params = summary.get("params", {})
    if params:
        facts.append(("trainable / total parameters", f"{params['trainable']:,} / {params['total']:,}"))
    lines = ["", "## Results", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {_num(v)} |" for k, v in facts if v is not None]
    report = _read(out / "eval" / "report.json")
    if report.get("tasks"):
        lines += ["", "Evaluation (`eval/report.md`):", "", "| task | metric | tuned | base |", "|---|---|---|---|"]
        for name, task in report["tasks"].items():
            for metric, value in task["tuned"].items():
                if metric != "tokens":
                    base = (task.get("base") or {}).get(metric)
                    lines.append(f"| {name} | {metric} | {_num(value)} | {'' if base is None else _num(base)} |")
    return lines


def _load_section(out: Path, base: str, saved_as: str) -> list[str]:
    final = str(out / run_dir.FINAL)
    if saved_as == "peft":
        code = ["from peft import AutoPeftModelForCausalLM", "from transformers import AutoTokenizer", "",
                f'model = AutoPeftModelForCausalLM.from_pretrained("{final}")',
                f'tokenizer = AutoTokenizer.from_pretrained("{final}")']
        served = _read(out / run_dir.FINAL / "adapter_config.json").get("base_model_name_or_path") or base
        vllm = f"vllm serve {served if base.startswith('builtin:') else base} --enable-lora --lora-modules tuned={final}"
        merge = f"One model without peft: `tunekit merge {out} --out merged/`."
    elif saved_as == "full":
        code = ["from transformers import AutoModelForCausalLM, AutoTokenizer", "",
                f'model = AutoModelForCausalLM.from_pretrained("{final}")',
                f'tokenizer = AutoTokenizer.from_pretrained("{final}")']
        vllm, merge = f"vllm serve {final}", ""
    else:
        code = ["from tunekit.targets import load_run_model", "", f'model, tokenizer = load_run_model("{out}")']
        vllm, merge = "", "Interventions are tunekit modules on top of the base model; vLLM cannot serve them."
    lines = ["", "## How to load", "", "```python", *code, "```", ""]
    lines += ["vLLM" + (" (LoRA adapters; other peft tuners: merge first)" if saved_as == "peft" else "") + ":", "",
              "```bash", vllm, "```", ""] * bool(vllm) + [merge] * bool(merge)
    lines.append(f"Talk to it: `tunekit chat {out}`; evaluate it: `tunekit eval {out}`.")
    return lines


def _files_section(saved_as: str) -> list[str]:
    weights = {"peft": "`adapter_model.safetensors` + `adapter_config.json` (the adapter; the base is not copied)",
               "full": "`model.safetensors` (or shards) + `config.json`",
               "interventions": "`interventions.safetensors` + its config"}[saved_as]
    return ["", "## Files", "", f"- {weights}",
            "- `tokenizer.json`, `tokenizer_config.json`, `chat_template.jinja`: the tokenizer and the chat template "
            "the run trained with", "- `README.md`: this card"]
