"""The dataclass behind an option: ``model.policy`` is ``DistillModule``'s ``Optional[PolicyConfig]`` parameter, and
each field of that dataclass is an option too. Used where every option is listed: the generated configuration
reference (``docs/hooks.py``) and the every-option test."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Callable, Optional, Sequence


def dataclass_of(hint: Any) -> Optional[type]:
    """The dataclass a type hint names, itself or inside ``Optional[...]``/``Union[...]``; None when it names none."""
    options = typing.get_args(hint) if typing.get_origin(hint) is typing.Union else (hint,)
    found = [option for option in options if dataclasses.is_dataclass(option)]
    return found[0] if found else None


def option_dataclass(owner: Callable, path: Sequence[str]) -> Optional[type]:
    """The dataclass of the option at ``path`` below ``owner``'s parameters (``["policy"]``, ``["student", "peft"]``
    for ``DistillModule.__init__``), through ``Optional[...]`` and nested dataclasses; None when it is none."""
    if not path:
        return None
    hint: Any = typing.get_type_hints(owner).get(path[0])
    for part in path[1:]:
        cls = dataclass_of(hint)
        if cls is None:
            return None
        hint = typing.get_type_hints(cls).get(part)
    return dataclass_of(hint)
