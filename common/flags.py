"""Command-line flags generated from dataclasses: defaults and help live on the fields.

A field becomes ``--field-name``; ``field(metadata=...)`` carries ``help`` (required),
``choices`` and ``metavar``. Types: ``int``, ``float``, ``str``, ``bool`` (``--x`` /
``--no-x``), ``tuple[T, T]`` (two values), ``tuple[T, ...]`` (one or more), each optionally
``| None``. Flags default to "not given" (``argparse.SUPPRESS``), so ``given(args, cls)``
returns only what the user typed and the dataclass (or a recipe) supplies the rest.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import MISSING, field
from typing import Any


def opt(default: Any, help: str, **meta: Any) -> Any:  # noqa: A002 - argparse's name
    """A dataclass field with its flag's help text (and ``choices`` / ``metavar``)."""
    if isinstance(default, (list, dict, set)):
        raise TypeError("mutable defaults: use a tuple")
    return field(default=default, metadata={"help": help, **meta})


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def _unwrap(tp) -> tuple[Any, bool]:
    """(type without ``None``, whether ``None`` was allowed)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"unsupported union {tp}")
        return args[0], True
    return tp, False


def _default_text(f: dataclasses.Field) -> str:
    if f.default is MISSING or f.default is None:
        return ""
    value = f.default
    if isinstance(value, tuple):
        value = " ".join(str(v) for v in value)
    return f" (default: {value})"


def _kwargs(f: dataclasses.Field, tp) -> dict:
    """argparse keyword arguments of one field."""
    base, _ = _unwrap(tp)
    meta = dict(f.metadata)
    if "help" not in meta:
        raise TypeError(f"field {f.name} has no help text: declare it with opt()")
    kw: dict = {
        "default": argparse.SUPPRESS,
        "help": meta.pop("help") + _default_text(f),
        "dest": f.name,
        **meta,
    }
    if base is bool:
        kw["action"] = argparse.BooleanOptionalAction
        return kw
    if typing.get_origin(base) is tuple:
        items = typing.get_args(base)
        kw["type"] = items[0]
        kw["nargs"] = "+" if len(items) == 2 and items[1] is Ellipsis else len(items)
        return kw
    if base not in (int, float, str):
        raise TypeError(f"field {f.name}: unsupported type {base}")
    kw["type"] = base
    return kw


def add_flags(parser, cls, skip: tuple[str, ...] = (), only: tuple[str, ...] | None = None):
    """Add one flag per field of dataclass ``cls`` to ``parser`` (or an argument group)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip or (only is not None and f.name not in only):
            continue
        parser.add_argument(flag_name(f.name), **_kwargs(f, hints[f.name]))
    return parser


def given(args: argparse.Namespace, cls, names: tuple[str, ...] | None = None) -> dict:
    """The values the user gave for ``cls``'s fields (tuples for multi-value flags)."""
    wanted = names if names is not None else [f.name for f in dataclasses.fields(cls)]
    out = {}
    for name in wanted:
        if hasattr(args, name):
            value = getattr(args, name)
            out[name] = tuple(value) if isinstance(value, list) else value
    return out
