"""Typed dataclass configs: build from dicts, files and command-line overrides with clear errors.

Every config in the library is a ``@dataclass`` whose fields are its hyperparameters. :func:`from_dict`
checks keys (an unknown key is an error that lists the valid ones) and types (``int``, ``float``, ``str``,
``bool``, ``Literal[...]``, ``X | None``, ``dict``, ``tuple[...]``), then the dataclass's own ``__post_init__``
checks values; :func:`with_overrides` does the same for some fields of an existing config.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints

from recruit.errors import RecruitError

T = TypeVar("T")


def field_names(cls: type) -> list[str]:
    """The field names of dataclass ``cls``."""
    return [f.name for f in dataclasses.fields(cls)]


def _coerce(name: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against annotation ``tp``; convert strings from the command line."""
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null") and type(None) in args):
            if type(None) in args:
                return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(name, value, a)
            except RecruitError as e:
                errors.append(str(e))
        raise RecruitError(errors[0] if errors else f"{name}: bad value {value!r}")
    if origin is Literal:
        allowed = get_args(tp)
        for a in allowed:
            if value == a or (isinstance(value, str) and str(a) == value):
                return a
        raise RecruitError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.lower() in ("true", "1", "yes")
        raise RecruitError(f"{name} must be a bool (true/false), got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise RecruitError(f"{name} must be an int, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise RecruitError(f"{name} must be an int, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise RecruitError(f"{name} must be a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise RecruitError(f"{name} must be a string, got {value!r}")
    if origin is tuple or tp is tuple:
        return _coerce_tuple(name, value, get_args(tp))
    if origin is dict or tp is dict:
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                pass
        if isinstance(value, dict):
            return dict(value)
        raise RecruitError(f"{name} must be a mapping, got {value!r}")
    return value


def _coerce_tuple(name: str, value: Any, args: tuple) -> tuple:
    """A tuple from a tuple or list, or from a JSON array or comma-separated items on the command line.

    ``args`` are the annotation's: ``(X, ...)`` for any length, ``(A, B)`` for exactly two, ``()`` for any items.
    """
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            value = [v.strip() for v in value.split(",")] if value.strip() else []
        if isinstance(value, str | int | float):
            value = [value]
    if not isinstance(value, list | tuple):
        raise RecruitError(f"{name} must be a sequence, got {value!r}")
    if len(args) == 2 and args[1] is Ellipsis:
        kinds = [args[0]] * len(value)
    elif args:
        if len(value) != len(args):
            raise RecruitError(f"{name} must have {len(args)} items, got {len(value)}: {value!r}")
        kinds = list(args)
    else:
        kinds = [Any] * len(value)
    return tuple(v if k is Any or k is object else _coerce(f"{name}[{i}]", v, k)
                 for i, (v, k) in enumerate(zip(value, kinds, strict=True)))  # fmt: skip


def with_overrides(cfg: T, overrides: dict[str, Any], what: str | None = None) -> T:
    """``cfg`` (a dataclass) with fields replaced by ``overrides`` (strings converted to each field's type).

    An unknown key is an error that lists the valid ones; the dataclass's ``__post_init__`` checks the values.
    """
    if not overrides:
        return cfg
    what = what or type(cfg).__name__
    fields = typed_fields(type(cfg), overrides, what)
    try:
        return dataclasses.replace(cfg, **fields)
    except (ValueError, TypeError) as e:
        raise RecruitError(f"invalid {what}: {e}") from None


def typed_fields(cls: type, data: dict[str, Any], what: str | None = None) -> dict[str, Any]:
    """``data`` with each value converted to the type of ``cls``'s field of that name (no ``__post_init__``).

    Raises:
        RecruitError: an unknown key (the message lists valid keys) or a value of the wrong type.
    """
    what = what or cls.__name__
    hints, valid = get_type_hints(cls), field_names(cls)
    unknown = [k for k in data if k not in valid]
    if unknown:
        raise RecruitError(f"unknown {what} key(s) {', '.join(map(repr, unknown))}; valid keys: {', '.join(valid)}")
    return {k: _coerce(f"{what}.{k}", v, hints[k]) for k, v in data.items()}


def from_dict(cls: type[T], data: dict[str, Any], what: str | None = None) -> T:
    """Build dataclass ``cls`` from ``data``, checking every key and type.

    Args:
        cls: A dataclass type.
        data: Field values; strings are converted to the field's type.
        what: Name used in error messages (defaults to the class name).

    Raises:
        RecruitError: unknown key (the message lists valid keys), wrong type, or a value the class rejects.
    """
    what = what or cls.__name__
    kwargs = typed_fields(cls, data, what)
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as e:
        raise RecruitError(f"invalid {what}: {e}") from None


def to_dict(obj: Any) -> dict[str, Any]:
    """A dataclass as a plain JSON-serialisable dict."""
    return dataclasses.asdict(obj)


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a JSON or TOML config file into a dict; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise RecruitError(f"no config file at {path}")
    try:
        text = path.read_text(encoding="utf-8")
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError, tomllib.TOMLDecodeError) as e:
        raise RecruitError(f"cannot parse config file {path}: {e}") from None
    if not isinstance(data, dict):
        raise RecruitError(f"config file {path} must hold a mapping of keys to values")
    return data


def parse_overrides(args: list[str]) -> dict[str, Any]:
    """Turn ``['--lr', '3e-4', '--model.n_layer=2']`` into ``{'lr': '3e-4', 'model.n_layer': '2'}``."""
    out: dict[str, Any] = {}
    i = 0
    while i < len(args):
        a = args[i]
        if not a.startswith("--") or len(a) <= 2:
            raise RecruitError(f"unexpected argument {a!r}; overrides look like --key value or --key=value")
        key = a[2:]
        if "=" in key:
            key, value = key.split("=", 1)
            i += 1
        else:
            if i + 1 >= len(args) or (args[i + 1].startswith("--") and len(args[i + 1]) > 2):
                raise RecruitError(f"override --{key} needs a value" + (f" (got the option {args[i + 1]} instead)"
                                                                         if i + 1 < len(args) else ""))  # fmt: skip
            value = args[i + 1]
            i += 2
        out[key.replace("-", "_")] = value
    return out
