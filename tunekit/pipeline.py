"""The training flow, top to bottom: recipe -> data -> model + method -> trainer -> run outputs."""

from __future__ import annotations

import time
from pathlib import Path

from tunekit import output
from tunekit.recipe.schema import Recipe
from tunekit.ui import console


def train(recipe: Recipe, resume: bool = False, overwrite: bool = False) -> Path:
    if recipe.trainer.kind == "reft":  # two stages (SFT warm-up, then online RL): tunekit/trainers/reft.py
        from tunekit.trainers.reft import train as train_reft

        return train_reft(recipe, resume=resume, overwrite=overwrite)
    import transformers

    from tunekit.data.build import build_datasets
    from tunekit.methods.registry import apply_method, count_parameters
    from tunekit.model.load import load_model, load_tokenizer, resolve_model_path
    from tunekit.trainers.registry import BUILDERS

    out = Path(recipe.output.dir)
    output.prepare_run_dir(out, resume=resume, overwrite=overwrite or recipe.output.overwrite)
    output.write_yaml(out / "recipe.resolved.yaml", recipe.model_dump(mode="json"))
    output.write_json(out / "versions.json", output.versions())
    transformers.set_seed(recipe.trainer.seed)

    console.rule(f"[bold]tunekit train[/] -> {out}")
    model_path = resolve_model_path(recipe.model)
    tokenizer = load_tokenizer(recipe.model, model_path)
    train_ds, eval_ds, data_stats = build_datasets(recipe.data, tokenizer, recipe.trainer.seed)
    output.write_json(out / "data.json", {"files": data_fingerprint(recipe), "stats": data_stats})
    console.print(f"data: {data_stats['train_rows']} train rows, {data_stats['eval_rows']} eval rows, "
                  f"{data_stats['train']['trained_tokens']} trained tokens")

    model = apply_method(load_model(recipe.model, model_path), recipe)
    params = count_parameters(model)
    console.print(f"model: {recipe.model.path} with method {recipe.method.name}: "
                  f"{params['trainable']:,} trainable of {params['total']:,} ({params['trainable_percent']:.2f}%)")

    checkpoint = output.latest_checkpoint(out) if resume else None
    if checkpoint is not None:
        output.truncate_metrics(out, int(checkpoint.name.split("-")[-1]))
        console.print(f"resuming from {checkpoint}")
    trainer = BUILDERS[recipe.trainer.kind](
        recipe, model, tokenizer, train_ds, eval_ds, str(out / output.CHECKPOINTS), [output.metrics_callback(out)]
    )
    start = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    trainer.save_model(str(out / output.FINAL))
    tokenizer.save_pretrained(str(out / output.FINAL))

    summary = {
        "params": params,
        "method": recipe.method.name,
        "trainer": recipe.trainer.kind,
        "global_step": trainer.state.global_step,
        "train_seconds": round(time.perf_counter() - start, 2),
        "train_loss_mean": result.training_loss,
        "final_loss": output.final_train_loss(out),
        "resumed_from": str(checkpoint) if checkpoint else None,
    }
    if eval_ds is not None:
        last = [h for h in trainer.state.log_history if "eval_loss" in h and h.get("step") == trainer.state.global_step]
        summary["eval"] = last[-1] if last else trainer.evaluate()
    output.write_json(out / "summary.json", summary)
    console.print(f"done: {summary['global_step']} steps, final loss {summary['final_loss']}, outputs in {out}")
    return out


def data_fingerprint(recipe: Recipe) -> dict:
    from tunekit.data.sources import resolve_path

    specs = [*recipe.data.train, *recipe.data.eval]
    return {s.path: output.file_sha256(resolve_path(s.path)) for s in specs}
