"""`full`: every parameter trains. `freeze`: only parameters picked by name patterns / last layers / embeddings / head."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from tunekit.errors import UserError

if TYPE_CHECKING:
    from tunekit.recipe.schema import Recipe


def build_full(model: Any, cfg: Any, recipe: Recipe) -> Any:
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def decoder_layers(model: Any) -> Any:
    """The decoder layer list (`model.model.layers` for Llama-style models)."""
    base = getattr(model, "get_base_model", lambda: model)()
    for path in ("model.layers", "transformer.h", "model.decoder.layers", "gpt_neox.layers"):
        obj = base
        for part in path.split("."):
            obj = getattr(obj, part, None)
        if obj is not None:
            return obj
    raise UserError(f"method: cannot find the decoder layers of {type(base).__name__} (looked for model.layers, "
                    "transformer.h, model.decoder.layers, gpt_neox.layers); use a peft method or `full`")


def layer_prefix(model: Any, i: int) -> str:
    layers = decoder_layers(model)
    for name, module in model.named_modules():
        if module is layers[i]:
            return name + "."
    raise AssertionError("layer not found")


def build_freeze(model: Any, cfg: Any, recipe: Recipe) -> Any:
    n_layers = len(decoder_layers(model))
    prefixes = [layer_prefix(model, i) for i in range(max(0, n_layers - cfg.last_n_layers), n_layers)]
    emb = model.get_input_embeddings()
    head = model.get_output_embeddings()
    extra = {id(p) for m, on in ((emb, cfg.train_embeddings), (head, cfg.train_head)) if on and m is not None
             for p in m.parameters()}
    patterns = [re.compile(p) for p in cfg.trainable_patterns]
    for name, p in model.named_parameters():
        train = (any(name.startswith(pre) for pre in prefixes) or any(r.search(name) for r in patterns)
                 or id(p) in extra)
        p.requires_grad_(train)
    if not any(p.requires_grad for p in model.parameters()):
        raise UserError(f"method.trainable_patterns: {cfg.trainable_patterns} match no parameter name; "
                        f"names look like `{next(iter(dict(model.named_parameters())))}`")
    return model
