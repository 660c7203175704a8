"""`reft`: Reinforced Fine-Tuning (ReFT paper): an SFT warm-up, then online RL on the same questions.

    RUN/
      stages/warmup/{checkpoints/, final/, stage.json}   SFT on question -> solution (reasoning path)
      stages/rl/{checkpoints/, final/, stage.json}       GRPO, RLOO or PPO from the warm-up's final weights;
                                                         reward derived from the ground-truth answer
                                                         (PPO: final/ and checkpoints also hold value_head.safetensors)
      final/            the RL stage's final weights (copy), the run's result
      metrics.jsonl     every logged step, each row tagged with "stage"
      summary.json      per-stage steps, time, loss, mean held-out reward

`--resume`: while the warm-up has no final/, resume it from its latest checkpoint; after that, resume
the RL stage from its latest checkpoint (or start it). The paper used PPO with a value head: `algorithm: ppo`
is tunekit's own PPO trainer (`trainers/ppo.py`; TRL 1.16 ships none); `grpo` and `rloo` are TRL's critic-free
trainers (same sampling and answer rewards).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunekit import metrics, run_dir
from tunekit.data.masking import tokenize_with_mask
from tunekit.data.templates import generation_prompts
from tunekit.errors import UserError
from tunekit.files import append_line
from tunekit.launch.runtime import world_size
from tunekit.methods.plan import MethodPlan
from tunekit.methods.registry import apply_method, build_for_training, load_kwargs
from tunekit.model.load import load_model
from tunekit.trainers import ppo, sft
from tunekit.trainers.rewards import REWARD_COLUMNS, build_reward_funcs, score
from tunekit.trainers.schema import SFTTrainerConfig
from tunekit.trainers.stage import RunInputs, Stage, StagedRun
from tunekit.trainers.training_args import training_kwargs
from tunekit.ui import console

if TYPE_CHECKING:
    from tunekit.recipe.schema import Recipe

HELDOUT_FALLBACK = 64  # questions taken from the training data when no eval data is given


def stages(inputs: RunInputs) -> StagedRun:
    """Stage 1: SFT on question -> solution; stage 2: GRPO / RLOO / PPO from the warm-up's final weights."""
    recipe, out = inputs.recipe, inputs.out
    if world_size() > 1:  # started by the user's own torchrun: the recipe check could not see it
        raise UserError(f"trainer.kind reft runs its two stages in one process so far, but this process is one "
                        f"of {world_size()} started by a launcher; start it as one process (`tunekit train RECIPE`).")
    t = recipe.trainer
    heldout = inputs.eval_ds if inputs.eval_ds is not None else \
        inputs.train_ds.select(range(min(HELDOUT_FALLBACK, len(inputs.train_ds))))
    warm_recipe = warmup_recipe(recipe)
    warm_rows = _sft_dataset(inputs.train_ds, inputs.tokenizer, recipe)
    warm_eval = _sft_dataset(inputs.eval_ds, inputs.tokenizer, recipe) \
        if inputs.eval_ds is not None and t.warmup.eval_steps else None
    warm_dir, rl_dir = out / run_dir.STAGES / "warmup", out / run_dir.STAGES / "rl"

    def record(stage: str) -> Any:
        def facts(trainer: Any, info: dict) -> dict:
            trend = {**_reward_trend(trainer), **_generation_time(trainer, info)} if stage == "rl" else {}
            return {**trend, "heldout_reward": _heldout_record(trainer, inputs.tokenizer, heldout, recipe, out,
                                                               stage, info["global_step"], inputs.eval_ds is None)}
        return facts

    warmup = Stage(
        name="warmup", title="warm-up", dir=warm_dir, recipe=warm_recipe, seed=t.warmup.seed, train_ds=warm_rows,
        build_model=lambda: build_for_training(warm_recipe, inputs.model_path, warm_rows, inputs.tokenizer),
        build_trainer=lambda plan, ckpt, cbs: sft.build(warm_recipe, plan.model, inputs.tokenizer, warm_rows,
                                                        warm_eval, ckpt, cbs),
        record=record("warmup"), tags={"stage": "warmup"})
    funcs, weights = build_reward_funcs(t.rl.rewards)
    rl = Stage(
        name="rl", title=f"online RL ({t.rl.algorithm}, {t.rl.num_generations} samples per question)", dir=rl_dir,
        recipe=recipe.model_copy(update={"trainer": t.rl}), seed=t.rl.seed,
        build_model=lambda: MethodPlan(model=_rl_model(recipe, inputs.model_path, warm_dir / run_dir.FINAL)),
        build_trainer=lambda plan, ckpt, cbs: build_rl_trainer(recipe, plan.model, inputs.tokenizer, inputs.train_ds,
                                                               funcs, weights, ckpt, cbs),
        before_save=_drop_reference_adapter, record=record("rl"),
        tags={"stage": "rl"})
    heldout_split = "eval" if inputs.eval_ds is not None else f"first {HELDOUT_FALLBACK} training questions (no eval data given)"
    return StagedRun([warmup, rl], {"algorithm": t.rl.algorithm, "heldout_split": heldout_split})


def warmup_recipe(recipe: Recipe) -> Recipe:
    """The recipe as the SFT warm-up sees it: its `trainer:` is the warm-up's settings as an sft trainer."""
    return recipe.model_copy(update={"trainer": SFTTrainerConfig(kind="sft", **recipe.trainer.warmup.model_dump())})


def _sft_dataset(ds: Any, tokenizer: Any, recipe: Recipe) -> Any:
    """question -> solution as chat SFT examples, masked to the solution tokens."""
    from datasets import Dataset

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


def _rl_model(recipe: Recipe, model_path: str, warm_final: Path) -> Any:
    """The warm-up's final weights, trainable: its adapter (PEFT methods) or its full weights."""
    if (warm_final / "adapter_config.json").exists():
        from peft import PeftModel

        base = load_model(recipe.model, model_path, **load_kwargs(recipe))
        return PeftModel.from_pretrained(base, str(warm_final), is_trainable=True)
    return apply_method(load_model(recipe.model, str(warm_final)), recipe).model


def build_rl_trainer(recipe: Recipe, model: Any, tokenizer: Any, train_ds: Any, funcs: list, weights: list,
                     checkpoint_dir: str, callbacks: list) -> Any:
    rl = recipe.trainer.rl
    columns = train_ds.remove_columns([c for c in train_ds.column_names if c not in REWARD_COLUMNS])
    if rl.algorithm == "ppo":
        trainer = ppo.build(recipe, model, tokenizer, columns, funcs, weights, checkpoint_dir, callbacks)
        return _time_generation(trainer, trainer.ppo, "sample")
    if rl.use_vllm:
        _check_vllm()
    kwargs = training_kwargs(recipe.model_copy(update={"trainer": rl}), checkpoint_dir, False)
    kwargs.update(num_generations=rl.num_generations, max_completion_length=rl.max_completion_length,
                  temperature=rl.temperature, top_p=rl.top_p, top_k=rl.top_k, beta=rl.beta,
                  epsilon=rl.epsilon, num_iterations=rl.num_iterations, reward_weights=weights,
                  use_vllm=rl.use_vllm, log_completions=False)
    if rl.use_vllm:
        kwargs["vllm_mode"] = "colocate"
    if rl.algorithm == "grpo":
        from trl import GRPOConfig, GRPOTrainer

        config, cls = GRPOConfig(**kwargs), GRPOTrainer
    else:
        from trl import RLOOConfig, RLOOTrainer

        config, cls = RLOOConfig(**kwargs), RLOOTrainer
    trainer = cls(model=model, reward_funcs=funcs, args=config, train_dataset=columns, processing_class=tokenizer,
                  callbacks=callbacks)
    return _time_generation(trainer, trainer, "_generate")  # TRL's sampling step (plain generate or vLLM)


def _time_generation(trainer: Any, owner: Any, method: str) -> Any:
    """Time the stage's sampling apart from the rest of its steps (RL's bottleneck; `generation_seconds` in the
    stage's summary)."""
    trainer.tk_generation = metrics.CallTimer()
    trainer.tk_generation.wrap(owner, method)
    return trainer


def _check_vllm() -> None:
    import importlib.util

    import torch

    if importlib.util.find_spec("vllm") is None or not torch.cuda.is_available():
        raise UserError("trainer.rl.use_vllm: vLLM generation needs the `vllm` package and a CUDA GPU; "
                        "install vllm on a GPU machine or set use_vllm: false (plain generation)")


def _drop_reference_adapter(trainer: Any) -> None:
    """The frozen copy of the warm-up adapter (the KL reference of TRL's trainers and of ppo) is not part of the
    result."""
    unwrapped = trainer.accelerator.unwrap_model(trainer.model)
    if "ref" in getattr(unwrapped, "peft_config", {}):
        unwrapped.delete_adapter("ref")


def _generation_time(trainer: Any, info: dict) -> dict:
    """Seconds of the stage spent sampling completions and the rest (log-probs, rewards, updates, saves)."""
    timer = getattr(trainer, "tk_generation", None)
    if timer is None:
        return {}
    gen = round(timer.seconds, 2)
    console.print(f"rl: {gen:.1f} s generating ({timer.calls} calls), "
                  f"{max(0.0, info['train_seconds'] - gen):.1f} s the rest of training")
    return {"generation_seconds": gen, "generation_calls": timer.calls,
            "other_train_seconds": round(max(0.0, info["train_seconds"] - gen), 2)}


def _reward_trend(trainer: Any) -> dict:
    rewards = [m["reward"] for m in trainer.state.log_history if "reward" in m]
    return {"train_reward_first": rewards[0] if rewards else None, "train_reward_last": rewards[-1] if rewards else None}


def _heldout_record(trainer: Any, tokenizer: Any, heldout: Any, recipe: Recipe, out: Path, stage: str,
                    step: int, from_train: bool = False) -> float:
    """The stage's mean held-out reward (on the eval split; without one, on the first training questions, and the
    console says so: they are not held out), printed and logged to metrics.jsonl."""
    reward = heldout_reward(trainer.model, tokenizer, heldout, recipe)
    what = (f"mean reward on the first {len(heldout)} training questions {reward:.3f} (no eval data: not held out)"
            if from_train else f"mean held-out reward {reward:.3f}")
    console.print(f"{stage}: {step} steps, {what}")
    append_line(out / run_dir.METRICS, metrics.json_row({"stage": stage, "step": step, "heldout_reward": reward}))
    return reward


def heldout_reward(model: Any, tokenizer: Any, ds: Any, recipe: Recipe, batch_size: int = 32) -> float:
    """Mean weighted reward of `rl.eval_samples` sampled completions per question (RL sampling settings, seeded)."""
    import torch

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
            texts = generation_prompts(tokenizer, rows["prompt"])
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
