"""Benchmark: training throughput and memory of tunekit vs plain TRL (and Unsloth) on identical weights and data.

    python scripts/bench_train.py [--settings lora-8b qlora-8b full-1b] [--warmup 5] [--steps 50] [--repeats 3]
                                  [--workdir DIR] [--out DIR]          # a CUDA GPU with bf16
    python scripts/bench_train.py --tiny [--out DIR]                  # the same harness on builtin shapes, on CPU

Settings (GPU): `lora-8b` LoRA r16 all-linear on the Llama-3.1-8B shape, sequence 4096 packed, micro-batch 1 x 4
accumulation; `qlora-8b` the same on a 4-bit (nf4) base; `full-1b` full fine-tuning of the Llama-3.2-1B shape,
sequence 2048 packed, micro-batch 2 x 4 accumulation. bf16 weights and autocast, AdamW, cosine schedule without
warm-up, gradient clipping 1.0, no activation checkpointing, logging every step, seed 0. `--tiny`: LoRA on
builtin:tiny-llama and full fine-tuning on builtin:small-llama, sequence 128 packed, float32 on CPU, 3 warm-up +
8 timed steps, 1 repetition.

What is the same for every stack (fairness):
- weights: each shape is built once from its config (tests/fixtures/llama-3.*; random init, seed 0, no download)
  and saved; every stack loads that directory. The shipped 518-token ChatML tokenizer is used with the real
  vocabulary size (128,256): the embedding and LM-head compute are the real model's, the text is synthetic.
- data: seeded synthetic chat (1-3 exchanges, optional system prompt, log-normal turn lengths scaled to the
  sequence length: an SFT-like spread of short and long examples), tokenized with an assistant-only loss mask and
  packed (best-fit decreasing) once by tunekit's data stage. The tunekit stacks read those rows from tunekit's
  cache; TRL and Unsloth get the same rows saved to disk, as a pre-tokenized dataset (`input_ids`, `labels`,
  `seq_lengths`) with TRL's padding-free collator. The trainer shuffles the rows with the same seed, so every
  stack trains on the same batches in the same order (a gate checks the tokens of every step).
- settings: batch, accumulation, sequence, dtype, optimizer, learning-rate schedule, clipping, logging every step.
- measurement: one TrainerCallback (this file's `StepTimer`) in every stack times each optimizer step from the
  trainer's step-begin to step-end event, synchronising CUDA at both ends (model load, data preparation, logging,
  saving are outside); the first --warmup steps are discarded. Tokens are the trainer's non-padding input tokens
  (`include_num_input_tokens_seen="non_padding"`). Peak memory: `torch.cuda.max_memory_allocated` / `_reserved`
  from the start of training (peak RSS of the whole process on CPU). MFU: tunekit's FLOPs per token
  (`tunekit/plan/throughput.py`) x tokens/s / the GPU's dense bf16 peak (`tunekit/plan/hardware.py`).
- each run is a fresh process; the repetitions alternate between stacks (rep 1: A B C, rep 2: A B C, ...); the
  table shows the median over repetitions.

Stacks: `tunekit` (recipe defaults for everything the setting does not fix); `tunekit-fast` (every fast path tunekit
has: fused AdamW, the batch as a token budget, and on a GPU flash-attention 2 and Liger when installed and
torch.compile; packing and padding-free are on in every stack); `trl`
(plain `trl.SFTTrainer` with the same settings, sdpa attention, `adamw_torch`); `unsloth` (when installed, on a GPU).

Gates, checked before the table is trusted: initial loss within --init-margin nats of the value a random init gives
(ln V + hidden x initializer_range^2 / 2: the LM head's logits have that variance at init), every grad norm finite
and > 0, the loss falling, the same tokens in every step as TRL's run, and the loss curve within --loss-rtol of
TRL's at every step. A failed gate is printed and the exit code is 1.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # this checkout's tunekit, not an installed one

from bench_data import WORDS  # noqa: E402  (scripts/ is on sys.path when this file runs)

SEED = 0
TOKENS_PER_WORD = 3.7  # the shipped tokenizer on bench_data's words (measured), to size turns in tokens
STACKS = ("tunekit", "tunekit-fast", "trl", "unsloth")
LABELS = {"tunekit": "tunekit (defaults)", "tunekit-fast": "tunekit (fast paths)", "trl": "TRL SFTTrainer",
          "unsloth": "Unsloth"}
NOT_AVAILABLE = ("Liger's fused linear + cross-entropy (TRL keeps its own fused LM head, on in every stack)",
                 "FP8 matmuls")
LORA16 = {"name": "lora", "r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"}


@dataclass(frozen=True)
class Setting:
    name: str
    model: str  # a config-only fixture directory (random init) or builtin:NAME
    method: dict  # tunekit's method section
    seq: int
    batch: int
    accum: int
    lr: float
    checkpointing: bool = False
    title: str = ""


SETTINGS = {s.name: s for s in [
    Setting("lora-8b", "tests/fixtures/llama-3.1-8b", LORA16, 4096, 1, 4, 2e-4,
            title="Llama-3.1-8B shape, LoRA r16 all-linear, seq 4096 packed, micro-batch 1 x 4 accumulation"),
    Setting("qlora-8b", "tests/fixtures/llama-3.1-8b", {**LORA16, "name": "qlora"}, 4096, 1, 4, 2e-4,
            title="Llama-3.1-8B shape, QLoRA (nf4) r16 all-linear, seq 4096 packed, micro-batch 1 x 4 accumulation"),
    Setting("full-1b", "tests/fixtures/llama-3.2-1b", {"name": "full"}, 2048, 2, 4, 2e-5,
            title="Llama-3.2-1B shape, full fine-tuning, seq 2048 packed, micro-batch 2 x 4 accumulation"),
]}
TINY = {s.name: s for s in [
    Setting("lora-tiny", "builtin:tiny-llama", LORA16, 128, 2, 1, 2e-3,
            title="builtin:tiny-llama, LoRA r16 all-linear, seq 128 packed, micro-batch 2"),
    Setting("full-small", "builtin:small-llama", {"name": "full"}, 128, 2, 1, 5e-4,
            title="builtin:small-llama, full fine-tuning, seq 128 packed, micro-batch 2"),
]}


# ---------------------------------------------------------------------------------------------- data and models


def _turn(rng: random.Random, median_tokens: float, sigma: float, cap: int) -> str:
    tokens = min(cap, max(4, int(rng.lognormvariate(math.log(median_tokens), sigma))))
    return " ".join(rng.choice(WORDS) for _ in range(max(1, round(tokens / TOKENS_PER_WORD)))) + "."


def chat_rows(n: int, seq: int, seed: int = SEED) -> list[dict]:
    """SFT-like chats: 1-3 exchanges (60/25/15%), a system prompt in 30%; log-normal turn lengths (user median
    4% of the sequence, assistant 7%), each example kept within ~90% of the sequence."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        budget = int(seq * 0.9)
        msgs = []
        if rng.random() < 0.3:
            msgs.append({"role": "system", "content": _turn(rng, seq * 0.02, 0.5, budget // 8)})
        for _ in range(rng.choices((1, 2, 3), weights=(60, 25, 15))[0]):
            used = sum(len(m["content"].split()) for m in msgs) * TOKENS_PER_WORD + 8 * len(msgs)
            if budget - used < 32:
                break
            room = int(budget - used)
            msgs.append({"role": "user", "content": _turn(rng, seq * 0.04, 0.9, room // 2)})
            msgs.append({"role": "assistant", "content": _turn(rng, seq * 0.07, 0.7, room // 2)})
        rows.append({"messages": msgs})
    return rows


def build_model(setting: Setting, workdir: Path, cuda: bool) -> Path:
    """The setting's model directory (weights + tokenizer), built once: builtins through tunekit's materialize,
    the Llama shapes randomly initialised from their config in a child process (bf16)."""
    if setting.model.startswith("builtin:"):
        from transformers.utils import logging

        from tunekit.model.builtin import materialize

        logging.disable_progress_bar()
        return materialize(setting.model, SEED)
    out = workdir / "models" / Path(setting.model).name
    if not (out / "config.json").is_file():
        print(f"building {out.name} from {setting.model}/config.json (random init, seed {SEED}) ...", flush=True)
        _child(["--build-model", str(REPO / setting.model), str(out)], workdir / "logs" / f"build-{out.name}.log")
    return out


def child_build_model(config_dir: str, out: str) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from tunekit.model.builtin import TOKENIZER_DIR

    config = AutoConfig.from_pretrained(config_dir)
    torch.manual_seed(SEED)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    tmp = Path(out + ".tmp")
    model.save_pretrained(tmp, safe_serialization=True)
    AutoTokenizer.from_pretrained(TOKENIZER_DIR).save_pretrained(tmp)
    tmp.rename(out)


def data_section(setting: Setting, jsonl: Path, cache: Path) -> dict:
    return {"train": [{"path": str(jsonl), "format": "messages"}], "max_length": setting.seq, "packing": True,
            "cache_dir": str(cache)}


def make_data(setting: Setting, model_dir: Path, workdir: Path, rows_needed: int) -> dict:
    """Chats -> JSONL -> tunekit's data stage (tokenize, assistant mask, BFD packing; cached for the tunekit
    stacks) -> the packed rows saved for TRL / Unsloth. Returns paths and statistics."""
    from datasets.utils.logging import disable_progress_bar
    from transformers import AutoTokenizer

    from tunekit.data.build import build_datasets
    from tunekit.data.schema import DataConfig
    from tunekit.data.stats import example_lengths
    from tunekit.plan.throughput import attention_length

    disable_progress_bar()
    d = workdir / "data" / setting.name
    d.mkdir(parents=True, exist_ok=True)
    per_example = setting.seq * 0.22  # rough mean example tokens of chat_rows; 30% spare
    rows = chat_rows(int(rows_needed * setting.seq * 1.3 / per_example) + 16, setting.seq)
    jsonl = d / "train.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    cfg = DataConfig(**data_section(setting, jsonl, workdir / "cache" / "data"))
    train, _, stats = build_datasets(cfg, AutoTokenizer.from_pretrained(model_dir), SEED)
    packed = d / "packed"
    shutil.rmtree(packed, ignore_errors=True)
    train.save_to_disk(str(packed))
    lengths = example_lengths(train, limit=len(train))
    return {"jsonl": str(jsonl), "packed": str(packed), "rows": len(train), "rows_needed": rows_needed,
            "examples": len(lengths), "tokens": sum(lengths), "attention_seq": attention_length(lengths),
            "median_example": statistics.median(lengths), "p95_example": sorted(lengths)[int(0.95 * len(lengths))],
            "packing_efficiency": stats["train"].get("packing", {}).get("efficiency")}


# ------------------------------------------------------------------------------------------ the measured child


def _sync() -> float:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


def step_timer(record: dict) -> object:
    """The one measuring callback every stack gets: per optimizer step its seconds and non-padding tokens; the
    logged loss and grad norm; parameter counts and the model config at the start of training."""
    import torch
    from transformers import TrainerCallback

    from tunekit.methods.plan import count_parameters

    class StepTimer(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kw):  # noqa: ANN001
            record["params"] = count_parameters(model)
            c = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
            record["shape"] = {"vocab": c.vocab_size, "hidden": c.hidden_size, "init_std": c.initializer_range}
            record["config"] = model.config
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()  # training's peak, the loaded weights included

        def on_step_begin(self, args, state, control, **kw):  # noqa: ANN001
            self.begin, self.seen = _sync(), state.num_input_tokens_seen

        def on_step_end(self, args, state, control, **kw):  # noqa: ANN001
            record["steps"].append({"step": state.global_step, "seconds": _sync() - self.begin,
                                    "tokens": state.num_input_tokens_seen - self.seen})

        def on_log(self, args, state, control, logs=None, **kw):  # noqa: ANN001
            if logs and "loss" in logs:
                record["logs"].append({"step": state.global_step, "loss": logs["loss"],
                                       "grad_norm": logs.get("grad_norm")})

    return StepTimer()


def fast_paths(cuda: bool, s: Setting | None = None, compile_: bool = True) -> tuple[dict, list[str]]:
    """tunekit's fast-path recipe keys (dotted) and those left out on this machine, with why."""
    on: dict = {"trainer.optim": "adamw_torch_fused"}
    off = []
    if s is not None:  # packed rows: the budget sets the same rows per batch as the setting's batch
        on["data.tokens_per_batch"] = s.batch * s.seq
    if cuda and importlib.util.find_spec("flash_attn"):
        on["model.attn_implementation"] = "flash_attention_2"
    else:
        off.append("model.attn_implementation: flash_attention_2 (" + ("flash-attn not installed" if cuda else
                                                                      "needs CUDA") + ")")
    if cuda and importlib.util.find_spec("liger_kernel"):
        on["trainer.kernels"] = "liger"
    else:
        off.append("trainer.kernels: liger (" + ("liger-kernel not installed: pip install 'tunekit[gpu]'" if cuda
                                                 else "needs CUDA") + ")")
    if cuda and compile_:
        on["trainer.compile"] = True
    elif cuda:
        off.append("trainer.compile (--no-compile: inductor's compile time on an 8B model does not fit a short run)")
    else:
        off.append("trainer.compile (on CPU inductor's compile and recompiles for each new packed-batch shape take "
                   "minutes, longer than the --tiny run; the compiled losses are checked in tests/e2e/test_fast_paths.py)")
    off.append("trainer.activation_offload (a memory path, slower; the settings fit without checkpointing)")
    return on, off


def tunekit_recipe(spec: dict, fast: bool) -> dict:
    s = Setting(**spec["setting"])
    recipe = {
        "model": {"path": spec["model_dir"], "dtype": spec["dtype"]},
        "data": data_section(s, Path(spec["data"]["jsonl"]), Path(spec["workdir"]) / "cache" / "data"),
        "method": s.method,
        "trainer": {"kind": "sft", "max_steps": spec["warmup"] + spec["steps"], "per_device_batch_size": s.batch,
                    "gradient_accumulation_steps": s.accum, "learning_rate": s.lr, "logging_steps": 1,
                    "seed": SEED, "gradient_checkpointing": s.checkpointing},
        "output": {"dir": spec["run_dir"], "save_minutes": 0},
    }
    for key, value in (fast_paths(spec["cuda"], s, spec["compile"])[0] if fast else {}).items():
        section, name = key.split(".")
        recipe[section][name] = value
    return recipe


def run_tunekit(spec: dict, record: dict) -> None:
    from tunekit import pipeline
    from tunekit.recipe.schema import Recipe

    fast = spec["stack"] == "tunekit-fast"
    recipe = Recipe.model_validate(tunekit_recipe(spec, fast))
    on, off = fast_paths(spec["cuda"], Setting(**spec["setting"]), spec["compile"]) if fast else ({}, [])
    record["features"] = ["data.packing: true (BFD; padding-free batches, position ids restart per example)",
                          *(f"{k}: {v}" for k, v in on.items()), *(f"not used: {x}" for x in off)]
    out = pipeline.train(recipe, overwrite=True, callbacks=[step_timer(record)])
    memory = json.loads((out / "summary.json").read_text()).get("memory") or {}
    predicted, measured = memory.get("predicted") or {}, memory.get("measured") or {}
    if "peak_bytes" in predicted and "peak_bytes" in measured:  # the planner against the run (shown on CUDA only:
        # on CPU the measure is the process's RSS, which counts Python and its libraries, not just tensors)
        record["plan"] = {"predicted_gb": predicted["peak_bytes"] / 1e9, "measured_gb": measured["peak_bytes"] / 1e9,
                          "source": measured.get("source")}


def sft_config(spec: dict) -> object:
    """TRL's arguments for the same settings: rows already packed (packing off), padding-free collation, no
    truncation, TRL's defaults that differ from transformers' (checkpointing, bf16) set to the setting's."""
    from trl import SFTConfig

    s, cuda = Setting(**spec["setting"]), spec["cuda"]
    return SFTConfig(
        output_dir=spec["run_dir"], max_steps=spec["warmup"] + spec["steps"], per_device_train_batch_size=s.batch,
        gradient_accumulation_steps=s.accum, learning_rate=s.lr, lr_scheduler_type="cosine", warmup_steps=0,
        weight_decay=0.0, max_grad_norm=1.0, optim="adamw_torch", seed=SEED, data_seed=SEED,
        bf16=spec["dtype"] == "bfloat16", fp16=False, gradient_checkpointing=s.checkpointing, logging_steps=1,
        save_strategy="no", report_to="none", include_num_input_tokens_seen="non_padding",
        dataloader_num_workers=0, dataloader_pin_memory=cuda, packing=False, padding_free=True, max_length=None,
        use_cpu=not cuda, disable_tqdm=True,
    )


TRL_FEATURES = ["pre-tokenized packed rows (the same rows as tunekit's), packing=False", "padding_free=True",
                "loss on the rows' labels (assistant tokens)", "attn_implementation=sdpa", "optim=adamw_torch"]


def run_trl(spec: dict, record: dict) -> None:
    import torch
    from datasets import load_from_disk
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
    from trl import SFTTrainer

    s = Setting(**spec["setting"])
    dtype = getattr(torch, spec["dtype"])
    kw: dict = {}
    if s.method["name"] == "qlora":  # tunekit's qlora defaults: nf4, double quantization, bf16 compute
        kw["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                       bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype)
        kw["device_map"] = {"": torch.cuda.current_device() if torch.cuda.is_available() else "cpu"}
    model = AutoModelForCausalLM.from_pretrained(spec["model_dir"], dtype=dtype, attn_implementation="sdpa", **kw)
    peft_config = None
    if s.method["name"] in ("lora", "qlora"):
        m = s.method
        peft_config = LoraConfig(r=m["r"], lora_alpha=m["alpha"], lora_dropout=m["dropout"],
                                 target_modules=m["target_modules"], task_type="CAUSAL_LM")
    record["features"] = TRL_FEATURES + (["QLoRA: BitsAndBytesConfig nf4 + double quant"] if kw else [])
    trainer = SFTTrainer(model=model, args=sft_config(spec), train_dataset=load_from_disk(spec["data"]["packed"]),
                         processing_class=AutoTokenizer.from_pretrained(spec["model_dir"]), peft_config=peft_config,
                         callbacks=[step_timer(record)])
    trainer.train()


def run_unsloth(spec: dict, record: dict) -> None:
    """Unsloth's own loading, LoRA and kernels, TRL's trainer as Unsloth patches it (written for a CUDA GPU; not
    run in the session that wrote it, which had no GPU)."""
    import torch
    from datasets import load_from_disk
    from trl import SFTTrainer
    from unsloth import FastLanguageModel

    s, m = Setting(**spec["setting"]), Setting(**spec["setting"]).method
    model, tok = FastLanguageModel.from_pretrained(spec["model_dir"], max_seq_length=s.seq, dtype=torch.bfloat16,
                                                   load_in_4bit=m["name"] == "qlora", full_finetuning=m["name"] == "full")
    if m["name"] in ("lora", "qlora"):
        model = FastLanguageModel.get_peft_model(
            model, r=m["r"], lora_alpha=m["alpha"], lora_dropout=m["dropout"], bias="none",
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
            use_gradient_checkpointing="unsloth" if s.checkpointing else False, random_state=SEED)
    record["features"] = ["Unsloth FastLanguageModel + its kernels", *TRL_FEATURES[:3]]
    trainer = SFTTrainer(model=model, args=sft_config(spec), train_dataset=load_from_disk(spec["data"]["packed"]),
                         processing_class=tok, callbacks=[step_timer(record)])
    trainer.train()


def child_run(spec_path: str) -> None:
    """One measured run in this fresh process; writes its record as JSON to spec['result']."""
    spec = json.loads(Path(spec_path).read_text())
    if spec["stack"] == "unsloth":
        import unsloth  # noqa: F401  (first: Unsloth patches transformers, peft and TRL when it is imported)
    import importlib.metadata as md

    import torch

    from tunekit.plan import hardware
    from tunekit.plan.throughput import training_flops

    record: dict = {"stack": spec["stack"], "setting": spec["setting"]["name"], "rep": spec["rep"], "steps": [],
                    "logs": []}
    {"tunekit": run_tunekit, "tunekit-fast": run_tunekit, "trl": run_trl, "unsloth": run_unsloth}[spec["stack"]](
        spec, record)
    s = Setting(**spec["setting"])
    record["flops"] = training_flops(record.pop("config"), record["params"], s.method["name"], s.checkpointing,
                                     spec["data"]["attention_seq"])
    device, gpu = hardware.local_device()
    record.update(device=device, peak_tflops=gpu.bf16_tflops if gpu else None)
    if torch.cuda.is_available():
        record.update(peak_alloc_gb=torch.cuda.max_memory_allocated() / 1e9,
                      peak_reserved_gb=torch.cuda.max_memory_reserved() / 1e9)
    else:
        import resource

        record.update(peak_alloc_gb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9,
                      peak_reserved_gb=None)
    record["versions"] = {p: md.version(p) for p in ("torch", "transformers", "trl", "peft", "unsloth", "flash-attn",
                                                     "bitsandbytes") if importlib.util.find_spec(p.replace("-", "_"))}
    Path(spec["result"]).write_text(json.dumps(record, indent=1))


# ---------------------------------------------------------------------------------------------- the parent


def _child(args: list[str], log: Path) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w", encoding="utf-8") as f:
        proc = subprocess.run([sys.executable, __file__, *args], stdout=f, stderr=subprocess.STDOUT, check=False,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if proc.returncode:
        tail = "".join(log.read_text(encoding="utf-8", errors="replace").splitlines(True)[-30:])
        raise RuntimeError(f"{' '.join(args[:2])} failed (exit {proc.returncode}); log {log}:\n{tail}")


def skipped(stack: str, cuda: bool) -> str | None:
    """Why a stack does not run here, or None."""
    if stack == "unsloth" and not cuda:
        return "skipped: Unsloth needs a CUDA GPU (none here)"
    if stack == "unsloth" and not importlib.util.find_spec("unsloth"):
        return "skipped: unsloth is not installed (pip install unsloth)"
    return None


def run_setting(setting: Setting, a: argparse.Namespace, workdir: Path, cuda: bool) -> dict:
    """Model and data once, then every stack in a fresh process per repetition, alternating."""
    model_dir = build_model(setting, workdir, cuda)
    data = make_data(setting, model_dir, workdir, (a.warmup + a.steps) * setting.batch * setting.accum)
    runs: dict[str, list[dict]] = {st: [] for st in a.stacks}
    load = os.getloadavg()[0]
    notes = {st: why for st in a.stacks if (why := skipped(st, cuda))}
    for rep in range(a.repeats):
        for stack in [st for st in a.stacks if st not in notes]:
            name = f"{setting.name}-{stack}-{rep}"
            spec = {"stack": stack, "rep": rep, "setting": asdict(setting), "model_dir": str(model_dir),
                    "data": data, "workdir": str(workdir), "run_dir": str(workdir / "runs" / name),
                    "warmup": a.warmup, "steps": a.steps, "cuda": cuda, "dtype": "bfloat16" if cuda else "float32",
                    "compile": a.compile,
                    "result": str(workdir / "results" / f"{name}.json")}
            spec_path = workdir / "specs" / f"{name}.json"
            spec_path.parent.mkdir(parents=True, exist_ok=True)
            Path(spec["result"]).parent.mkdir(parents=True, exist_ok=True)
            spec_path.write_text(json.dumps(spec, indent=1))
            print(f"  {setting.name} rep {rep + 1}/{a.repeats}: {LABELS[stack]} ...", flush=True)
            try:
                _child(["--child", str(spec_path)], workdir / "logs" / f"{name}.log")
                runs[stack].append(json.loads(Path(spec["result"]).read_text()))
            except RuntimeError as e:
                print(str(e), flush=True)
                notes[stack] = "failed: see " + str(workdir / "logs" / f"{name}.log")
            if not a.keep:  # tunekit's final/ of a full 1B run is 2.5 GB: only the result file is needed
                shutil.rmtree(spec["run_dir"], ignore_errors=True)
    return {"setting": asdict(setting), "data": data, "runs": runs, "notes": notes,
            "load": (load, os.getloadavg()[0])}


def timed(run: dict, warmup: int) -> tuple[int, float]:
    steps = [s for s in run["steps"] if s["step"] > warmup]
    return sum(s["tokens"] for s in steps), sum(s["seconds"] for s in steps)


def expected_initial_loss(shape: dict) -> float:
    """Cross-entropy of a random init: ln V plus half the logits' variance (hidden x init_std^2: unit-RMS hidden
    states after the final norm times N(0, init_std^2) head weights)."""
    return math.log(shape["vocab"]) + shape["hidden"] * shape["init_std"] ** 2 / 2


def gates(result: dict, a: argparse.Namespace, rtol: float) -> list[tuple[str, bool, str]]:
    """(gate, passed, detail) for every run of the setting."""
    out = []
    runs = result["runs"]
    for stack, reps in runs.items():
        for r in reps:
            who = f"{LABELS[stack]} rep {r['rep'] + 1}"
            losses = [x["loss"] for x in r["logs"]]
            grads = [x["grad_norm"] for x in r["logs"]]
            exp = expected_initial_loss(r["shape"])
            out.append((f"initial loss {who}", abs(losses[0] - exp) <= a.init_margin,
                        f"{losses[0]:.4f} vs {exp:.4f} (ln V {math.log(r['shape']['vocab']):.4f}) +- {a.init_margin}"))
            out.append((f"grad norm > 0 {who}", all(g is not None and math.isfinite(g) and g > 0 for g in grads),
                        f"min {min(g or 0.0 for g in grads):.4g}"))
            tail = statistics.mean(losses[-3:])
            out.append((f"loss falls {who}", tail < losses[0], f"{losses[0]:.4f} -> {tail:.4f} (last 3)"))
            ref = runs.get("trl", [])[r["rep"]] if len(runs.get("trl", [])) > r["rep"] else None
            if ref is None or stack == "trl":
                continue
            same = [s["tokens"] for s in r["steps"]] == [s["tokens"] for s in ref["steps"]]
            out.append((f"same tokens per step as TRL {who}", same, f"{len(r['steps'])} steps"))
            worst = max(abs(x["loss"] - y["loss"]) / abs(y["loss"]) for x, y in zip(r["logs"], ref["logs"]))
            out.append((f"loss curve vs TRL {who}", worst <= rtol and len(r["logs"]) == len(ref["logs"]),
                        f"max relative difference {worst:.2e} (tolerance {rtol:g})"))
    return out


def summarise(result: dict, warmup: int) -> list[dict]:
    """One row per stack: median tokens/s over repetitions, its range, peak memory (max), MFU at the median."""
    rows = []
    for stack, reps in result["runs"].items():
        if not reps:
            rows.append({"stack": stack, "note": result["notes"].get(stack, "not run")})
            continue
        per_rep = [tok / sec for tok, sec in (timed(r, warmup) for r in reps)]
        med, r0 = statistics.median(per_rep), reps[0]
        peak = r0["peak_tflops"]
        rows.append({"stack": stack, "tokens_per_s": med, "range": (min(per_rep), max(per_rep)),
                     "peak_alloc_gb": max(r["peak_alloc_gb"] for r in reps),
                     "peak_reserved_gb": max(r["peak_reserved_gb"] or 0.0 for r in reps) or None,
                     "mfu": med * r0["flops"]["flops_per_token"] / (peak * 1e12) if peak else None,
                     "features": r0.get("features", []), "note": result["notes"].get(stack, "")})
    return rows


def table(result: dict, rows: list[dict]) -> str:
    trl = next((r for r in rows if r["stack"] == "trl" and "tokens_per_s" in r), None)
    mem = "peak reserved GB" if any(r.get("peak_reserved_gb") for r in rows) else "peak RSS GB"

    def mem_of(r: dict) -> float:
        return r["peak_reserved_gb"] if r.get("peak_reserved_gb") else r["peak_alloc_gb"]

    lines = [f"| stack | tok/s | range | vs TRL | {mem} | vs TRL | MFU |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "tokens_per_s" not in r:
            lines.append(f"| {LABELS[r['stack']]} | {r['note']} | | | | | |")
            continue
        speed = f"{r['tokens_per_s'] / trl['tokens_per_s']:.2f}x" if trl else "-"
        memr = f"{mem_of(r) / mem_of(trl):.2f}x" if trl else "-"
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a (CPU)" if r.get("peak_reserved_gb") is \
            None else "n/a (GPU not in table)"
        lines.append(f"| {LABELS[r['stack']]} | {r['tokens_per_s']:,.0f} | {r['range'][0]:,.0f}-{r['range'][1]:,.0f} "
                     f"| {speed} | {mem_of(r):.2f} | {memr} | {mfu} |")
    return "\n".join(lines)


def report(result: dict, rows: list[dict], checks: list, a: argparse.Namespace) -> str:
    s, d = Setting(**result["setting"]), result["data"]
    any_run = next((r[0] for r in result["runs"].values() if r), None)
    head = [f"### {s.name}: {s.title}", "",
            f"{d['examples']:,} synthetic chats ({d['tokens']:,} tokens; median {d['median_example']:.0f}, p95 "
            f"{d['p95_example']} tokens per example) packed into {d['rows']:,} rows (efficiency "
            f"{d['packing_efficiency']}; {d['rows_needed']:,} needed); {a.warmup} warm-up + {a.steps} timed steps, "
            f"{a.repeats} repetition(s), median shown; device {any_run['device'] if any_run else '?'}, dtype "
            f"{'bfloat16' if a.cuda else 'float32'}; load average {result['load'][0]:.1f} before, "
            f"{result['load'][1]:.1f} after, on {os.cpu_count()} logical CPUs", ""]
    lines = head + [table(result, rows), ""]
    if any_run:
        f = any_run["flops"]
        lines.append(f"FLOPs per token {f['flops_per_token'] / 1e9:.4g} G ({f['flops_formula']}; attention at "
                     f"{f['attention_seq']} tokens)")
    for r in rows:
        if r.get("features"):
            lines.append(f"- {LABELS[r['stack']]}: " + "; ".join(r["features"]))
    for stack, reps in result["runs"].items():
        for r in (r for r in reps if r.get("plan", {}).get("source", "").startswith("torch.cuda")):
            p = r["plan"]
            lines.append(f"- `tunekit plan` for {LABELS[stack]} rep {r['rep'] + 1}: predicted {p['predicted_gb']:.2f} GB, "
                         f"measured {p['measured_gb']:.2f} GB ({p['source']}): "
                         f"{100 * (p['predicted_gb'] / p['measured_gb'] - 1):+.1f}%")
    lines.append("- not available in tunekit (left out): " + "; ".join(NOT_AVAILABLE))
    failed = [c for c in checks if not c[1]]
    lines += ["", f"gates: {len(checks) - len(failed)}/{len(checks)} passed" + (" (all)" if not failed else "")]
    lines += [f"  FAILED {name}: {detail}" for name, ok, detail in failed]
    lines += [f"  ok {name}: {detail}" for name, ok, detail in checks if ok and a.verbose_gates]
    return "\n".join(lines)


def environment(cuda: bool) -> str:
    import importlib.metadata as md
    import platform

    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else "?"
    versions = ", ".join(f"{p} {md.version(p)}" for p in ("torch", "transformers", "trl", "peft")
                         if importlib.util.find_spec(p))
    return (f"{time.strftime('%Y-%m-%d')}; CPU {cpu} ({os.cpu_count()} logical cores); "
            f"{'CUDA' if cuda else 'no GPU'}; python {platform.python_version()}; {versions}")


def main() -> int:
    a = parse_args()
    if a.build_model:
        child_build_model(*a.build_model)
        return 0
    if a.child:
        child_run(a.child)
        return 0
    if a.tiny:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # --tiny is the CPU check of the harness, also on a GPU machine
    import torch

    a.cuda = torch.cuda.is_available()
    settings = TINY if a.tiny else SETTINGS
    if not a.tiny and not a.cuda:
        print("the GPU settings need a CUDA GPU with bf16; on CPU run --tiny", file=sys.stderr)
        return 2
    rtol = a.loss_rtol if a.loss_rtol is not None else (0.02 if a.cuda else 1e-3)
    own = a.workdir is None
    workdir = Path(a.workdir or tempfile.mkdtemp(prefix="bench_train-"))
    os.environ.setdefault("TUNEKIT_CACHE", str(workdir / "cache"))
    os.environ.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    print(f"bench_train: {environment(a.cuda)}\nworkdir {workdir}\n", flush=True)
    out, sections, ok = [], [environment(a.cuda)], True
    try:
        for name in a.settings or list(settings):
            result = run_setting(settings[name], a, workdir, a.cuda)
            rows, checks = summarise(result, a.warmup), gates(result, a, rtol)
            ok &= all(c[1] for c in checks)
            text = report(result, rows, checks, a)
            print("\n" + text + "\n", flush=True)
            sections.append(text)
            out.append({**result, "rows": rows, "gates": checks})
    finally:
        if own and not a.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print("GATES: " + ("PASS" if ok else "FAIL"))
    if a.out:
        Path(a.out).mkdir(parents=True, exist_ok=True)
        (Path(a.out) / "bench_train.json").write_text(json.dumps(out, indent=1, default=str))
        (Path(a.out) / "bench_train.md").write_text("\n\n".join(sections) + "\n")
    return 0 if ok else 1


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="builtin shapes on CPU (also on a GPU machine): 3 warm-up + 8 "
                    "timed steps, 1 repetition")
    ap.add_argument("--settings", nargs="*", help=f"GPU: {', '.join(SETTINGS)}; --tiny: {', '.join(TINY)}")
    ap.add_argument("--stacks", nargs="*", default=list(STACKS), choices=STACKS)
    ap.add_argument("--warmup", type=int, help="discarded steps (default 5; --tiny 3)")
    ap.add_argument("--steps", type=int, help="timed steps (default 50; --tiny 8)")
    ap.add_argument("--repeats", type=int, help="repetitions, alternating between stacks (default 3; --tiny 1)")
    ap.add_argument("--loss-rtol", type=float, help="loss-curve tolerance vs TRL, relative per step "
                    "(default 0.02 in bf16 on a GPU, 1e-3 in float32 on CPU)")
    ap.add_argument("--init-margin", type=float, default=0.5, help="nats around the expected initial loss (the mean "
                    "target logit of synthetic text with few distinct tokens varies by a few tenths at init)")
    ap.add_argument("--no-compile", dest="compile", action="store_false", help="leave trainer.compile out of the "
                    "fast-path stack on a GPU (inductor compiles an 8B model for minutes: too long for a short run)")
    ap.add_argument("--workdir", help="keep models, data and logs here (reused: an 8B model is built once)")
    ap.add_argument("--keep", action="store_true", help="keep the run directories (and a temporary workdir)")
    ap.add_argument("--out", help="write bench_train.json and bench_train.md here")
    ap.add_argument("--verbose-gates", action="store_true", help="print passed gates too")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--build-model", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    small = {"warmup": 3, "steps": 8, "repeats": 1} if a.tiny else {"warmup": 5, "steps": 50, "repeats": 3}
    for key, value in small.items():
        setattr(a, key, getattr(a, key) if getattr(a, key) is not None else value)
    if a.settings and (unknown := set(a.settings) - set(TINY if a.tiny else SETTINGS)):
        ap.error(f"unknown settings {sorted(unknown)}")
    return a


if __name__ == "__main__":
    sys.exit(main())
