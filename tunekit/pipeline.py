"""The training flow, top to bottom: recipe -> data -> model + method -> trainer -> run outputs."""

from __future__ import annotations

import time
from pathlib import Path

from tunekit import launch, output
from tunekit.recipe.schema import Recipe
from tunekit.ui import console


def train(recipe: Recipe, resume: bool = False, overwrite: bool = False, callbacks: list | None = None) -> Path:
    """Run the recipe; `callbacks` are extra transformers TrainerCallbacks (tests use them to inspect the model)."""
    if recipe.trainer.kind == "reft":  # two stages (SFT warm-up, then online RL): tunekit/trainers/reft.py
        from tunekit.trainers.reft import train as train_reft

        return train_reft(recipe, resume=resume, overwrite=overwrite)
    import transformers

    from tunekit.data.build import build_datasets
    from tunekit.methods.registry import apply_method, calibration_data, load_kwargs
    from tunekit.model.load import load_model, load_tokenizer, resolve_model_path
    from tunekit.trainers.preference import dropped_by_trainer
    from tunekit.trainers.registry import BUILDERS

    out = Path(recipe.output.dir)
    main = launch.is_main_process()  # in a multi-process run only rank 0 prints and writes shared files
    console.quiet = not main
    if main:
        output.prepare_run_dir(out, resume=resume, overwrite=overwrite or recipe.output.overwrite)
        output.write_run_header(out, recipe)
    launch.check_runnable(recipe)
    # Before the process group exists: with one, save_pretrained (used to write builtin models) saves on rank 0 only.
    model_path = resolve_model_path(recipe.model)
    launch.init_process_group(recipe)
    transformers.set_seed(recipe.trainer.seed)

    console.rule(f"[bold]tunekit train[/] -> {out}")
    tokenizer = load_tokenizer(recipe.model, model_path)
    with launch.main_process_first():
        train_ds, eval_ds, data_stats = build_datasets(recipe.data, tokenizer, recipe.trainer.seed)
    data_record = {"files": data_fingerprint(recipe), "stats": data_stats} if main else None
    if main:
        output.write_json(out / "data.json", data_record)
    console.print(f"data: {data_stats['train_rows']} train rows, {data_stats['eval_rows']} eval rows, "
                  f"{data_stats['train']['trained_tokens']} trained tokens")

    calibration = calibration_data(recipe, train_ds, tokenizer)  # None unless the method reads training batches
    plan = apply_method(load_model(recipe.model, model_path, **load_kwargs(recipe)), recipe, calibration)
    model = plan.model
    params = plan.parameters()
    console.print(f"model: {recipe.model.path} with method {recipe.method.name}: "
                  f"{params['trainable']:,} trainable of {params['total']:,} ({params['trainable_percent']:.2f}%)")

    scale = launch.scale_summary(recipe)
    console.print(f"scale: {scale['strategy']}, {scale['world_size']} process(es), global batch "
                  f"{scale['global_batch_size']} = {scale['per_device_batch_size']} per device x "
                  f"{scale['gradient_accumulation_steps']} accumulation x {scale['world_size']} processes")
    checkpoint = output.latest_checkpoint(out) if resume else None
    if checkpoint is not None:
        launch.check_resume(recipe, checkpoint, scale["world_size"])
    if checkpoint is not None and main:
        output.truncate_metrics(out, output.checkpoint_step(checkpoint))
        console.print(f"resuming from {checkpoint}")
    trainer = BUILDERS[recipe.trainer.kind](
        recipe, model, tokenizer, train_ds, eval_ds, str(out / output.CHECKPOINTS),
        [output.metrics_callback(out), *plan.callbacks, *(callbacks or [])],
    )
    dropped = dropped_by_trainer(recipe, train_ds, trainer)
    if dropped:
        data_stats["train"]["dropped_by_trainer"] = dropped
        (reason, n), = dropped.items()
        console.print(f"[yellow]warning:[/] the {recipe.trainer.kind} trainer dropped {n} training rows whose {reason}: "
                      "raise data.max_length or shorten those prompts (counted in data.json)")
        if main:
            output.write_json(out / "data.json", data_record)  # data_stats is its "stats": rewritten, not re-hashed
    scale["engine"] = launch.check_engine(recipe, trainer)
    launch.consolidate_saves(trainer)
    if plan.configure_trainer is not None:
        plan.configure_trainer(trainer)
    start = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    if plan.save is None:
        launch.save_consolidated(trainer, str(out / output.FINAL))  # every rank: ZeRO-3 / FSDP gather here
    elif main:
        plan.save(model, out / output.FINAL)
    if main:
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
        "launch": scale,
    }
    if eval_ds is not None:
        last = [h for h in trainer.state.log_history if "eval_loss" in h and h.get("step") == trainer.state.global_step]
        summary["eval"] = last[-1] if last else trainer.evaluate()
    if main:
        output.write_json(out / "summary.json", summary)
    console.print(f"done: {summary['global_step']} steps, final loss {summary['final_loss']}, outputs in {out}")
    del trainer, model
    launch.shutdown()  # every rank, before rank 0 goes on alone
    if recipe.eval.run_after_train and main:
        from tunekit.eval.run import evaluate

        evaluate(out)
    return out


def data_fingerprint(recipe: Recipe) -> dict:
    from tunekit.data.cache import source_fingerprints

    return source_fingerprints(recipe.data)
