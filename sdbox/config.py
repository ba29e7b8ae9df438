"""Configuration declared once: frozen dataclasses, validated on load.

Each setting is a dataclass field with its type, default and a one-line help
in its metadata; :func:`load_section` walks a TOML table against it, so the
parser, validation, error messages and the documentation
(:func:`describe`) all come from the one declaration, as in mkosi.
Errors name the file, the key and the problem.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from sdbox.errors import SdboxError

T = TypeVar("T")


class ConfigError(SdboxError):
    """A configuration file is missing, malformed or has an invalid value."""


def setting(
    default: Any = dataclasses.MISSING,
    *,
    help: str,
    check: Callable[[Any], str | None] | None = None,
) -> Any:
    """Declare a setting: its default, a one-line help, and an optional check.

    ``check(value)`` returns a problem description, or None when the value is fine.
    """
    metadata = {"help": help, "check": check}
    if isinstance(default, list | dict):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", str(hint))


def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        problems = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, where)
            except ConfigError as exc:
                problems.append(exc.message)
        raise ConfigError(problems[0] if problems else f"{where}: invalid value")
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__}")
        return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is typing.Literal:
        allowed = typing.get_args(hint)
        if value not in allowed:
            raise ConfigError(
                f"{where}: must be one of {', '.join(map(repr, allowed))}, not {value!r}"
            )
        return value
    if hint is Path:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{where}: expected a path (a non-empty string)")
        return Path(value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool):
        if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
            raise ConfigError(
                f"{where}: expected {_type_name(hint)}, got {type(value).__name__} {value!r}"
            )
        return value
    raise ConfigError(f"{where}: unsupported setting type {hint!r}")


def load_section(cls: type[T], raw: dict[str, Any], where: str, section: str = "") -> T:
    """Build ``cls`` from the TOML table ``raw``.

    Errors read ``FILE: [section] key: problem``; ``where`` is the file.
    """
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    place = f"{where}: [{section}]" if section else f"{where}:"
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(
            f"{place} unknown key '{unknown[0]}' (known: {', '.join(sorted(fields))})"
        )
    values: dict[str, Any] = {}
    for name, field in fields.items():
        key_where = f"{place} {name}"
        if name not in raw:
            if (
                field.default is dataclasses.MISSING
                and field.default_factory is dataclasses.MISSING
            ):
                raise ConfigError(f"{key_where} is required ({field.metadata.get('help', '')})")
            continue
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            if not isinstance(raw[name], dict):
                raise ConfigError(f"{key_where}: expected a table")
            section_name = f"{section}.{name}" if section else name
            values[name] = load_section(
                typing.cast(type[Any], hint), raw[name], where, section_name
            )
            continue
        if typing.get_origin(hint) is list and dataclasses.is_dataclass(typing.get_args(hint)[0]):
            # an array of tables ([[name]]); entries are named name[1], name[2]...
            (item,) = typing.get_args(hint)
            if not isinstance(raw[name], list) or not all(isinstance(t, dict) for t in raw[name]):
                raise ConfigError(f"{key_where}: expected tables ([[{name}]] entries)")
            prefix = f"{section}.{name}" if section else name
            values[name] = [
                load_section(typing.cast(type[Any], item), table, where, f"{prefix}[{i}]")
                for i, table in enumerate(raw[name], start=1)
            ]
            check = field.metadata.get("check")
            problem = check(values[name]) if check is not None else None
            if problem:
                raise ConfigError(f"{key_where}: {problem}")
            continue
        if typing.get_origin(hint) is dict:
            _key, item = typing.get_args(hint)
            if not isinstance(raw[name], dict):
                raise ConfigError(f"{key_where}: expected a table")
            values[name] = {
                key: load_section(
                    typing.cast(type[Any], item),
                    table,
                    where,
                    f"{section + '.' if section else ''}{name}.{key}",
                )
                if dataclasses.is_dataclass(item) and isinstance(table, dict)
                else _coerce(table, item, f"{key_where}.{key}")
                for key, table in raw[name].items()
            }
            continue
        value = _coerce(raw[name], hint, key_where)
        check = field.metadata.get("check")
        if check is not None:
            problem = check(value)
            if problem:
                raise ConfigError(f"{key_where}: {problem}")
        values[name] = value
    return cls(**values)


def load_file(cls: type[T], path: Path) -> T:
    """Load and validate a TOML configuration file into ``cls``."""
    try:
        text = path.read_text()
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: the configuration file does not exist") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror})") from exc
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            f"{path}: not valid TOML ({exc}); fix the file or restore it from the image"
        ) from exc
    return load_section(cls, raw, str(path))


def describe(cls: type[Any], prefix: str = "") -> list[str]:
    """One line per setting (``[section] key = default  # help``), for docs."""
    lines = []
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        hint = hints[field.name]
        if dataclasses.is_dataclass(hint):
            lines.append(f"[{prefix}{field.name}]")
            lines.extend(describe(typing.cast(type[Any], hint), f"{prefix}{field.name}."))
            continue
        if typing.get_origin(hint) is list and dataclasses.is_dataclass(typing.get_args(hint)[0]):
            lines.append(f"[[{prefix}{field.name}]]  # {field.metadata.get('help', '')}")
            lines.extend(describe(typing.cast(type[Any], typing.get_args(hint)[0])))
            continue
        if field.default is not dataclasses.MISSING:
            default = repr(str(field.default) if isinstance(field.default, Path) else field.default)
        elif field.default_factory is not dataclasses.MISSING:
            default = repr(field.default_factory())
        else:
            default = "(required)"
        lines.append(f"{field.name} = {default}  # {field.metadata.get('help', '')}")
    return lines
