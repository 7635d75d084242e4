"""Type checks of a config dataclass's fields against their annotations.

jsonargparse checks the type of each option it parses, but a dataclass inside ``Optional[...]`` (``model.policy``,
``model.student.peft``, ``model.teacher``) is built from the parsed values as they are: ``--model.policy.sampling
.top_p null`` reaches ``PolicySampling`` as ``None``. ``check_field_types`` (called first in each config's
``__post_init__``) refuses such a value with one ``ConfigError`` naming the option and the type it wants.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Literal, Union

from lit_kd.errors import ConfigError


def check_field_types(instance: Any, option: str) -> None:
    """Each field of the dataclass ``instance`` against its annotation; ``option`` is where it sits in the config
    (``model.policy``)."""
    hints = typing.get_type_hints(type(instance))
    for field in dataclasses.fields(instance):
        value, hint = getattr(instance, field.name), hints[field.name]
        if not conforms(value, hint):
            raise ConfigError(f"{option}.{field.name} must be {describe(hint)}, got {value!r}")


def conforms(value: Any, hint: Any) -> bool:
    """Whether ``value`` is of the annotation ``hint`` (the plain types, ``Optional``/``Union``, ``Literal``,
    ``list``/``tuple``/``dict`` with their items, a dataclass); any other annotation is left to its own checks."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin is Union:
        return any(conforms(value, arg) for arg in args)
    if origin is Literal:
        return any(value == arg and type(value) is type(arg) for arg in args)
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint in (str, bool):
        return isinstance(value, hint)
    container = origin or hint
    if container in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        if container is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(conforms(v, a) for v, a in zip(value, args))
        return not args or all(conforms(v, args[0]) for v in value)
    if container is dict:
        return isinstance(value, dict) and (not args or all(conforms(k, args[0]) for k in value))
    if dataclasses.is_dataclass(hint):
        return isinstance(value, hint)
    return True


def describe(hint: Any) -> str:
    """An annotation as a user reads it: ``a float``, ``one of 'lora', 'dora'``, ``null or a list of str``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Union:
        named = [describe(arg) for arg in args if arg is not type(None)]
        return ("null or " if type(None) in args else "") + " or ".join(named)
    if origin is Literal:
        return "one of " + ", ".join(repr(arg) for arg in args)
    if hint is type(None):
        return "null"
    if origin in (list, tuple) and args:
        return f"a list of {describe(args[0]).removeprefix('a ').removeprefix('an ')}"
    if origin is dict:
        return "a mapping"
    name = getattr(hint, "__name__", str(hint))
    return f"an {name}" if name[0] in "aeiou" else f"a {name}"
