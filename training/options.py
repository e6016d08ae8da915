"""Config dataclasses as command-line flags and TOML recipe keys, from one field list.

A config dataclass's field is an *option* when its metadata holds ``"help"`` (written with
:func:`option`, or as ``field(metadata={"help": ...})`` where a module must not import this one,
as ``model/`` must not); a field that is not an option says why under ``"not_an_option"`` (e.g.
it is read from the data). A field with neither is an error, so a new field cannot be skipped
silently.

Each option becomes the flag ``--name-with-dashes`` and the recipe key ``name-with-dashes`` (or
``name_with_underscores``), read by its annotation: ``int``, ``float``, ``str``, ``Path``,
``bool`` (``--flag`` / ``--no-flag``), ``tuple[int, ...]`` (``8,16,32`` on the command line, a
list in a recipe), and any of them ``| None``; a recipe may also write a value as the flag's
text. Flags default to "not given", so a config is
built from what was given and its own defaults apply otherwise; the help shows that default.
Checking values is the dataclass's own ``__post_init__``.
"""

from __future__ import annotations

import argparse
import dataclasses
import tomllib
import types
import typing
from pathlib import Path
from typing import Any

NOT_AN_OPTION = "not_an_option"


def option(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    default_factory: Any = dataclasses.MISSING,
    choices: tuple[str, ...] | None = None,
) -> Any:
    """A dataclass field that is an option: its default, its help text (without the default,
    which the help adds) and, for a string, the values it may take."""
    if not help:
        raise TypeError("an option needs a help text")
    metadata: dict[str, Any] = {"help": help}
    if choices is not None:
        metadata["choices"] = choices
    return dataclasses.field(default=default, default_factory=default_factory, metadata=metadata)


def option_fields(cls: type) -> list[dataclasses.Field]:
    """The fields of ``cls`` that are options, in declaration order."""
    found = []
    for f in dataclasses.fields(cls):
        if "help" in f.metadata:
            found.append(f)
        elif NOT_AN_OPTION not in f.metadata:
            raise TypeError(
                f"{cls.__name__}.{f.name} has neither a help text (an option) nor a reason it "
                f"is not one (metadata {NOT_AN_OPTION!r})"
            )
    return found


def option_names(cls: type) -> set[str]:
    return {f.name for f in option_fields(cls)}


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _value_type(cls: type, name: str) -> tuple[Any, bool]:
    """The type a field holds, and whether it may also be None."""
    hint = typing.get_type_hints(cls)[name]
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        rest = [a for a in args if a is not type(None)]
        if len(rest) != 1:
            raise TypeError(f"{cls.__name__}.{name}: unsupported option type {hint}")
        return rest[0], True
    return hint, False


def _is_int_tuple(kind: Any) -> bool:
    return typing.get_origin(kind) is tuple and typing.get_args(kind) == (int, ...)


def comma_separated_ints(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(","))


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _help(f: dataclasses.Field) -> str:
    text = f.metadata["help"].replace("%", "%%")
    default = _default(f)
    if default is None or default is dataclasses.MISSING:
        return text  # the text says what leaving it out means
    if isinstance(default, bool):
        return f"{text} (default: {'on' if default else 'off'})"
    return f"{text} (default: {as_text(f.name, default)[0]})"


def as_text(name: str, value: Any) -> list[str]:
    """``value`` as the command line gives it: a flag's argument, or a boolean's flag."""
    if isinstance(value, bool):
        return [flag(name) if value else "--no-" + name.replace("_", "-")]
    if isinstance(value, tuple | list):
        return [",".join(str(v) for v in value)]
    return [str(value)]


def as_flags(values: dict[str, Any]) -> list[str]:
    """Options as command-line arguments, e.g. ``{"gru_hidden": 16}`` -> ``--gru-hidden 16``."""
    argv: list[str] = []
    for name, value in values.items():
        text = as_text(name, value)
        argv += text if isinstance(value, bool) else [flag(name), *text]
    return argv


def add_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type) -> None:
    """A flag on ``parser`` (or an argument group) for each option of ``cls`` (see the module
    docstring)."""
    for f in option_fields(cls):
        kind, _ = _value_type(cls, f.name)
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": _help(f)}
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif _is_int_tuple(kind):
            kwargs.update(type=comma_separated_ints, metavar="N,N,...")
        elif kind in (int, float, str, Path):
            kwargs["type"] = kind
            if "choices" in f.metadata:
                kwargs["choices"] = f.metadata["choices"]
        else:
            raise TypeError(f"{cls.__name__}.{f.name}: unsupported option type {kind}")
        parser.add_argument(flag(f.name), **kwargs)


def given_options(cls: type, args: argparse.Namespace) -> dict[str, Any]:
    """The options of ``cls`` that ``args`` holds (given as flags or by a recipe)."""
    return {n: getattr(args, n) for n in option_names(cls) if hasattr(args, n)}


def from_recipe(cls: type, name: str, value: Any) -> Any:
    """A recipe's (TOML) value for the option ``name`` of ``cls``, as the field holds it; a
    ValueError says what was expected."""
    kind, _ = _value_type(cls, name)
    if isinstance(value, str) and kind is not bool:  # written as the flag's text
        try:
            return comma_separated_ints(value) if _is_int_tuple(kind) else kind(value)
        except ValueError:
            raise ValueError(f"expected {_type_name(kind)}, got {value!r}") from None
    if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if _is_int_tuple(kind):
        if isinstance(value, list) and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value
        ):
            return tuple(value)
    if kind in (int, bool) and type(value) is kind:
        return value
    raise ValueError(f"expected {_type_name(kind)}, got {value!r}")


def _type_name(kind: Any) -> str:
    return "a list of integers" if _is_int_tuple(kind) else kind.__name__


def read_recipe(path: Path, classes: tuple[type, ...], others: set[str]) -> dict[str, Any]:
    """A TOML recipe's values by field name (keys with ``-`` or ``_``): the options of
    ``classes``, each as its field holds it, and the command's ``others`` as written. A
    ValueError (or OSError) names an unknown key or a value of the wrong type."""
    raw = tomllib.loads(path.read_text())
    owner = {name: cls for cls in classes for name in option_names(cls)}
    unknown = sorted(k for k in raw if k.replace("-", "_") not in owner.keys() | others)
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(unknown)}")
    read = {}
    for key, value in raw.items():
        name = key.replace("-", "_")
        try:
            read[name] = from_recipe(owner[name], name, value) if name in owner else value
        except ValueError as exc:
            raise ValueError(f"{key}: {exc}") from None
    return read
