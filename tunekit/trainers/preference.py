"""`dpo`, `kto`, `orpo`, `cpo` (incl. SimPO): preference trainers built from TRL (`online_dpo`: online_dpo.py).

The data stage hands over conversational {prompt, chosen, rejected} (or {prompt, completion, label}) rows;
`pair_tokens.exact_pairs` renders them as the model reads and writes them (the prompt with the generation prompt,
each answer as written after it, as SFT trains) and hands DPO and KTO token ids (their `_prepare_dataset` then
only does what TRL does after tokenizing), ORPO and CPO texts (which TRL tokenizes as text rows).

Reference model (dpo, kto): with `ref_model: null` TRL uses the initial policy: for a PeftModel it keeps a
frozen copy of the adapter as it was before training (identical to the adapter-disabled base for a freshly
initialised LoRA, and still right for adapters whose init changes the base, e.g. PiSSA); for full training it
loads a second copy of the base model. An explicit `ref_model` is loaded like the base model. When the adapter
is a fresh LoRA (every lora_B is zero, so the adapter is a no-op) the copy is dropped again and the reference is
the adapter-disabled base: the same numbers, half the adapter memory, and no `ref/` folder saved.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tunekit.data.pair_tokens import at_max_length, exact_pairs
from tunekit.launch.runtime import rank
from tunekit.model.load import load_model, resolve_model_path
from tunekit.trainers.training_args import add_tokens_seen, training_kwargs
from tunekit.ui import console

if TYPE_CHECKING:
    from tunekit.recipe.schema import Recipe


def ref_model(recipe: Recipe) -> Any:
    t = recipe.trainer
    if not t.ref_model:
        return None

    cfg = recipe.model.model_copy(update={"path": t.ref_model})
    ref = load_model(cfg, resolve_model_path(cfg, "trainer.ref_model"))
    ref.requires_grad_(False)
    return ref.eval()


def base_as_reference(trainer: Any) -> Any:
    model = trainer.accelerator.unwrap_model(trainer.model)
    if "ref" not in getattr(model, "peft_config", {}):
        return trainer
    lora_b = [p for n, p in model.named_parameters() if ".lora_B.default" in n]
    others = [n for n in model.peft_config if n not in ("default", "ref")]
    if lora_b and not others and all(not p.detach().any() for p in lora_b):
        model.delete_adapter("ref")
        model.set_adapter("default")
    return trainer


def build_dpo(recipe: Recipe, model: Any, tokenizer: Any, train_ds: Any, eval_ds: Any, checkpoint_dir: str,
              callbacks: list) -> Any:
    from trl import DPOConfig, DPOTrainer

    t = recipe.trainer
    args = DPOConfig(
        **training_kwargs(recipe, checkpoint_dir, eval_ds is not None),
        max_length=recipe.data.max_length,
        beta=t.beta,
        loss_type=t.loss_types,
        loss_weights=t.loss_weights,
        label_smoothing=t.label_smoothing,
        f_divergence_type=t.f_divergence_type,
        use_weighting=t.use_weighting,
        ld_alpha=t.ld_alpha,
        discopop_tau=t.discopop_tau,
        precompute_ref_log_probs=t.precompute_ref_log_probs,
    )
    return base_as_reference(_tokenized(DPOTrainer)(
        model=model, ref_model=ref_model(recipe), args=args, train_dataset=_pairs(train_ds, tokenizer, "dpo"),
        eval_dataset=_pairs(eval_ds, tokenizer, "dpo"), processing_class=tokenizer, callbacks=callbacks))


def _pairs(ds: Any, tokenizer: Any, kind: str) -> Any:
    return exact_pairs(ds, tokenizer, kind, rank())


def _tokenized(trainer_class: type) -> type:
    """TRL's DPO / KTO trainer reading the token ids tunekit made (`exact_pairs`): its `_prepare_dataset` does only
    what TRL's does after tokenizing (TRL 1.16): drop rows whose prompt alone fills max_length (the collator would
    keep no completion token), and for KTO add the mismatched completions of its KL estimate."""

    class Tokenized(trainer_class):  # type: ignore[misc, valid-type]
        def _prepare_dataset(self, dataset: Any, processing_class: Any, args: Any, dataset_name: str) -> Any:
            if "prompt_ids" not in dataset.column_names:  # a dataset passed to evaluate() later: TRL's own path
                return super()._prepare_dataset(dataset, processing_class, args, dataset_name)
            if args.max_length is not None and getattr(args, "truncation_mode", "keep_start") == "keep_start":
                dataset = _fitting(self, dataset, args.max_length, dataset_name)
            if getattr(self, "calculate_KL", False):  # KTO: each row's KL completion is its batch neighbour's
                dataset = dataset.map(_kl_completions, batched=True, batch_size=args.per_device_train_batch_size,
                                      desc=f"Extracting KL {dataset_name} dataset")
            if "label" in dataset.column_names and dataset_name == "train":
                _kto_weights_hint(dataset["label"], self.desirable_weight, self.undesirable_weight)
            return dataset

    Tokenized.__name__ = Tokenized.__qualname__ = f"Tunekit{trainer_class.__name__}"
    return Tokenized


def _fitting(trainer: Any, dataset: Any, max_length: int, split: str) -> Any:
    """The rows whose prompt leaves room for an answer token (TRL's filter), counted on the trainer
    (`trainer.tk_rows[split]`: offered, kept, and answers the collator will cut at max_length: those lose their end
    and end-of-turn token)."""
    cut = [0]

    def fits(row: dict) -> bool:
        keep, answers_cut = at_max_length(row, max_length)
        cut[0] += answers_cut > 0  # rows (a DPO pair with either answer cut; a KTO example)
        return keep

    kept = dataset.filter(fits, load_from_cache_file=False, desc=f"Dropping fully truncated examples from {split}")
    trainer.tk_rows = {**getattr(trainer, "tk_rows", {}),
                       split: {"offered": len(dataset), "kept": len(kept), "answers_cut": cut[0]}}
    return kept


def _kto_weights_hint(labels: list[bool], desirable: float, undesirable: float) -> None:
    """TRL's advice when desirable and undesirable rows are unbalanced and neither weight is in the range of the
    KTO paper's Eq. (8) (as TRL's KTOTrainer gives it after its own tokenization)."""
    n_des = max(sum(labels), 1)
    n_und = max(len(labels) - n_des, 1)
    if n_des == n_und:
        return
    des = (round(n_und * undesirable / n_des, 2), round(n_und * undesirable / n_des * 1.33, 2))
    und = (round(n_des * desirable / n_und / 1.33, 2), round(n_des * desirable / n_und, 2))
    if rank() == 0 and not (des[0] <= desirable <= des[1] or und[0] <= undesirable <= und[1]):
        console.print(  # on tunekit's console: the trl logger is quiet (tunekit/quiet.py), and this is about the run
            f"[yellow]warning:[/] KTO: {n_des} desirable and {n_und} undesirable rows, and the loss weights are outside the range the "
            f"KTO paper recommends: set EITHER trainer.desirable_weight in [{des[0]}, {des[1]}] OR "
            f"trainer.undesirable_weight in [{und[0]}, {und[1]}] (not both).")


def _kl_completions(batch: dict) -> dict:
    """TRL's rotation by one within a batch: (x_1, y_n), (x_2, y_1), ..., (x_n, y_{n-1})."""
    return {**batch, "KL_completion_ids": [batch["completion_ids"][-1], *batch["completion_ids"][:-1]]}


def build_kto(recipe: Recipe, model: Any, tokenizer: Any, train_ds: Any, eval_ds: Any, checkpoint_dir: str,
              callbacks: list) -> Any:
    from trl import KTOConfig, KTOTrainer

    t = recipe.trainer
    args = KTOConfig(
        **training_kwargs(recipe, checkpoint_dir, eval_ds is not None),
        max_length=recipe.data.max_length,
        beta=t.beta,
        loss_type=t.loss_type,
        desirable_weight=t.desirable_weight,
        undesirable_weight=t.undesirable_weight,
        precompute_ref_log_probs=t.precompute_ref_log_probs,
    )
    return base_as_reference(_tokenized(KTOTrainer)(
        model=model, ref_model=ref_model(recipe), args=args,
        train_dataset=_pairs(kto_rows(recipe, train_ds), tokenizer, "kto"),
        eval_dataset=_pairs(kto_rows(recipe, eval_ds, shuffle=False), tokenizer, "kto"),
        processing_class=tokenizer, callbacks=callbacks))


def dropped_by_trainer(recipe: Recipe, trainer: Any) -> dict[str, dict[str, dict[str, int]]]:
    """Per split (train, eval), what TRL's DPO and KTO trainers (and `without_empty_completions` for ORPO and CPO)
    did to the rows at max_length: rows dropped because their prompt alone fills it (they would keep no completion
    token), and answers cut there (their end and end-of-turn token are not scored). Counted so the run says so
    instead of training or evaluating on fewer or cut rows without a word."""
    out: dict[str, dict] = {}
    limit = f"data.max_length ({recipe.data.max_length} tokens)"
    for split, n in getattr(trainer, "tk_rows", {}).items():
        if n["offered"] > n["kept"]:
            out.setdefault(split, {})["dropped_by_trainer"] = {f"prompt alone fills {limit}": n["offered"] - n["kept"]}
        if n.get("answers_cut"):
            out.setdefault(split, {})["cut_by_trainer"] = {f"prompt + answer longer than {limit}": n["answers_cut"]}
    return out


def kto_rows(recipe: Recipe, train_ds: Any, shuffle: bool = True) -> Any:
    """KTO learns from single completions labelled desirable or not. TRL's KTOTrainer reads its rows in order
    (sequential sampling: its KL estimate pairs each row with a neighbour's completion) and unpairs paired rows as
    all chosen completions, then all rejected ones, so paired data would train on desirable examples only for the
    first half of an epoch. tunekit unpairs here and shuffles (the data seed), so every batch mixes both labels
    and neighbours rarely share a prompt. An eval set is unpaired in order (`shuffle=False`), as TRL does."""
    if train_ds is None or "chosen" not in train_ds.column_names:
        return train_ds  # unpaired rows: the data stage shuffled them already
    from trl.data_utils import unpair_preference_dataset

    unpaired = unpair_preference_dataset(train_ds)
    return unpaired.shuffle(seed=recipe.data.data_seed(recipe.trainer.seed)).flatten_indices() if shuffle else unpaired


def build_orpo(recipe: Recipe, model: Any, tokenizer: Any, train_ds: Any, eval_ds: Any, checkpoint_dir: str,
               callbacks: list) -> Any:
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    args = ORPOConfig(**training_kwargs(recipe, checkpoint_dir, eval_ds is not None),
                      max_length=recipe.data.max_length, beta=recipe.trainer.beta)
    return without_empty_completions(_counting_pairs(ORPOTrainer)(
        model=model, args=args, train_dataset=_pairs(train_ds, tokenizer, "orpo"),
        eval_dataset=_pairs(eval_ds, tokenizer, "orpo"), processing_class=tokenizer, callbacks=callbacks))


def build_cpo(recipe: Recipe, model: Any, tokenizer: Any, train_ds: Any, eval_ds: Any, checkpoint_dir: str,
              callbacks: list) -> Any:
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    t = recipe.trainer
    args = CPOConfig(
        **training_kwargs(recipe, checkpoint_dir, eval_ds is not None),
        max_length=recipe.data.max_length,
        loss_type=t.loss_type,
        beta=t.beta,
        label_smoothing=t.label_smoothing,
        cpo_alpha=t.cpo_alpha,
        simpo_gamma=t.simpo_gamma,
        alpha=t.alpha,
    )
    return without_empty_completions(_counting_pairs(CPOTrainer)(
        model=model, args=args, train_dataset=_pairs(train_ds, tokenizer, "cpo"),
        eval_dataset=_pairs(eval_ds, tokenizer, "cpo"), processing_class=tokenizer, callbacks=callbacks))


def _counting_pairs(trainer_class: type) -> type:
    """ORPO's / CPO's batches hold `chosen_input_ids` and `rejected_input_ids` (each the prompt and one answer), no
    `input_ids`, so transformers counted no tokens and the run had no tokens/s or MFU. The tokens a step processes
    are the non-padding tokens of both sequences of every pair, summed over the processes as transformers does."""

    class Counted(trainer_class):  # type: ignore[misc, valid-type]
        def _track_num_input_tokens(self, inputs: dict) -> None:
            if self.args.include_num_input_tokens_seen == "no" or "chosen_attention_mask" not in inputs:
                return super()._track_num_input_tokens(inputs)
            add_tokens_seen(self, inputs["chosen_attention_mask"].sum() + inputs["rejected_attention_mask"].sum())

    Counted.__name__ = Counted.__qualname__ = f"Tunekit{trainer_class.__name__}"
    return Counted


def without_empty_completions(trainer: Any) -> Any:
    """Drop the rows TRL's ORPO and CPO trainers tokenized with no chosen or no rejected token left (the prompt
    alone fills max_length; TRL only warns, keeps the whole prompt, and the loss of such a row is a mean over zero
    tokens: NaN for ORPO, silently meaningless for CPO). DPO and KTO drop them themselves; counted alike
    (`dropped_by_trainer`)."""
    def has_completions(row: dict) -> bool:
        return any(t != -100 for t in row["chosen_labels"]) and any(t != -100 for t in row["rejected_labels"])

    for name, split in (("train_dataset", "train"), ("eval_dataset", "eval")):
        ds = getattr(trainer, name)
        if ds is not None and not isinstance(ds, dict):
            kept = ds.filter(has_completions, desc="dropping rows without completion tokens")
            trainer.tk_rows = {**getattr(trainer, "tk_rows", {}), split: {"offered": len(ds), "kept": len(kept)}}
            setattr(trainer, name, kept)
    return trainer
