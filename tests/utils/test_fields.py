"""Type checks of config dataclass fields (``lit_kd.utils.fields``): what jsonargparse leaves unchecked inside an
``Optional[...]`` group is one error naming the option and the type it wants."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional, Union

import pytest

from lit_kd.errors import ConfigError
from lit_kd.models.adapters import AdapterConfig
from lit_kd.modules.policy import PolicySampling
from lit_kd.utils.fields import check_field_types, conforms, describe


@dataclass
class Example:
    rate: float = 1.0
    count: int = 2
    name: Literal["a", "b"] = "a"
    names: Optional[list[str]] = None
    either: Union[str, list[str]] = "x"
    pair: tuple[int, int] = (1, 2)
    table: dict[str, int] = field(default_factory=dict)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"rate": None}, "example.rate must be a float, got None"),
        ({"rate": True}, "example.rate must be a float, got True"),
        ({"count": 2.5}, "example.count must be an int, got 2.5"),
        ({"name": "c"}, "example.name must be one of 'a', 'b', got 'c'"),
        ({"names": [1]}, "example.names must be null or a list of str, got [1]"),
        ({"either": 3}, "example.either must be a str or a list of str, got 3"),
        ({"pair": (1,)}, "example.pair must be a list of int, got (1,)"),
        ({"table": {1: 2}}, "example.table must be a mapping, got {1: 2}"),
    ],
)
def test_a_value_of_another_type_is_one_error_naming_the_option(changes, message):
    instance = Example(**changes)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        check_field_types(instance, "example")


def test_values_of_the_annotated_types_pass():
    check_field_types(Example(rate=3, names=["x"], either=["y"], table={"k": 1}), "example")  # an int is a float
    assert conforms(None, Optional[int]) and not conforms("1", int) and describe(Optional[int]) == "null or an int"


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: PolicySampling(top_p=None), "model.policy.sampling.top_p must be a float, got None"),
        (lambda: AdapterConfig(dropout=None), "model.student.peft.dropout must be a float, got None"),
        (lambda: AdapterConfig(quantize="int3"), "model.student.peft.quantize must be null or one of 'nf4', 'fp4'"),
    ],
)
def test_the_config_dataclasses_check_their_fields_first(build, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build()
