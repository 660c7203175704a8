"""The training flow, top to bottom: recipe -> run dir -> data -> stages -> summary -> eval.

Every trainer kind goes through `train`. A kind trains in one stage (sft, dpo, kto, orpo, cpo) or several
(reft: SFT warm-up, then online RL); `trainers.registry.stages` lists them, and `run_stage` takes each through
the same steps: model + method, trainer, resume point, train, save.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from tunekit import checkpoints, guards, metrics, model_card, run_dir
from tunekit.data.build import build_datasets
from tunekit.data.cache import source_fingerprints
from tunekit.data.select import summary_lines
from tunekit.data.stats import example_lengths
from tunekit.eval.run import evaluate
from tunekit.files import TMP, saving
from tunekit.launch import engines, rules, runtime
from tunekit.model.load import absolute_local, check_local, load_tokenizer, resolve_model_path
from tunekit.paths import absolute_file, as_umask_allows
from tunekit.plan import hardware, measure, throughput
from tunekit.plan import report as plan_report
from tunekit.recipe.schema import Recipe
from tunekit.resume import (
    loading,
    log_carry,
    resume_point,
    resumed_schedule_callback,
    start_callback,
    train_from,
    verify_checkpoints,
)
from tunekit.trainers import display
from tunekit.trainers.preference import dropped_by_trainer
from tunekit.trainers.reft_schema import PythonReward
from tunekit.trainers.registry import stages as kind_stages
from tunekit.trainers.stage import RunInputs, Stage
from tunekit.trainers.training_args import check_fast_paths, check_trackers, fast_paths
from tunekit.ui import console


def train(recipe: Recipe, resume: bool = False, overwrite: bool = False, callbacks: list | None = None,
          allow_changes: bool = False, until_exit: bool = False) -> Path:
    """Run the recipe; `callbacks` are extra transformers TrainerCallbacks (tests use them to inspect the model).
    `until_exit` (the CLI): the signal handlers stay once it returned (guards.signal_handlers)."""
    done = run_dir.finished(Path(recipe.output.dir), recipe) if resume else None
    if done:  # every rank sees it: none starts
        console.print(done)
        return Path(recipe.output.dir)
    with guards.signal_handlers(until_exit):
        inputs = open_run(recipe, resume, overwrite, allow_changes)
        predicted = plan_memory(recipe)
        staged = kind_stages(inputs)
        results = {stage.name: run_stage(stage, inputs, callbacks or []) for stage in staged.stages}
        if inputs.header is not None:  # every stage had finished before: no checkpoint was loaded
            inputs.header.commit(None)
        memory = {"predicted": predicted, "measured": measure.run_peak()}
        summary = write_summary(inputs, staged.stages, results, staged.summary, memory)
        loss = summary["final_loss"]
        console.print(f"done: {summary['global_step']} steps, final loss "
                      f"{'n/a' if loss is None else f'{loss:.4f}'}, outputs in {inputs.out}")
        with guards.after_training(inputs.out, recipe.eval.run_after_train):  # a signal waits for the card
            runtime.shutdown()  # every rank, before rank 0 goes on alone
            if runtime.is_main_process():
                model_card.write_card(inputs.out, recipe)
        if recipe.eval.run_after_train and runtime.is_main_process():
            evaluate(inputs.out)  # rewrites the card with the eval results
    return inputs.out


def absolute_inputs(recipe: Recipe) -> None:
    """Local model directories, reward files and eval task files as absolute paths: what the run writes
    (recipe.resolved.yaml) must not depend on the cwd, so `tunekit eval/merge/chat RUN` and `--resume` from
    another directory find the same ones (a relative path elsewhere reads another file, or a hub id)."""
    recipe.model.path = absolute_local(recipe.model.path)
    recipe.model.tokenizer = absolute_local(recipe.model.tokenizer)
    t = recipe.trainer
    if getattr(t, "ref_model", None):
        t.ref_model = absolute_local(t.ref_model)
    rl = getattr(t, "rl", None)
    for reward in [*getattr(t, "rewards", []), *getattr(rl, "rewards", [])]:
        if isinstance(reward, PythonReward):
            reward.file = absolute_file(reward.file)
    for task in recipe.eval.tasks:
        if task.data is not None:
            task.data.path = absolute_file(task.data.path)
            task.data.tools = task.data.tools and absolute_file(task.data.tools)


def open_run(recipe: Recipe, resume: bool, overwrite: bool, allow_changes: bool = False) -> RunInputs:
    """Run dir and its header, process group and seed, tokenizer, then the data stage (data.json)."""
    import transformers

    out = Path(recipe.output.dir)
    absolute_inputs(recipe)
    check_trackers(list(getattr(recipe.trainer, "report_to", [])))  # before anything is written
    check_fast_paths(recipe.trainer)
    check_local(recipe.model.path)
    check_local(getattr(recipe.trainer, "ref_model", None), "trainer.ref_model")
    main = runtime.is_main_process()  # in a multi-process run only rank 0 prints and writes shared files
    console.quiet = not main
    header = None  # under --resume: what the resume changes in the run dir, written once the checkpoint loaded
    if main:
        run_dir.prepare_run_dir(out, resume=resume, overwrite=overwrite)
        files = source_fingerprints(recipe.data)
        header = run_dir.write_run_header(out, recipe, files, resume, allow_changes)
        if resume and run_dir.has_progress(out):
            verify_checkpoints(out)
        elif resume:
            console.print(f"--resume: `{out}` has no checkpoint yet (its run stopped before training); "
                          "starting at step 0")
    rules.check_runnable(recipe.launch)
    # Before the process group exists: with one, save_pretrained (used to write builtin models) saves on rank 0 only.
    model_path = resolve_model_path(recipe.model)
    runtime.init_process_group(recipe.launch)
    transformers.set_seed(recipe.trainer.seed)
    console.rule(f"[bold]tunekit train ({recipe.trainer.kind})[/] -> {out}")
    tokenizer = load_tokenizer(recipe.model, model_path)
    with runtime.main_process_first():
        train_ds, eval_ds, stats = build_datasets(recipe.data, tokenizer, recipe.trainer.seed, recipe.model)
    if main and header is None:
        run_dir.write_json(out / "data.json", {"files": files, "stats": stats})
    elif header is not None and header.data_changes:
        header.data = {"files": files, "stats": stats}  # written once the checkpoint loaded
    trained = stats.get("train", {}).get("trained_tokens")
    console.print(f"data: {stats['train_rows']} train rows, {stats['eval_rows']} eval rows"
                  + (f", {trained} trained tokens" if isinstance(trained, int) else ""))
    for line in summary_lines(stats.get("train", {}).get("select")):
        console.print(f"data: {line}", markup=False)
    return RunInputs(recipe, out, model_path, tokenizer, train_ds, eval_ds, resume, header)


def plan_memory(recipe: Recipe) -> dict | None:
    """The planner's memory estimate for this run (docs/plan.md), printed as one line and kept for summary.json."""
    import torch

    predicted = plan_report.for_run(recipe, "cuda" if torch.cuda.is_available() else "cpu")
    if predicted and "peak_bytes" in predicted:
        cpu = predicted["device"] == "cpu"  # measured there: the whole process's peak RSS, libraries and all
        console.print(f"plan: {plan_report.gib(predicted['peak_bytes'])} per device predicted "
                      f"({predicted['layout']}, on {predicted['device']}; `tunekit plan` for the parts"
                      + ("; the training state only: on CPU the `mem` column is the whole process, which torch and "
                         "the libraries make several hundred MB larger" if cpu else "") + ")")
    return predicted


def run_stage(stage: Stage, inputs: RunInputs, callbacks: list) -> dict:
    """Model + method, trainer, resume point, train, save: the same steps for every stage of every kind."""
    import transformers

    staged = stage.dir != inputs.out
    if staged and (stage.dir / "stage.json").is_file():
        console.print(f"{stage.title} already finished ({stage.dir / run_dir.FINAL}); going on with the next stage")
        return json.loads((stage.dir / "stage.json").read_text())
    if staged:
        console.rule(f"stage: {stage.title}")
    transformers.set_seed(stage.seed)
    plan = stage.build_model()
    params = plan.parameters()
    console.print(f"model: {inputs.recipe.model.path} with method {inputs.recipe.method.name}: "
                  f"{params['trainable']:,} trainable of {params['total']:,} ({params['trainable_percent']:.2f}%)")
    scale = runtime.scale_summary(inputs.recipe.launch, stage.recipe.trainer)
    console.print(f"scale: {scale['strategy']}, {scale['world_size']} process(es), global batch "
                  f"{scale['global_batch_size']} = {scale['per_device_batch_size']} per device x "
                  f"{scale['gradient_accumulation_steps']} accumulation x {scale['world_size']} processes")
    checkpoint = resume_point(stage, inputs)
    guard = guards.stop_callback(inputs.recipe.output.save_minutes)
    writer = metrics.metrics_callback(inputs.out, stage.tags, speed(stage, inputs, plan.model, params))
    carry = log_carry(checkpoint)
    own = [writer, guard, carry, checkpoints.checkpoint_callback(), resumed_schedule_callback()]
    trainer = carry.trainer = stage.build_trainer(plan, str(stage.dir / run_dir.CHECKPOINTS),
                                                  [*own, *plan.callbacks, *callbacks])
    display.attach(trainer, writer, stage.title)
    loaded = start_callback(checkpoint, inputs.header)
    trainer.add_callback(loaded)
    report_dropped_rows(stage, inputs, trainer)
    engine = engines.check_engine(inputs.recipe.launch, trainer)
    engines.consolidate_saves(trainer)
    if plan.configure_trainer is not None:
        plan.configure_trainer(trainer)
    start = time.perf_counter()
    with loading(checkpoint, loaded, inputs.header), guards.disk_full(stage.dir / run_dir.CHECKPOINTS):
        result = train_from(trainer, checkpoint)  # None: the checkpoint was the last step
    guards.check_stopped(guard, trainer, stage.dir / run_dir.CHECKPOINTS, stage.recipe.trainer.learning_rate)
    config = getattr(plan.model, "config", None)
    info = {"params": params, "global_step": trainer.state.global_step,
            "train_seconds": round(time.perf_counter() - start, 2),
            "train_loss_mean": result.training_loss if result else None,
            "resumed_from": str(checkpoint) if checkpoint else None, "engine": engine,
            "throughput": writer.throughput(),
            "fast_paths": fast_paths(stage.recipe, getattr(config, "model_type", None),
                                     getattr(config, "_attn_implementation", None))}
    save_final(stage, plan, trainer, inputs.tokenizer)
    info.update(stage.record(trainer, info) if stage.record else {})
    if inputs.eval_ds is not None and not staged:
        info["eval"] = final_eval(trainer)
    if staged:
        run_dir.write_json(stage.dir / "stage.json", info)
    return info


def speed(stage: Stage, inputs: RunInputs, model: Any, params: dict) -> metrics.Speed:
    """What turns the stage's tokens/s into per-device tokens/s and MFU: FLOPs per trained token
    (plan/throughput.py, attention at the training examples' token-weighted mean length) and the device's peak
    dense bf16 FLOP/s (plan/hardware.py). MFU is reported for SFT steps only (one forward + backward per token)."""
    device, gpu = hardware.local_device()
    peak, t = (gpu.bf16_tflops * 1e12 if gpu else None), stage.recipe.trainer
    note = None if gpu else "no MFU on CPU" if device == "cpu" else f"{device}: peak FLOP/s not in plan/hardware.py"
    kind = getattr(t, "kind", inputs.recipe.trainer.kind)  # reft's RL stage has its own settings model
    if kind != "sft" or getattr(t, "optim", None) == "mezo":
        what = "optim mezo" if kind == "sft" else f"trainer kind {kind}" + (f", stage {stage.name}" if stage.tags
                                                                           else "")
        note = f"MFU not defined for {what} (a step is not one forward + backward per token)"
        return metrics.Speed(runtime.world_size(), None, peak, device, note=note)
    lengths = example_lengths(stage.train_ds if stage.train_ds is not None else inputs.train_ds)
    seq = throughput.attention_length(lengths) if lengths else float(stage.recipe.data.max_length)
    try:
        facts = throughput.training_flops(model.config, params, stage.recipe.method.name, t.gradient_checkpointing,
                                          seq)
    except (AttributeError, TypeError) as e:  # a config without the decoder shape fields
        return metrics.Speed(runtime.world_size(), None, peak, device, note=f"FLOPs per token unknown: {e}")
    flops = facts.pop("flops_per_token")
    return metrics.Speed(runtime.world_size(), flops, peak, device, facts, note)


def report_dropped_rows(stage: Stage, inputs: RunInputs, trainer: Any) -> None:
    """Rows the TRL trainer dropped or cut at max_length (preference trainers), train and eval: warned and counted
    in data.json (`stats.SPLIT.dropped_by_trainer`, `stats.SPLIT.cut_by_trainer`)."""
    found = dropped_by_trainer(stage.recipe, trainer)
    if not found:
        return
    kind = stage.recipe.trainer.kind
    for split, keys in found.items():
        for key, ((reason, n),) in ((k, v.items()) for k, v in keys.items()):
            what = ("were dropped (" if key == "dropped_by_trainer" else
                    "are scored without the end of their answer and its end-of-turn token (")
            console.print(f"[yellow]warning:[/] {n} {split} examples of the {kind} trainer {what}{reason}): raise "
                          f"data.max_length or shorten them (counted in data.json, stats.{split}.{key})")
    if runtime.is_main_process():  # rewritten, not re-hashed (by a resume: once its checkpoint loaded)
        header = inputs.header
        record = header.data_json() if header is not None else json.loads((inputs.out / "data.json").read_text())
        for split, keys in found.items():
            record["stats"].setdefault(split, {}).update(keys)
        if header is None:
            run_dir.write_json(inputs.out / "data.json", record)


def save_final(stage: Stage, plan: Any, trainer: Any, tokenizer: Any) -> None:
    """final/: the method's own save, or the trainer's (every rank: ZeRO-3 / FSDP gather there); the tokenizer.
    Written into final.tmp/ and renamed to final/ when complete: final/ is whole or absent (a full disk or a kill
    during the save leaves no half model for eval/chat/merge to take), and never holds training_args.bin."""
    final, main = stage.dir / run_dir.FINAL, runtime.is_main_process()
    tmp = final.with_name(run_dir.FINAL + TMP)
    if main:
        shutil.rmtree(tmp, ignore_errors=True)  # a save cut short before (every rank meets in the gather below)
    if stage.before_save is not None:
        stage.before_save(trainer)
    try:
        with saving(tmp):
            if plan.save is None:
                engines.save_consolidated(trainer, str(tmp))
            elif main:
                plan.save(plan.model, tmp)
            if main:
                tokenizer.save_pretrained(str(tmp))
    except BaseException:
        if main:
            shutil.rmtree(tmp, ignore_errors=True)  # and its space: the full disk is then as it was before
        raise
    runtime.barrier()  # every rank's files are in final.tmp/ (ZeRO-3 without 16-bit gathering saves shards per rank)
    if main:
        (tmp / "training_args.bin").unlink(missing_ok=True)  # transformers' pickle: the recipe is the record
        as_umask_allows(tmp)
        replace_dir(tmp, final)


def replace_dir(new: Path, dest: Path) -> None:
    """Put the complete directory `new` at `dest`, replacing what was there (a previous final/ of a run resumed to
    train longer): `dest` is always whole, the old one or the new one."""
    old = dest.with_name(dest.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if dest.exists():
        dest.rename(old)
    new.rename(dest)
    shutil.rmtree(old, ignore_errors=True)


def final_eval(trainer: Any) -> dict:
    """The eval metrics at the last step: logged by the trainer's schedule, else evaluated now."""
    step = trainer.state.global_step
    last = [h for h in trainer.state.log_history if "eval_loss" in h and h.get("step") == step]
    return last[-1] if last else trainer.evaluate()


def write_summary(inputs: RunInputs, stages: list[Stage], results: dict, extra: dict, memory: dict | None = None) -> dict:
    """summary.json; a staged run's last stage's final/ becomes the run's final/."""
    recipe, out, last = inputs.recipe, inputs.out, stages[-1]
    if last.dir != out and runtime.is_main_process():
        tmp = out / (run_dir.FINAL + TMP)
        shutil.rmtree(tmp, ignore_errors=True)
        with saving(tmp):
            shutil.copytree(last.dir / run_dir.FINAL, tmp)
        replace_dir(tmp, out / run_dir.FINAL)
    info = results[last.name]
    summary = {"params": info["params"], "method": recipe.method.name, "trainer": recipe.trainer.kind,
               "global_step": info["global_step"], "train_seconds": info["train_seconds"],
               "train_loss_mean": info["train_loss_mean"], "final_loss": metrics.final_train_loss(out),
               "resumed_from": info["resumed_from"],
               "launch": {**runtime.scale_summary(recipe.launch, last.recipe.trainer), "engine": info["engine"]}}
    summary["throughput"] = info.get("throughput")
    summary["fast_paths"] = info.get("fast_paths")
    summary.update({"eval": info["eval"]} if "eval" in info else {})
    summary.update({**extra, "stages": results} if len(stages) > 1 else {})
    summary.update({"memory": memory} if memory else {})
    if runtime.is_main_process():
        run_dir.write_json(out / "summary.json", summary)
    return summary
