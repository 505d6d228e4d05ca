"""``KEY VALUE`` overrides of a family's frozen protocol dataclass, type-checked by field."""

from __future__ import annotations

import dataclasses

from common.cli import ConfigError


def coerce(field_: dataclasses.Field, text: str):
    """``text`` as the field's declared type (bool, int, float, tuple[int|str, ...], str)."""
    kind = field_.type if isinstance(field_.type, str) else field_.type.__name__
    if kind == "bool":
        if text.lower() not in ("true", "false", "1", "0"):
            raise ConfigError(f"{field_.name} takes true or false, got {text!r}")
        return text.lower() in ("true", "1")
    if kind == "int":
        return int(text)
    if kind == "float":
        return float(text)
    if kind.startswith("tuple[int"):
        return tuple(int(v) for v in text.strip("()[] ").split(",") if v.strip())
    if kind.startswith("tuple[str"):
        return tuple(v.strip() for v in text.strip("()[] ").split(",") if v.strip())
    return text


def apply_overrides(p, overrides: list[str] | None, fixed: set[str], choices: dict[str, tuple]):
    """``p`` (a frozen dataclass) with ``KEY VALUE`` pairs applied; a key outside its fields
    (or in ``fixed``) and a value outside ``choices[key]`` are named in one line."""
    overrides = list(overrides or [])
    if len(overrides) % 2:
        raise ConfigError(f"overrides must be KEY VALUE pairs, got {overrides}")
    fields = {f.name: f for f in dataclasses.fields(p)}
    changes = {}
    for key, text in zip(overrides[::2], overrides[1::2]):
        if key not in fields or key in fixed:
            free = sorted(set(fields) - fixed)
            raise ConfigError(f"{p.name} has no setting {key!r}; settings: {', '.join(free)}")
        try:
            value = coerce(fields[key], text)
        except ValueError as e:
            raise ConfigError(f"{key} {text!r}: {e}") from e
        if key in choices and value not in choices[key]:
            raise ConfigError(f"{key} must be one of {', '.join(choices[key])}, got {value!r}")
        changes[key] = value
    return dataclasses.replace(p, **changes)
