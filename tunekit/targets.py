"""Find and load what eval and merge work on: a run directory, a model directory / hub id, or a recipe.

`load_run_model(run_dir)` turns a run's trained output into a model through the method registry's
`load_trained` (full weights, peft adapters on the recipe's base, LoReFT/LoFiT interventions). Bare model
or adapter directories (no run around them) load directly.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunekit import run_dir as rd
from tunekit.errors import UserError
from tunekit.methods.registry import SAVED_AS, load_trained
from tunekit.model.load import load_model, load_tokenizer, resolve_model_path
from tunekit.model.schema import ModelConfig
from tunekit.recipe.load import load_recipe

if TYPE_CHECKING:
    from tunekit.recipe.schema import Recipe

RESOLVED = "recipe.resolved.yaml"


@dataclass
class Target:
    label: str  # what the user typed
    weights: str  # directory (or hub id) holding the weights to evaluate
    kind: str  # "adapter" | "full"
    model_cfg: ModelConfig  # the base model (for a full model: the model itself)
    recipe: Recipe | None = None  # the run's or the given recipe
    run_dir: Path | None = None
    note: str | None = None  # why a run's weights are not its final/ (eval, chat and merge print it)


def weights_kind(d: Path) -> str:
    """`adapter` or `full` for a weights directory; a UserError naming the file when it is neither."""
    if (d / "adapter_config.json").is_file():
        return "adapter"
    if any(d.glob("adapter_model.*")):
        raise UserError(f"{d / 'adapter_config.json'}: missing. {d} holds adapter weights but no adapter config, "
                        "so the adapter cannot be loaded (copy the adapter_config.json saved with it)")
    if (d / "config.json").is_file():
        return "full"
    if (d / "pytorch_model_fsdp_0").is_dir():
        raise UserError(f"{d}: a sharded FSDP checkpoint (pytorch_model_fsdp_0/): it holds no Hugging Face weights. "
                        "Finish the run with `tunekit train RECIPE --resume` (final/ is consolidated), or train with an "
                        "FSDP config that has `state_dict_type: FULL_STATE_DICT` to write full weights at every "
                        "checkpoint")
    raise UserError(f"{d}: no model here (neither adapter_config.json nor config.json)")


def run_weights(run_dir: Path) -> Path:
    """final/ of a finished run, else its latest complete checkpoint; an error when there is neither."""
    return _run_weights(run_dir)[0]


def _run_weights(run_dir: Path) -> tuple[Path, str | None]:
    """(weights, why they are not final/). A run that did not finish (no summary.json) is taken at its latest
    complete checkpoint even when it has a final/: one an older tunekit wrote (before final/ was written to
    final.tmp/ and renamed) may be half written (a full disk, a kill during the final save). Without a checkpoint,
    its final/ is all there is."""
    final, finished = run_dir / rd.FINAL, (run_dir / "summary.json").is_file()
    has_final = final.is_dir() and any(final.iterdir())
    if has_final and finished:
        return final, None
    ckpt = rd.latest_checkpoint(run_dir)
    if ckpt is None and has_final:
        return final, (f"the run did not finish (no summary.json) and has no complete checkpoint: {final} is used as "
                       "it is")
    if ckpt is None:
        raise UserError(f"{run_dir}: the run has no trained weights: neither {final} nor a checkpoint in "
                        f"{run_dir / rd.CHECKPOINTS} (did training finish?)")
    torn = ", ".join(c.name for c, _ in rd.torn_checkpoints(run_dir))
    why = "the run did not finish (no summary.json), so its final/ is not used" if has_final else \
        "the run has no final/"
    note = f"{why}: its latest complete checkpoint" + (f"; passed over, incomplete: {torn}" if torn else "")
    return ckpt, note + ("" if finished else ". Finish the run with `tunekit train RECIPE --resume` to write final/")


def resolve_target(target: str | Path) -> Target:
    p = Path(target).expanduser()
    if p.is_dir() and (p / RESOLVED).is_file():
        recipe = load_recipe(p / RESOLVED)
        weights, note = _run_weights(p)
        saved_as = SAVED_AS.get(recipe.method.name, "peft")
        kind = "interventions" if saved_as == "interventions" else weights_kind(weights)
        return Target(str(target), str(weights), kind, recipe.model, recipe, p, note)
    if p.is_file() and p.suffix in (".yaml", ".yml"):
        recipe = load_recipe(p)
        return Target(str(target), recipe.model.path, "full", recipe.model, recipe)
    if p.is_dir():
        kind = weights_kind(p)
        if kind == "adapter":
            base = json.loads((p / "adapter_config.json").read_text()).get("base_model_name_or_path")
            if not base:
                raise UserError(f"{p / 'adapter_config.json'}: no base_model_name_or_path; cannot find the base model")
            return Target(str(target), str(p), kind, ModelConfig(path=base, dtype="float32"))
        return Target(str(target), str(p), kind, ModelConfig(path=str(p.resolve()), dtype="float32"))
    if p.exists():
        raise UserError(f"{target}: not a run directory, model directory or recipe (.yaml)")
    # a path into a local folder (`runs/typo`: `runs/` exists) or deeper than a hub id (ORG/NAME) is a local path
    if str(target).startswith((".", "/", "~")) or len(p.parts) > 2 or (len(p.parts) == 2 and p.parent.is_dir()):
        raise UserError(f"{target}: no such run directory, model directory or recipe (relative to {Path.cwd()})")
    return Target(str(target), str(target), "full", ModelConfig(path=str(target), dtype="float32"))


def _with_dtype(cfg: ModelConfig, dtype: str | None) -> ModelConfig:
    return cfg.model_copy(update={"dtype": dtype}) if dtype else cfg


def tokenizer_source(t: Target) -> str:
    """Where `t`'s tokenizer comes from: its weights directory when it saved one, else its base model."""
    w = Path(t.weights)
    return str(w) if (w / "tokenizer_config.json").is_file() else resolve_model_path(t.model_cfg)


def load_tokenizer_for(t: Target) -> Any:
    """The tokenizer, with the chat template the run trained with: a run saves it with its weights; where they have
    none (a recipe's base model, a checkpoint saved without one) the recipe's `data.chat_template` is set on the
    base model's tokenizer (it had its own template, or none, and eval rendered prompts other than training's)."""
    from tunekit.data.templates import apply_chat_template_choice

    source = tokenizer_source(t)
    tokenizer = load_tokenizer(t.model_cfg, source)
    if t.recipe is not None and source != t.weights:
        apply_chat_template_choice(tokenizer, t.recipe.data.chat_template, needed=False,
                                   variables=t.recipe.data.chat_template_kwargs)
    return tokenizer


def load_base(t: Target, dtype: str | None = None) -> Any:
    """The base model (without the adapter / fine-tuned weights), unquantized, in `dtype`."""
    cfg = _with_dtype(t.model_cfg, dtype)
    return load_model(cfg, resolve_model_path(cfg))


def load_tuned(t: Target, dtype: str | None = None) -> Any:
    """The evaluated model: the base with the adapter on top, or the full model in `t.weights`.

    A run's result loads through the method registry (`load_trained`), so every method (QLoRA with its
    quantized base, LoReFT/LoFiT interventions, ...) is evaluated as it was trained. With an explicit
    `dtype` (merge), adapters load onto an unquantized base in that dtype instead.
    """
    with _readable(t):
        if t.recipe is not None and t.run_dir is not None and (dtype is None or t.kind == "interventions"):
            return load_trained(t.weights, t.recipe)
        if t.kind == "adapter":
            from peft import PeftModel

            try:
                return PeftModel.from_pretrained(load_base(t, dtype), t.weights)
            except (ValueError, RuntimeError, KeyError) as e:
                raise UserError(f"{t.weights}: could not load the adapter onto {t.model_cfg.path}: {e}") from None
        cfg = _with_dtype(t.model_cfg, dtype)
        path = t.weights if t.run_dir is not None else resolve_model_path(cfg)
        return load_model(cfg, path)


@contextlib.contextmanager
def _readable(t: Target) -> Iterator[None]:
    """A weights file that does not parse (truncated, corrupt) is a UserError naming it, not a traceback."""
    try:
        yield
    except (UserError, KeyboardInterrupt):
        raise
    except Exception as e:
        if type(e).__name__ != "SafetensorError" and not isinstance(e, EOFError):
            raise
        raise UserError(f"{t.weights}: the saved weights cannot be read ({type(e).__name__}: {e}); a file there is "
                        "truncated or corrupt. Finish the run again (--resume) or evaluate another model") from None


def load_run_model(run_dir: str | Path, dtype: str | None = None) -> tuple[Any, Any]:
    """(model, tokenizer) for a run directory's trained result."""
    t = resolve_target(run_dir)
    if t.run_dir is None:
        raise UserError(f"{run_dir}: not a run directory (no {RESOLVED})")
    return load_tuned(t, dtype), load_tokenizer_for(t)
