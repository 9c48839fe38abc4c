"""The strict structure hooks shared by the two cattrs converters: the wire's
(`protocol`, JSON) and the config's (`config`, TOML).

Both formats have real types, so a value of the wrong type is a mistake, never a
conversion: "5" is not 5, true is not 1 (an integer is a fine float). Each format
names types its own way in the messages (`Dialect`); the checks are the same.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs


@attrs.frozen
class Dialect:
    """How one format's error messages name a type and a value."""

    type_names: dict[type, str]
    value_name: Callable[[Any], str]


_JSON_TYPES = {str: "string", int: "integer", bool: "boolean", float: "number", list: "array"}


def json_name(value: Any) -> str:
    """The JSON type of a decoded value, as error messages name it."""
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "object"
    return _JSON_TYPES.get(type(value), type(value).__name__)


JSON = Dialect(_JSON_TYPES, json_name)
TOML = Dialect(
    {t: t.__name__ for t in (str, int, float, bool, list)},
    lambda value: f"{type(value).__name__} {value!r}",
)


def scalar_hook(expected: type, dialect: Dialect) -> Callable[[Any, Any], Any]:
    """A structure hook that takes only `expected` itself (and int for float)."""
    name = dialect.type_names[expected]

    def hook(value: Any, _type: Any) -> Any:
        if expected is float and type(value) is int:
            return float(value)
        if type(value) is not expected:
            raise TypeError(f"expected {name}, got {dialect.value_name(value)}")
        return value

    return hook


def string_list(value: Any, dialect: Dialect) -> list[str]:
    """`value` if it is a list of strings, else TypeError naming what is wrong."""
    array = dialect.type_names[list]
    if type(value) is not list:
        raise TypeError(f"expected {array}, got {dialect.value_name(value)}")
    for item in value:
        if type(item) is not str:
            raise TypeError(f"expected {array} of strings, found {dialect.value_name(item)}")
    return value
