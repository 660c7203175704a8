"""Write tunekit/methods/peft_options.json: every peft tuner and its options, read from peft's config classes.

tunekit validates `method:` sections for peft tuners at recipe time without importing peft (which imports
torch), so it ships this snapshot. Regenerate after upgrading peft:

    python scripts/snapshot_peft_options.py

`tests/unit/test_methods_catalogue.py` fails when the snapshot differs from the installed peft.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import types
import typing
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "tunekit" / "methods" / "peft_options.json"

# Fields tunekit sets itself (task type, bookkeeping) and never takes from a recipe.
SET_BY_TUNEKIT = {"task_type", "peft_type", "auto_mapping", "peft_version", "base_model_name_or_path", "revision",
                  "inference_mode"}


def _json_default(f: dataclasses.Field) -> object:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        value = f.default_factory()  # type: ignore[misc]
    else:
        return None
    if dataclasses.is_dataclass(value):
        return None  # a sub-config object: given in a recipe as a mapping of its own fields
    try:
        json.dumps(value)
    except TypeError:
        return str(value.value) if hasattr(value, "value") else None
    return value


def _type_text(f: dataclasses.Field) -> str:
    t = f.type
    return t if isinstance(t, str) else _canonical(t)


def _canonical(t: object) -> str:
    """The annotation as typing prints it, except that a union of several types lists them sorted (None last).
    typing caches unions by set equality, so `str(Optional[Union[list[str], str]])` prints whichever member order
    an earlier import happened to create: the snapshot must not depend on what else the process imported."""
    if isinstance(t, type):
        return t.__name__
    args = typing.get_args(t)
    members = [a for a in args if a is not type(None)]
    if typing.get_origin(t) in (typing.Union, types.UnionType) and len(members) > 1:
        parts = sorted(typing._type_repr(a) for a in members)  # typing's own text for each member
        return f"Union[{', '.join(parts + ['NoneType'] * (len(members) < len(args)))}]"
    return str(t)


def snapshot() -> dict:
    import peft
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    tuners = {}
    for peft_type, cls in sorted(PEFT_TYPE_TO_CONFIG_MAPPING.items(), key=lambda kv: kv[0].value):
        options = {}
        for f in dataclasses.fields(cls):
            if f.name in SET_BY_TUNEKIT or not f.init:
                continue
            options[f.name] = {
                "type": _type_text(f).replace("typing.", ""),
                "default": _json_default(f),
                "help": " ".join(str(f.metadata.get("help", "")).split()) or f"`{f.name}` of peft's {cls.__name__}.",
            }
        doc = (cls.__doc__ or "").strip().splitlines()
        tuners[peft_type.value.lower()] = {"config_class": cls.__name__, "doc": doc[0].strip() if doc else "",
                                           "options": options}
    return {"peft_version": peft.__version__, "tuners": tuners}


def main() -> None:
    OUT.write_text(json.dumps(snapshot(), indent=1, sort_keys=True) + "\n", encoding="utf-8")
    print(f"wrote {OUT}", file=sys.stderr)


if __name__ == "__main__":
    main()
