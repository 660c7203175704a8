"""`reft`: Reinforced Fine-Tuning (ReFT paper): an SFT warm-up, then online RL on the same questions.

    RUN/
      stages/warmup/{checkpoints/, final/, stage.json}   SFT on question -> solution (reasoning path)
      stages/rl/{checkpoints/, final/, stage.json}       GRPO or RLOO from the warm-up's final weights;
                                                         reward derived from the ground-truth answer
      final/            the RL stage's final weights (copy), the run's result
      metrics.jsonl     every logged step, each row tagged with "stage"
      summary.json      per-stage steps, time, loss, mean held-out reward

`--resume`: while the warm-up has no final/, resume it from its latest checkpoint; after that, resume
the RL stage from its latest checkpoint (or start it). The paper used PPO with a value head; TRL 1.16
ships no PPO, so the RL stage uses its critic-free GRPO or RLOO (same sampling + answer rewards).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from tunekit import launch, output
from tunekit.errors import UserError
from tunekit.ui import console

STAGES = "stages"


def train(recipe: Any, resume: bool = False, overwrite: bool = False) -> Path:
    import transformers

    from tunekit.data.build import build_datasets
    from tunekit.model.load import load_tokenizer, resolve_model_path
    from tunekit.pipeline import data_fingerprint

    if launch.world_size() > 1:  # started by the user's own torchrun: the recipe check could not see it
        raise UserError(f"trainer.kind reft runs its two stages in one process so far, but this process is one "
                        f"of {launch.world_size()} started by a launcher; start it as one process "
                        "(`tunekit train RECIPE`).")
    out = Path(recipe.output.dir)
    warm_dir, rl_dir = out / STAGES / "warmup", out / STAGES / "rl"
    _prepare(out, warm_dir, resume, overwrite or recipe.output.overwrite)
    output.write_run_header(out, recipe)
    console.rule(f"[bold]tunekit train (reft: warm-up, then {recipe.trainer.rl.algorithm})[/] -> {out}")

    model_path = resolve_model_path(recipe.model)
    tokenizer = load_tokenizer(recipe.model, model_path)
    train_ds, eval_ds, stats = build_datasets(recipe.data, tokenizer, recipe.trainer.warmup.seed)
    output.write_json(out / "data.json", {"files": data_fingerprint(recipe), "stats": stats})
    console.print(f"data: {stats['train_rows']} questions, {stats['eval_rows']} held-out questions")
    heldout = eval_ds if eval_ds is not None else train_ds.select(range(min(64, len(train_ds))))

    stages = {}
    if (warm_dir / output.FINAL).exists():
        stages["warmup"] = json.loads((warm_dir / "stage.json").read_text())
        console.print(f"warm-up already finished ({warm_dir / output.FINAL}); going on with the RL stage")
    else:
        transformers.set_seed(recipe.trainer.warmup.seed)
        stages["warmup"] = run_warmup(recipe, model_path, tokenizer, train_ds, eval_ds, heldout, warm_dir, out,
                                      resume)
    transformers.set_seed(recipe.trainer.rl.seed)
    stages["rl"] = run_rl(recipe, model_path, tokenizer, train_ds, heldout, warm_dir, rl_dir, out, resume)

    if (out / output.FINAL).exists():
        shutil.rmtree(out / output.FINAL)
    shutil.copytree(rl_dir / output.FINAL, out / output.FINAL)
    summary = {"trainer": "reft", "method": recipe.method.name, "algorithm": recipe.trainer.rl.algorithm,
               "global_step": stages["rl"]["global_step"], "heldout_split": "eval" if eval_ds is not None
               else "first 64 training questions (no eval data given)", "stages": stages}
    output.write_json(out / "summary.json", summary)
    console.print(f"done: mean held-out reward {stages['warmup']['heldout_reward']:.3f} after the warm-up, "
                  f"{stages['rl']['heldout_reward']:.3f} after RL; outputs in {out}")
    return out


def _prepare(out: Path, warm_dir: Path, resume: bool, overwrite: bool) -> None:
    if resume:
        if not (warm_dir / output.FINAL).exists() and output.latest_checkpoint(warm_dir) is None:
            raise UserError(f"--resume: no warm-up checkpoint in `{warm_dir / output.CHECKPOINTS}` to resume from "
                            "(set output.save_steps so runs write checkpoints)")
        return
    output.prepare_run_dir(out, resume=False, overwrite=overwrite)


def _checkpoint(stage_dir: Path, out: Path, stage: str, resume: bool) -> Path | None:
    ckpt = output.latest_checkpoint(stage_dir) if resume else None
    if ckpt is not None:
        output.truncate_metrics(out, output.checkpoint_step(ckpt), stage=stage)
        console.print(f"{stage}: resuming from {ckpt}")
    return ckpt


def _sft_dataset(ds: Any, tokenizer: Any, recipe: Any) -> Any:
    """question -> solution as chat SFT examples, masked to the solution tokens."""
    from datasets import Dataset

    from tunekit.data.masking import tokenize_with_mask

    rows = []
    for i, r in enumerate(ds):
        enc = tokenize_with_mask(tokenizer, [*r["prompt"], {"role": "assistant", "content": r["solution"]}],
                                 recipe.data.train_on, f"row {i + 1}")
        ids, mask = enc["input_ids"][: recipe.data.max_length], enc["mask"][: recipe.data.max_length]
        if not any(mask):
            raise UserError(f"data: question {i + 1} ({r['question'][:60]!r}): no solution tokens remain after "
                            f"truncation to data.max_length={recipe.data.max_length}; raise data.max_length")
        rows.append({"input_ids": ids, "labels": [t if m else -100 for t, m in zip(ids, mask)]})
    return Dataset.from_list(rows)


def run_warmup(recipe: Any, model_path: str, tokenizer: Any, train_ds: Any, eval_ds: Any, heldout: Any,
               stage_dir: Path, out: Path, resume: bool) -> dict:
    from tunekit.methods.registry import apply_method, load_kwargs
    from tunekit.model.load import load_model
    from tunekit.trainers import sft
    from tunekit.trainers.schema import SFTTrainerConfig

    w = recipe.trainer.warmup
    stage_recipe = recipe.model_copy(update={"trainer": SFTTrainerConfig(kind="sft", **w.model_dump())})
    plan = apply_method(load_model(recipe.model, model_path, **load_kwargs(recipe)), recipe)
    ckpt = _checkpoint(stage_dir, out, "warmup", resume)
    trainer = sft.build(stage_recipe, plan.model, tokenizer, _sft_dataset(train_ds, tokenizer, recipe),
                        _sft_dataset(eval_ds, tokenizer, recipe) if eval_ds is not None and w.eval_steps else None,
                        str(stage_dir / output.CHECKPOINTS),
                        [output.metrics_callback(out, {"stage": "warmup"}), *plan.callbacks])
    if plan.configure_trainer is not None:
        plan.configure_trainer(trainer)
    console.rule("stage 1/2: SFT warm-up")
    start = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=str(ckpt) if ckpt else None)
    seconds = round(time.perf_counter() - start, 2)
    return _finish(trainer, tokenizer, recipe, heldout, stage_dir, out, "warmup", {
        "global_step": trainer.state.global_step, "train_seconds": seconds, "train_loss_mean": result.training_loss,
        "resumed_from": str(ckpt) if ckpt else None}, save=plan.save)


def _rl_model(recipe: Any, model_path: str, warm_final: Path) -> Any:
    """The warm-up's final weights, trainable: its adapter (PEFT methods) or its full weights."""
    from tunekit.methods.registry import apply_method, load_kwargs
    from tunekit.model.load import load_model

    if (warm_final / "adapter_config.json").exists():
        from peft import PeftModel

        base = load_model(recipe.model, model_path, **load_kwargs(recipe))
        return PeftModel.from_pretrained(base, str(warm_final), is_trainable=True)
    return apply_method(load_model(recipe.model, str(warm_final)), recipe).model


def run_rl(recipe: Any, model_path: str, tokenizer: Any, train_ds: Any, heldout: Any, warm_dir: Path,
           stage_dir: Path, out: Path, resume: bool) -> dict:
    from tunekit.trainers.rewards import build_reward_funcs

    rl = recipe.trainer.rl
    model = _rl_model(recipe, model_path, warm_dir / output.FINAL)
    funcs, weights = build_reward_funcs(rl.rewards)
    ckpt = _checkpoint(stage_dir, out, "rl", resume)
    trainer = build_rl_trainer(recipe, model, tokenizer, train_ds, funcs, weights,
                               str(stage_dir / output.CHECKPOINTS), [output.metrics_callback(out, {"stage": "rl"})])
    console.rule(f"stage 2/2: online RL ({rl.algorithm}, {rl.num_generations} samples per question)")
    start = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=str(ckpt) if ckpt else None)
    seconds = round(time.perf_counter() - start, 2)
    unwrapped = trainer.accelerator.unwrap_model(trainer.model)
    if "ref" in getattr(unwrapped, "peft_config", {}):
        unwrapped.delete_adapter("ref")  # TRL's frozen copy of the warm-up adapter (the KL reference); not saved
    rewards = [m["reward"] for m in trainer.state.log_history if "reward" in m]
    return _finish(trainer, tokenizer, recipe, heldout, stage_dir, out, "rl", {
        "global_step": trainer.state.global_step, "train_seconds": seconds, "train_loss_mean": result.training_loss,
        "train_reward_first": rewards[0] if rewards else None, "train_reward_last": rewards[-1] if rewards else None,
        "resumed_from": str(ckpt) if ckpt else None})


def build_rl_trainer(recipe: Any, model: Any, tokenizer: Any, train_ds: Any, funcs: list, weights: list,
                     checkpoint_dir: str, callbacks: list) -> Any:
    from tunekit.trainers.common import training_kwargs

    rl = recipe.trainer.rl
    if rl.use_vllm:
        _check_vllm()
    kwargs = training_kwargs(recipe.model_copy(update={"trainer": rl}), checkpoint_dir, False)
    kwargs.update(num_generations=rl.num_generations, max_completion_length=rl.max_completion_length,
                  temperature=rl.temperature, top_p=rl.top_p, top_k=rl.top_k, beta=rl.beta,
                  epsilon=rl.epsilon, num_iterations=rl.num_iterations, reward_weights=weights,
                  use_vllm=rl.use_vllm, log_completions=False)
    if rl.use_vllm:
        kwargs["vllm_mode"] = "colocate"
    columns = train_ds.remove_columns([c for c in train_ds.column_names if c not in ("prompt", "answer", "question")])
    if rl.algorithm == "grpo":
        from trl import GRPOConfig, GRPOTrainer

        config, cls = GRPOConfig(**kwargs), GRPOTrainer
    else:
        from trl import RLOOConfig, RLOOTrainer

        config, cls = RLOOConfig(**kwargs), RLOOTrainer
    return cls(model=model, reward_funcs=funcs, args=config, train_dataset=columns, processing_class=tokenizer,
               callbacks=callbacks)


def _check_vllm() -> None:
    import importlib.util

    import torch

    if importlib.util.find_spec("vllm") is None or not torch.cuda.is_available():
        raise UserError("trainer.rl.use_vllm: vLLM generation needs the `vllm` package and a CUDA GPU; "
                        "install vllm on a GPU machine or set use_vllm: false (plain generation)")


def _finish(trainer: Any, tokenizer: Any, recipe: Any, heldout: Any, stage_dir: Path, out: Path, stage: str,
            info: dict, save: Any = None) -> dict:
    if save is None:
        trainer.save_model(str(stage_dir / output.FINAL))
    else:  # the method's own save (e.g. PiSSA/CorDA adapters converted to fit the original base)
        save(trainer.model, stage_dir / output.FINAL)
    tokenizer.save_pretrained(str(stage_dir / output.FINAL))
    info["heldout_reward"] = heldout_reward(trainer.model, tokenizer, heldout, recipe)
    console.print(f"{stage}: {info['global_step']} steps, mean held-out reward {info['heldout_reward']:.3f}")
    with open(out / output.METRICS, "a", encoding="utf-8") as f:
        f.write(json.dumps({"stage": stage, "step": info["global_step"], "heldout_reward": info["heldout_reward"]})
                + "\n")
    output.write_json(stage_dir / "stage.json", info)
    return info


def heldout_reward(model: Any, tokenizer: Any, ds: Any, recipe: Any, batch_size: int = 32) -> float:
    """Mean weighted reward of `rl.eval_samples` sampled completions per question (RL sampling settings, seeded)."""
    import torch

    from tunekit.trainers.rewards import build_reward_funcs, score

    rl = recipe.trainer.rl
    funcs, weights = build_reward_funcs(rl.rewards)
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    was_training = model.training
    model.eval()
    totals: list[float] = []
    gen = torch.Generator().manual_seed(rl.seed)
    try:
        for start in range(0, len(ds), batch_size):
            rows = ds[start: start + batch_size]
            texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in rows["prompt"]]
            enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
            with torch.no_grad():
                seqs = model.generate(**enc, do_sample=True, temperature=rl.temperature, top_p=rl.top_p,
                                      top_k=rl.top_k, max_new_tokens=rl.max_completion_length,
                                      num_return_sequences=rl.eval_samples, pad_token_id=tokenizer.pad_token_id)
            completions = tokenizer.batch_decode(seqs[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
            k = rl.eval_samples
            columns = {c: [v for v in rows[c] for _ in range(k)] for c in rows if c != "prompt"}
            prompts = [p for p in rows["prompt"] for _ in range(k)]
            totals += score(funcs, weights, prompts, completions, columns)
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return round(sum(totals) / max(len(totals), 1), 4)
