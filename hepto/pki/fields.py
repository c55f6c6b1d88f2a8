"""JSON read strictly: each value checked for the type it must have, or refused.

Every reader takes the value and ``where`` it was found (``memory.versions['n1']``),
and raises :class:`MalformedMessage` saying where and what is wrong: a message for a
person reading a log, rather than a ``KeyError`` or ``TypeError`` from deep inside the
code that would have used the value.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Callable, Mapping
from typing import Any, Final, TypeVar

T = TypeVar("T")


class MalformedMessage(ValueError):
    """A message that is not what its protocol says; the exception's text says where."""


def mapping(value: object, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise MalformedMessage(f"{where} is {kind(value)}, not an object")
    return value


def required(data: Mapping[str, Any], key: str, where: str) -> object:
    if key not in data:
        raise MalformedMessage(f"{where} lacks {key!r}")
    return data[key]


def string(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise MalformedMessage(f"{where} is {kind(value)}, not a string")
    return value


def integer(value: object, where: str) -> int:
    # JSON has no booleans apart from integers in Python: True is no version.
    if not isinstance(value, int) or isinstance(value, bool):
        raise MalformedMessage(f"{where} is {kind(value)}, not an integer")
    return value


def number(value: object, where: str) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise MalformedMessage(f"{where} is {kind(value)}, not a number")
    try:
        number = float(value)
    except OverflowError:
        raise MalformedMessage(f"{where} is out of range") from None
    # Python's JSON reads NaN and Infinity, which no clock or timer can use.
    if not math.isfinite(number):
        raise MalformedMessage(f"{where} is {number}, not a finite number")
    return number


def duration(value: object, where: str) -> datetime.timedelta:
    try:
        return datetime.timedelta(seconds=number(value, where))
    except OverflowError:
        raise MalformedMessage(f"{where} is out of range") from None


def boolean(value: object, where: str) -> bool:
    if not isinstance(value, bool):
        raise MalformedMessage(f"{where} is {kind(value)}, not a boolean")
    return value


def optional_string(value: object, where: str) -> str | None:
    return None if value is None else string(value, where)


def array(value: object, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise MalformedMessage(f"{where} is {kind(value)}, not a list")
    return value


def strings(value: object, where: str) -> list[str]:
    return [string(item, f"{where}[{index}]") for index, item in enumerate(array(value, where))]


def mapping_of(value: object, where: str, read: Callable[[object, str], T]) -> dict[str, T]:
    """An object whose every value ``read`` accepts."""
    return {key: read(item, f"{where}[{key!r}]") for key, item in mapping(value, where).items()}


def row(value: object, where: str, length: int) -> list[Any]:
    row = array(value, where)
    if len(row) != length:
        raise MalformedMessage(f"{where} has {len(row)} items, not {length}")
    return row


def hex_bytes(value: object, where: str) -> bytes | None:
    text = optional_string(value, where)
    if text is None:
        return None
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise MalformedMessage(f"{where} is not hexadecimal") from None


def instant(value: object, where: str) -> datetime.datetime:
    text = string(value, where)
    try:
        return datetime.datetime.fromisoformat(text)
    except ValueError:
        raise MalformedMessage(f"{where} is not an ISO 8601 time") from None


_KINDS: Final = {
    type(None): "null",
    bool: "a boolean",
    int: "an integer",
    float: "a number",
    str: "a string",
    list: "a list",
    dict: "an object",
}


def kind(value: object) -> str:
    """What JSON calls the type of ``value``."""
    return _KINDS.get(type(value), f"a {type(value).__name__}")


def pair(value: object, where: str) -> tuple[object, object]:
    first, second = row(value, where, 2)
    return first, second


def string_pair(value: object, where: str) -> tuple[str, str]:
    first, second = pair(value, where)
    return string(first, f"{where}[0]"), string(second, f"{where}[1]")


def each(reader: Callable[[object, str], T]) -> Callable[[object, str], dict[str, T]]:
    """A reader of objects whose every value ``reader`` reads."""

    def read(value: object, where: str) -> dict[str, T]:
        return mapping_of(value, where, reader)

    return read


def raw(value: object, where: str) -> object:
    """Any JSON value, as it is: for fields whose reader judges them itself."""
    return value


class Fields:
    """The fields of one JSON object, each read strictly.

    ``where`` names the object in messages about it (``the job lacks 'now'``), and
    ``prefix`` its fields (``config.lifetime``; none for a message's top level, whose
    fields are named alone).
    """

    def __init__(self, value: object, where: str, prefix: str | None = None) -> None:
        self.where = where
        self._data = mapping(value, where)
        self._prefix = f"{where}." if prefix is None else prefix

    def at(self, key: str) -> str:
        """Where field ``key`` is, for messages."""
        return self._prefix + key

    def get(self, key: str) -> object:
        """Field ``key`` as it is (any JSON), or None if absent."""
        return self._data.get(key)

    def read(self, key: str, reader: Callable[[object, str], T]) -> T:
        """Field ``key``, which must be there, as ``reader`` reads it."""
        return reader(required(self._data, key, self.where), self.at(key))
