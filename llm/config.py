"""Dataclass configs <-> plain JSON dicts, and the error a bad setting raises.

Every config (model, train, sample) is a dataclass stored as JSON in the checkpoint. Reading one back fills
missing keys with the current defaults (so old checkpoints keep loading) and refuses unknown keys (so a typo in a
config file is an error, not a silently ignored setting).
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Callable
from typing import Any, TypeVar, get_args, get_origin

T = TypeVar("T")
FIELD = re.compile(r"`(\w+)`")  # how a message marks a setting's name


class FieldNames:
    """Mixin for errors about settings. The message marks each setting as `name`: str() shows the bare field
    name (the library's word for it), and render() lets a front end spell it its own way (train_cli.py: --name)."""

    def __str__(self) -> str:
        return self.render(lambda name: name)

    def render(self, spell: Callable[[str], str]) -> str:
        return FIELD.sub(lambda m: spell(m.group(1)), str(self.args[0]) if self.args else "")


class SettingError(FieldNames, ValueError):
    """A setting out of its range, or one that does not fit the others; one line for the user."""


def to_dict(obj: Any) -> dict[str, Any]:
    """A dataclass instance as a JSON-ready dict (tuples become lists)."""
    return {f.name: _jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}


def from_dict(cls: type[T], d: dict[str, Any]) -> T:
    """Rebuild `cls` from a dict: defaults for missing keys, ValueError naming any unknown key, SettingError
    naming a value of the wrong type (a config file's "0.1" is text, not a number)."""
    if not isinstance(d, dict):
        raise ValueError(f"{cls.__name__}: expected a JSON object, got {type(d).__name__}")
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - set(names))
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown key(s) {', '.join(unknown)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for k, v in d.items():
        if not _fits(v, hints[k]):
            raise SettingError(f"`{k}` must be {_kind(hints[k])}, got {v!r}{_text_hint(v)}")
        # JSON has no tuples: restore them where the default is one (e.g. stop strings)
        default = names[k].default
        kwargs[k] = tuple(v) if isinstance(v, list) and isinstance(default, tuple) else v
    return cls(**kwargs)


def _fits(value: Any, tp: Any) -> bool:
    """value is of annotation tp (int, float, bool, str, X | None, tuple[str, ...]); ints count as floats."""
    if get_origin(tp) in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in get_args(tp))
    if get_origin(tp) is tuple:
        return isinstance(value, (list, tuple)) and all(_fits(v, get_args(tp)[0]) for v in value)
    if tp is type(None) or tp is bool or tp is str:
        return isinstance(value, tp)
    if tp in (int, float):
        return isinstance(value, (int, float) if tp is float else int) and not isinstance(value, bool)
    return True


def _kind(tp: Any) -> str:
    words = {int: "an integer", float: "a number", bool: "true or false", str: "text", type(None): "null"}
    if get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_kind(a) for a in get_args(tp))
    return "a list of text" if get_origin(tp) is tuple else words.get(tp, str(tp))


def _text_hint(value: Any) -> str:
    """A number written as text (YAML reads 2e-3 as text): say how to write it."""
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return ""
        return " (text, not a number: no quotes; YAML reads 2e-3 as text, 2.0e-3 as a number)"
    return ""


def _jsonable(v: Any) -> Any:
    if isinstance(v, tuple):
        return list(v)
    return v
