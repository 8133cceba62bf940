"""Load the agent's YAML config into the declared Options, naming file, line and key on error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from agent.exceptions import ConfigError
from agent.options import Options

_Base: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Lines(dict[str, Any]):
    lines: dict[str, int]


class _Loader(_Base):  # type: ignore[valid-type,misc]
    """Safe loader that remembers each key's line."""


def _mapping(loader: _Loader, node: yaml.MappingNode) -> _Lines:
    out = _Lines()
    out.lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        out[str(key)] = loader.construct_object(value_node, deep=True)
        out.lines[str(key)] = key_node.start_mark.line + 1
    return out


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)

# Mappings under these keys are values themselves (secret references), not config sections.
_VALUE_MAPPINGS = ({"$env"}, {"$file"})


def load_config(path: Path | None, options: Options) -> Options:
    """Fill ``options`` from ``path`` (None: defaults only). Raises ConfigError."""
    if path is None:
        return options
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from exc
    try:
        data = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{line}: not valid YAML: {exc}") from exc
    if data is None:
        return options
    if not isinstance(data, dict):
        raise ConfigError(f"{path}:1: the config must be a mapping of keys to values")
    _fill(path, data, "", options)
    return options


def _fill(path: Path, data: dict[str, Any], prefix: str, options: Options) -> None:
    lines = getattr(data, "lines", {})
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        where = f"{path}:{lines.get(key, 1)}"
        if isinstance(value, dict) and set(value) not in _VALUE_MAPPINGS:
            _fill(path, value, dotted + ".", options)
        else:
            options.set(dotted, value, where)
