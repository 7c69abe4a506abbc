"""Dataclass configs <-> plain JSON dicts.

Every config (model, train, sample) is a dataclass stored as JSON in the checkpoint. Reading one back fills
missing keys with the current defaults (so old checkpoints keep loading) and refuses unknown keys (so a typo in a
config file is an error, not a silently ignored setting).
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

T = TypeVar("T")


def to_dict(obj: Any) -> dict[str, Any]:
    """A dataclass instance as a JSON-ready dict (tuples become lists)."""
    return {f.name: _jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}


def from_dict(cls: type[T], d: dict[str, Any]) -> T:
    """Rebuild `cls` from a dict: defaults for missing keys, ValueError naming any unknown key."""
    if not isinstance(d, dict):
        raise ValueError(f"{cls.__name__}: expected a JSON object, got {type(d).__name__}")
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - set(names))
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown key(s) {', '.join(unknown)}")
    kwargs = {}
    for k, v in d.items():
        # JSON has no tuples: restore them where the default is one (e.g. stop strings)
        default = names[k].default
        kwargs[k] = tuple(v) if isinstance(v, list) and isinstance(default, tuple) else v
    return cls(**kwargs)


def diff(a: Any, b: Any) -> list[str]:
    """Fields where two configs of the same class differ, as 'name: a != b' lines."""
    return [
        f"{f.name}: {getattr(a, f.name)!r} != {getattr(b, f.name)!r}"
        for f in dataclasses.fields(a)
        if getattr(a, f.name) != getattr(b, f.name)
    ]


def _jsonable(v: Any) -> Any:
    if isinstance(v, tuple):
        return list(v)
    return v
