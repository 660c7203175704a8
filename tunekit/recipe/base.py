"""The base class every recipe section derives from, and the path type its path fields use."""

from __future__ import annotations

import os
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict


class Section(BaseModel):
    """A recipe section: unknown keys are errors, values are validated on assignment too; a float field
    refuses `.inf` and `.nan` (no setting of a training run means anything infinite)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=False,
                              allow_inf_nan=False)


def _expand_user(value: str) -> str:
    return os.path.expanduser(value) if value.startswith("~") else value


PathStr = Annotated[str, AfterValidator(_expand_user)]
"""A path in a recipe: a leading `~` is the user's home, as in a shell (`builtin:`/`hub:` names pass as they are)."""
