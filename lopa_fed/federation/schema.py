"""The run-config schema: which keys ``[tool.flwr.app.config]`` may hold, their TOML types and defaults.

The keys are generated from dataclass fields (:func:`keys_of`), so a new field of
:class:`~lopa_fed.config.LoPAConfig` or :class:`~lopa_fed.config.TrainConfig` is a new
run-config key without further code: ``lora_r`` becomes ``lora-r``. A run config is
checked against the schema before anything runs; an unknown key is refused with the
closest known key::

    unknown run-config key 'locl-steps'; did you mean 'local-steps'?

Run-config values are TOML scalars. A field typed ``X | None`` takes ``0`` for ``None``;
a ``tuple[str, ...]`` field takes a comma-separated string.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import NoneType, UnionType
from typing import Any

from ..errors import ConfigError

__all__ = ["Key", "RunConfigSchema", "keys_of"]

_TOML_TYPES = (bool, int, float, str)


@dataclass(frozen=True)
class Key:
    """One run-config key and the dataclass field it sets.

    Attributes
    ----------
    name : str
        The key, e.g. ``"local-steps"``.
    section : str
        Attribute of :class:`~lopa_fed.federation.FedSettings` holding the field
        (``"lopa"``, ``"train"``, ...), or ``""`` for a field of ``FedSettings`` itself.
    field : str
        The dataclass field, e.g. ``"max_steps"``.
    type : type
        The value's TOML type: ``bool``, ``int``, ``float`` or ``str``.
    default : Any
        The run-config default (what ``pyproject.toml`` holds).
    zero_means : str
        What ``0`` stands for (``"no cap"``, ``"the task's default"``); empty if 0 is a plain value.
    optional, sequence : bool
        The field is ``X | None`` (0 ↔ None) or ``tuple[str, ...]`` (comma-separated string).
    help : str
        Documentation of the key.
    """

    name: str
    section: str
    field: str
    type: type
    default: Any
    zero_means: str = ""
    optional: bool = False
    sequence: bool = False
    help: str = ""

    def parse(self, value: Any) -> Any:
        """``value`` as this key's TOML type.

        Raises
        ------
        ConfigError
            The value cannot be read as the type, or is negative where 0 is a sentinel.
        """
        try:
            out = _coerce(value, self.type)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{self.name}: cannot use {value!r} as {self.type.__name__} ({exc})") from None
        if self.zero_means and out < 0:
            raise ConfigError(f"{self.name} must be >= 0 (0: {self.zero_means}), got {value!r}")
        return out

    def to_field(self, value: Any) -> Any:
        """The dataclass field value of a parsed run-config value."""
        if self.sequence:
            return tuple(part.strip() for part in str(value).split(",") if part.strip())
        if self.optional and value == 0:
            return None
        return value

    def from_field(self, value: Any) -> Any:
        """The run-config value of a dataclass field value (inverse of :meth:`to_field`)."""
        if self.sequence:
            return ",".join(value)
        if value is None:
            return self.type(0)
        return self.type(value)


def _coerce(value: Any, typ: type) -> Any:
    if typ is bool:
        if isinstance(value, str):
            text = value.strip().lower()
            if text not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
                raise ValueError("not a boolean")
            return text in ("1", "true", "yes", "on")
        return bool(value)
    if typ is int:
        if isinstance(value, bool):
            raise ValueError("a boolean is not an integer")
        if isinstance(value, float) and not value.is_integer():
            raise ValueError("not an integer")
        return int(value)
    if typ is float:
        if isinstance(value, bool):
            raise ValueError("a boolean is not a number")
        return float(value)
    return str(value)


def _toml_type(hint: Any) -> tuple[type, bool, bool]:
    """``(TOML type, optional, sequence)`` of a field's type hint."""
    args = typing.get_args(hint)
    if isinstance(hint, UnionType) or typing.get_origin(hint) is typing.Union:
        inner = [a for a in args if a is not NoneType]
        if len(inner) == 1 and inner[0] in _TOML_TYPES:
            return inner[0], True, False
    elif typing.get_origin(hint) is tuple and args in ((str, Ellipsis),):
        return str, False, True
    elif hint in _TOML_TYPES:
        return hint, False, False
    raise TypeError(f"no run-config type for a field typed {hint!r}")


def keys_of(
    cls: type,
    section: str,
    *,
    rename: Mapping[str, str] | None = None,
    defaults: Mapping[str, Any] | None = None,
    zero_means: Mapping[str, str] | None = None,
    skip: Iterable[str] = (),
) -> list[Key]:
    """Run-config keys of the fields of dataclass ``cls``.

    Parameters
    ----------
    cls : type
        A dataclass whose fields are bool, int, float, str, ``X | None`` or ``tuple[str, ...]``.
    section : str
        See :attr:`Key.section`.
    rename : mapping, optional
        ``{field: key}`` where the key is not the hyphenated field name.
    defaults : mapping, optional
        ``{field: run-config default}`` where it differs from the field's default.
    zero_means : mapping, optional
        ``{field: what 0 stands for}``.
    skip : iterable of str
        Fields without a key of their own.
    """
    rename, defaults, zero_means = dict(rename or {}), dict(defaults or {}), dict(zero_means or {})
    hints = typing.get_type_hints(cls)
    skipped = set(skip)
    keys = []
    for f in dataclasses.fields(cls):
        if f.name in skipped:
            continue
        typ, optional, sequence = _toml_type(hints[f.name])
        if optional:
            zero_means.setdefault(f.name, "none")
        key = Key(rename.get(f.name, f.name.replace("_", "-")), section, f.name, typ, None,
                  zero_means.get(f.name, ""), optional, sequence, f.metadata.get("help", f"{cls.__name__}.{f.name}"))
        raw = defaults[f.name] if f.name in defaults else key.from_field(f.default)
        keys.append(dataclasses.replace(key, default=key.parse(raw)))
    return keys


class RunConfigSchema:
    """Every run-config key, by name.

    Parameters
    ----------
    keys : iterable of Key
        Names must be unique.
    """

    def __init__(self, keys: Iterable[Key]) -> None:
        self.keys: dict[str, Key] = {}
        for key in keys:
            if key.name in self.keys:
                raise ValueError(f"run-config key {key.name!r} is defined twice")
            self.keys[key.name] = key

    def __iter__(self) -> Iterator[Key]:
        return iter(self.keys.values())

    def __contains__(self, name: object) -> bool:
        return name in self.keys

    def section(self, name: str) -> list[Key]:
        """The keys of one section, in schema order."""
        return [k for k in self if k.section == name]

    def defaults(self) -> dict[str, Any]:
        """``{key: default}``: what ``[tool.flwr.app.config]`` must hold."""
        return {k.name: k.default for k in self}

    def suggest(self, name: str) -> str | None:
        """The known key closest to ``name``, if any is close."""
        close = difflib.get_close_matches(str(name), list(self.keys), n=1, cutoff=0.6)
        return close[0] if close else None

    def check_known(self, names: Iterable[str]) -> None:
        """Refuse unknown keys, naming the closest known one.

        Raises
        ------
        ConfigError
            ``unknown run-config key 'locl-steps'; did you mean 'local-steps'?``
        """
        for name in names:
            if name not in self.keys:
                close = self.suggest(name)
                hint = f"did you mean {close!r}?" if close else "see [tool.flwr.app.config] in pyproject.toml"
                raise ConfigError(f"unknown run-config key {name!r}; {hint}")

    def parse(self, run_config: Mapping[str, Any]) -> dict[str, Any]:
        """``run_config`` with every value as its key's TOML type (unknown keys refused)."""
        self.check_known(str(k) for k in run_config)
        return {str(k): self.keys[str(k)].parse(v) for k, v in run_config.items()}
