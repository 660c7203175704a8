"""Recipe models for peft tuners, built from `peft_options.json` (a snapshot of peft's own config classes).

peft imports torch, and `tunekit validate` must not, so the option list comes from a JSON snapshot written by
`scripts/snapshot_peft_options.py`; a test compares it with the installed peft. Each tuner becomes a pydantic
model with `extra="forbid"`, a `name` tag, and one field per peft option (type, default and `help` text from
the peft dataclass). A field left out of a recipe is not passed to peft, so peft's own default applies.
"""

from __future__ import annotations

import json
import re
import typing
from functools import cache
from pathlib import Path
from typing import Any, Literal, Optional, Union  # noqa: F401  (names used by the type texts we evaluate)

from pydantic import Field, create_model, model_validator

from tunekit.recipe.base import Section

SNAPSHOT = Path(__file__).resolve().parent / "peft_options.json"

# Tuners that cannot train a causal LM from a tunekit recipe, with the reason (shown by `tunekit methods`).
EXCLUDED: dict[str, str] = {
    "adaption_prompt": "needs adapter_len/adapter_layers and Llama attention internals that transformers 5 "
    "changed; peft 0.21.2 fails on the builtin Llama (`'<' not supported between int and NoneType`)",
    "multitask_prompt_tuning": "needs a `task_ids` tensor in every batch (multi-task data); tunekit's SFT data "
    "has no task ids",
    "poly": "needs a `task_ids` tensor in every batch (multi-task routing); tunekit's SFT data has no task ids",
    "xlora": "a mixture of already-trained LoRA adapters (needs adapter paths and `use_cache=False`); "
    "train the LoRAs with `lora` first",
    "cpt": "Context-aware Prompt Tuning needs CPT-formatted batches (input/label token-type masks built from "
    "in-context demonstrations), which tunekit's data stage does not produce",
    "adamss": "needs scikit-learn (not a tunekit dependency) for its subspace clustering",
}

# The names tunekit gives to methods it implements itself; peft tuners never shadow them.
LORA_FAMILY = ("lora",)

_KNOWN = {"Optional", "Union", "Literal", "list", "dict", "tuple", "int", "float", "bool", "str", "None", "NoneType",
          "Any"}


_NAMESPACE = {"Optional": Optional, "Union": Union, "Literal": Literal, "list": list, "dict": dict, "tuple": tuple,
              "int": int, "float": float, "bool": bool, "str": str, "type": type, "None": None, "Any": Any}


@cache
def snapshot() -> dict:
    return json.loads(SNAPSHOT.read_text(encoding="utf-8"))


def python_type(text: str) -> Any:
    """The Python type for a peft field's annotation text; sub-configs become mappings, enums strings."""

    def repl(m: re.Match) -> str:
        tok = m.group(0)
        if tok[0] in "'\"" or tok in _KNOWN:
            return "type(None)" if tok == "NoneType" else tok
        last = tok.split(".")[-1]
        return "dict" if last.endswith("Config") else "str"

    cleaned = re.sub(r"'[^']*'|\"[^\"]*\"|[A-Za-z_][\w.]*", repl, text)
    try:
        return eval(cleaned, {"__builtins__": {}}, _NAMESPACE)  # noqa: S307 (our own snapshot, simple types only)
    except Exception:
        return Any


def subconfig_class(text: str) -> str | None:
    """`LoftQConfig` for `Union[LoftQConfig, dict]`: the peft class to build from a mapping, if any."""
    names = [n for n in re.findall(r"[A-Za-z_][\w.]*", re.sub(r"'[^']*'", "", text)) if n.endswith("Config")]
    return names[0].split(".")[-1] if names else None


def option_fields(tuner: str, skip: set[str] = frozenset()) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for opt, spec in snapshot()["tuners"][tuner]["options"].items():
        if opt in skip:
            continue
        if opt == "num_virtual_tokens":  # peft has no default (a None fails deep inside peft): the recipe says
            fields[opt] = (int, Field(gt=0, description=f"{spec['help']} (required; e.g. 20)"))
            continue
        tp = python_type(spec["type"])
        if tp is not Any:
            tp = Optional[tp]  # noqa: UP045 (built at run time from text)
        fields[opt] = (tp, Field(default=spec["default"], description=spec["help"]))
    return fields


class _ExcludedBase(Section):
    @model_validator(mode="before")
    @classmethod
    def _refuse(cls, data: Any) -> Any:
        name = data.get("name") if isinstance(data, dict) else None
        raise ValueError(f"peft tuner `{name}` is not supported by tunekit: {EXCLUDED.get(name, '')}. "
                         "See `tunekit methods` for the methods that work.")


def _model_name(tuner: str) -> str:
    return "Peft" + "".join(p.capitalize() for p in tuner.split("_")) + "Method"


def build_tuner_models() -> list[type[Section]]:
    """One recipe model per peft tuner except the LoRA family (hand-written in schema.py) and exclusions."""
    models: list[type[Section]] = []
    for tuner, info in snapshot()["tuners"].items():
        if tuner in LORA_FAMILY:
            continue
        tag = (Literal[tuner], Field(description=f"peft tuner `{tuner}` ({info['config_class']}).")) # type: ignore
        if tuner in EXCLUDED:
            models.append(create_model(_model_name(tuner), __base__=_ExcludedBase, name=tag))
            continue
        model = create_model(_model_name(tuner), __base__=Section, name=tag, **option_fields(tuner))
        model.__doc__ = info["doc"]
        models.append(model)
    return models


def tuner_names() -> list[str]:
    return sorted(snapshot()["tuners"])


def is_peft_tuner(name: str) -> bool:
    return name in snapshot()["tuners"]


def typing_text(tp: Any) -> str:
    return str(tp).replace("typing.", "") if not isinstance(tp, type) else tp.__name__


__all__ = ["EXCLUDED", "build_tuner_models", "option_fields", "python_type", "subconfig_class", "typing",
           "typing_text", "Union"]
