"""Typed settings: dataclasses that the command line, the recipes and YAML files all build the same way.

A settings class is a dataclass deriving from :class:`Settings` whose fields are declared with :func:`setting`
(help text, choices, a lower bound, a command-line flag). From it:

- :meth:`Settings.add_arguments` declares the options on an ``argparse`` parser (``--name``, help, choices,
  booleans as flags), and :meth:`Settings.from_args` builds the object from the parsed namespace;
- :meth:`Settings.from_dict` builds it from a mapping (a YAML section): unknown keys are refused, YAML's strings
  and ints are converted to the declared types;
- :meth:`Settings.check` validates choices and bounds, then the class's own :meth:`Settings.validate`.

Errors name the setting as the user wrote it: ``--batch_seconds`` for an object from the command line,
``teacher.layer`` for one from a YAML section (:meth:`Settings.setting_name`), so library code that checks a
setting says ``f"{s.setting_name('layer')} 13: ..."`` and the message fits wherever the value came from.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import typing
from typing import Any, Dict, Iterable, Mapping, Optional, Type, TypeVar

from stok.core.errors import UserError

S = TypeVar("S", bound="Settings")
_MISSING = dataclasses.MISSING


class SettingsError(UserError, ValueError):
    """A setting with a value that cannot work; the message names it as the user wrote it."""


def setting(default: Any = _MISSING, *, help: str, choices: Optional[Iterable] = None, minimum: Optional[float] = None,
            flag: Optional[str] = None, exclusive: Optional[str] = None, required: bool = False,
            metavar: Optional[str] = None, default_factory: Any = _MISSING, cli: bool = True):
    """A settings field. ``minimum``: the smallest allowed value; ``exclusive``: fields sharing this name form a
    mutually exclusive option group (``required``: one of them must be given); ``flag``: the option name without
    dashes when it differs from the field's; ``cli=False``: not a command-line option (YAML and code only)."""
    meta = {"help": help, "choices": tuple(choices) if choices is not None else None, "minimum": minimum,
            "flag": flag, "exclusive": exclusive, "required": required, "metavar": metavar, "cli": cli}
    if default_factory is not _MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _base_type(annotation: str) -> str:
    """``Optional[float]`` -> ``float``; ``List[int]`` stays."""
    a = annotation.replace(" ", "")
    if a.startswith("Optional[") and a.endswith("]"):
        return a[len("Optional["):-1]
    return a


def coerce(value: Any, annotation: str, where: str) -> Any:
    """YAML reads ``2e-4`` as a string and ``1`` as an int: convert to the declared float/int/bool/str types."""
    if value is None:
        return None
    typ = _base_type(annotation)
    try:
        if typ == "float" and isinstance(value, (str, int)) and not isinstance(value, bool):
            return float(value)
        if typ == "int" and isinstance(value, str):
            return int(value)
        if typ == "int" and isinstance(value, float) and value.is_integer():
            return int(value)
        if typ == "bool" and isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        if typ == "str" and isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        if typ == "List[float]" and isinstance(value, list):
            return [float(v) for v in value]
        if typ == "List[int]" and isinstance(value, list):
            return [int(v) for v in value]
    except ValueError:
        raise SettingsError(f"{where}: expected {typ}, got {value!r}") from None
    return value


class Settings:
    """Base of the typed settings dataclasses (see the module docstring)."""

    #: how this object's settings are named in messages: None = command-line options, else the YAML prefix
    _prefix: Optional[str] = None
    _aliases: Mapping[str, str] = {}

    # ------------------------------------------------------------------ naming
    def setting_name(self, name: str) -> str:
        """The setting as the user wrote it: ``--flag`` (command line) or ``prefix.key`` (YAML)."""
        if self._prefix is None:
            f = self._fields().get(name)
            return "--" + ((f.metadata.get("flag") if f is not None else None) or name)
        key = self._aliases.get(name, name)
        return f"{self._prefix}.{key}" if self._prefix else key

    def named(self: S, prefix: Optional[str], aliases: Optional[Mapping[str, str]] = None) -> S:
        """This object, its settings named ``prefix.key`` (``aliases``: field -> key as written) in messages."""
        object.__setattr__(self, "_prefix", prefix)
        object.__setattr__(self, "_aliases", dict(aliases or {}))
        return self

    @classmethod
    def _fields(cls) -> Dict[str, dataclasses.Field]:
        return {f.name: f for f in dataclasses.fields(cls)}

    # ------------------------------------------------------------------ building
    @classmethod
    def add_arguments(cls, parser, title: Optional[str] = None, only: Optional[Iterable[str]] = None,
                      defaults: Optional[Mapping[str, Any]] = None) -> None:
        """Declare the class's command-line options on ``parser`` (in an argument group ``title``);
        ``only``: a subset of the fields; ``defaults``: other defaults than the class's, for this tool."""
        target = parser.add_argument_group(title) if title else parser
        groups: Dict[str, Any] = {}
        wanted = set(only) if only is not None else None
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            m = f.metadata
            if not m.get("cli", True) or (wanted is not None and f.name not in wanted):
                continue
            where = target
            if m.get("exclusive"):
                name = m["exclusive"]
                if name not in groups:
                    groups[name] = target.add_mutually_exclusive_group(
                        required=any(g.metadata.get("required") for g in dataclasses.fields(cls)
                                     if g.metadata.get("exclusive") == name))
                where = groups[name]
            default = (defaults or {}).get(f.name, f.default if f.default is not _MISSING else
                                           (f.default_factory() if f.default_factory is not _MISSING else None))
            kwargs: Dict[str, Any] = {"dest": f.name, "help": m.get("help")}
            flag = "--" + (m.get("flag") or f.name)
            typ = hints.get(f.name)
            base = typing.get_args(typ)[0] if typing.get_origin(typ) is typing.Union else typ
            if base is bool:
                where.add_argument(flag, action="store_true", default=bool(default), **kwargs)
                continue
            if base in (int, float, str):
                kwargs["type"] = base
            if m.get("choices"):
                kwargs["choices"] = m["choices"]
            if m.get("metavar"):
                kwargs["metavar"] = m["metavar"]
            if m.get("required") and not m.get("exclusive"):
                kwargs["required"] = True
            where.add_argument(flag, default=default, **kwargs)

    @classmethod
    def from_args(cls: Type[S], args: argparse.Namespace, **overrides) -> S:
        """The settings of a parsed command line (fields it lacks keep their defaults); ``overrides`` win."""
        given = vars(args)
        values = {f.name: given[f.name] for f in dataclasses.fields(cls) if f.name in given}
        values.update(overrides)
        obj = cls(**values)
        obj.check()
        return obj

    @classmethod
    def from_dict(cls: Type[S], values: Optional[Mapping[str, Any]], prefix: str = "",
                  aliases: Optional[Mapping[str, str]] = None) -> S:
        """The settings of a mapping (a YAML section named ``prefix``); ``aliases``: field -> key as written.
        Unknown keys and values of the wrong type are refused, naming ``prefix.key``."""
        aliases = dict(aliases or {})
        by_key = {aliases.get(f.name, f.name): f for f in dataclasses.fields(cls)}
        values = dict(values or {})
        if not isinstance(values, dict):
            raise SettingsError(f"{prefix or 'the settings'} must be a mapping, got {type(values).__name__}")
        unknown = sorted(set(values) - set(by_key))
        if unknown:
            where = f"{prefix}: " if prefix else ""
            raise SettingsError(f"{where}unknown key(s) {unknown}; known: {sorted(by_key)}")
        name = (lambda k: f"{prefix}.{k}" if prefix else k)  # noqa: E731
        obj = cls(**{by_key[k].name: coerce(v, str(by_key[k].type), name(k)) for k, v in values.items()})
        obj.named(prefix, aliases)
        obj.check()
        return obj

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    # ------------------------------------------------------------------ checks
    def check(self) -> None:
        """Choices and lower bounds of every field, then :meth:`validate`; raises :class:`SettingsError`."""
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if value is None:
                continue
            choices, minimum = f.metadata.get("choices"), f.metadata.get("minimum")
            if choices and value not in choices:
                raise SettingsError(f"{self.setting_name(f.name)} {value!r}: choose from {', '.join(map(str, choices))}")
            if minimum is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
                if not (math.isfinite(value) and value >= minimum):
                    raise SettingsError(f"{self.setting_name(f.name)} {value}: give a number >= {minimum:g}")
        self.validate()

    def validate(self) -> None:
        """Checks across fields; subclasses raise :class:`SettingsError` naming settings by :meth:`setting_name`."""
