"""Declared options: each component lists its own; the YAML config only fills them."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.exceptions import ConfigError


@dataclass(frozen=True)
class Option:
    """One configuration key. ``key`` is dotted (``sessions.idle_timeout``)."""

    key: str
    type: type
    default: Any
    help: str
    check: Callable[[Any], str | None] | None = None  # returns a reason when the value is bad
    secret: bool = False  # may (and should) come from {"$env": NAME} or {"$file": PATH}
    choices: tuple[Any, ...] = field(default=())


class Options:
    """The registry every component declares into, and the validated values after loading."""

    def __init__(self, declared: Iterable[Option] = ()) -> None:
        self._declared: dict[str, Option] = {}
        self._values: dict[str, Any] = {}
        for opt in declared:
            self.declare(opt)

    def declare(self, opt: Option) -> None:
        if opt.key in self._declared:
            raise ValueError(f"option {opt.key} declared twice")
        self._declared[opt.key] = opt
        self._values[opt.key] = opt.default

    def declared(self) -> list[Option]:
        return sorted(self._declared.values(), key=lambda o: o.key)

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def set(self, key: str, raw: Any, where: str) -> None:
        """Validate and set one value; ``where`` names the file (and line) for errors."""
        opt = self._declared.get(key)
        if opt is None:
            known = ", ".join(sorted(self._declared))
            raise ConfigError(f"{where}: key '{key}': unknown key (known keys: {known})")
        value = resolve_secret(raw, where, key)
        if isinstance(raw, dict) and not opt.secret:
            raise ConfigError(f"{where}: key '{key}': $env/$file references are for secrets only")
        if opt.secret and not isinstance(raw, dict) and raw not in (None, ""):
            raise ConfigError(
                f"{where}: key '{key}': a secret must come from {{$env: NAME}} or "
                "{$file: PATH}, never inline"
            )
        value = _coerce(opt, value, where)
        if opt.choices and value not in opt.choices:
            choices = ", ".join(map(str, opt.choices))
            raise ConfigError(f"{where}: key '{key}': {value!r} is not one of {choices}")
        if opt.check is not None:
            reason = opt.check(value)
            if reason:
                raise ConfigError(f"{where}: key '{key}': {reason}")
        self._values[key] = value


def resolve_secret(raw: Any, where: str, key: str) -> Any:
    if not isinstance(raw, dict):
        return raw
    if set(raw) == {"$env"}:
        name = str(raw["$env"])
        if name not in os.environ:
            raise ConfigError(f"{where}: key '{key}': environment variable {name} is not set")
        return os.environ[name]
    if set(raw) == {"$file"}:
        path = Path(str(raw["$file"]))
        try:
            return path.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"{where}: key '{key}': cannot read {path}: {exc.strerror}") from exc
    raise ConfigError(f"{where}: key '{key}': expected a value, {{$env: NAME}} or {{$file: PATH}}")


def _coerce(opt: Option, value: Any, where: str) -> Any:
    if value is None:
        return None
    want = opt.type
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if want is Path and isinstance(value, str):
        return Path(value).expanduser()
    if want is list and isinstance(value, list):
        return list(value)
    if want is bool and not isinstance(value, bool):
        raise ConfigError(f"{where}: key '{opt.key}': must be true or false, not {value!r}")
    if want is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{where}: key '{opt.key}': must be an integer, not {value!r}")
    if not isinstance(value, want):
        raise ConfigError(f"{where}: key '{opt.key}': must be {want.__name__}, not {value!r}")
    return value
