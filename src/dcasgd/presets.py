"""Presets and TOML config files: named starting points for ``train`` and ``compare``.

A preset is ``presets/NAME.toml`` inside the package.  Keys are TrainConfig
fields (the long CLI flags with ``_`` for ``-``); ``stragglers`` is a table
``{ "3" = 4.0 }``; ``failures`` a list of ``[worker, fail_at, rejoin_at]``.
An optional ``[compare]`` table holds the study grid used by ``dcasgd
compare`` and is ignored by ``train``.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from .config import ConfigError, TrainConfig

PRESET_DIR = Path(__file__).parent / "presets"
PRESETS = tuple(sorted(p.stem for p in PRESET_DIR.glob("*.toml")))


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"config file {path}: cannot read ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path}: not UTF-8 text (byte {exc.start}), so not a TOML file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: not valid TOML ({exc})") from None


# TOML keys that are long flags whose setting has another name (``--straggler`` sets ``stragglers``)
FLAG_KEYS = {"straggler": "stragglers", "fail": "failures", "no_progress": "progress"}


def _flag_values(key: str, value: Any) -> Any:
    """A flag-named key's value as its setting: ``straggler = ["3:4.0"]`` (the flag's form) or a table;
    ``fail = ["2:50:120"]`` or lists; ``no_progress = true`` is ``progress = false``."""
    if key == "no_progress":
        return not value if isinstance(value, bool) else value
    if isinstance(value, str):
        value = [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        parts = [v.split(":") for v in value]
        if key == "straggler":
            return {p[0]: p[1] if len(p) > 1 else None for p in parts}
        return [[p[0], *p[1:]] for p in parts]
    return value


def settings_from_toml(raw: dict[str, Any], source: str) -> dict[str, Any]:
    """TrainConfig keyword arguments from a parsed TOML table (``[compare]`` dropped)."""
    known = set(TrainConfig.__dataclass_fields__)
    values: dict[str, Any] = {}
    for raw_key, value in raw.items():
        key = raw_key.replace("-", "_")
        if key == "compare":
            continue
        if key in FLAG_KEYS:
            if FLAG_KEYS[key] in values or FLAG_KEYS[key] in raw:
                raise ConfigError(f"{source}: both {raw_key} and {FLAG_KEYS[key]} are set; keep one")
            key, value = FLAG_KEYS[key], _flag_values(key, value)
        values[key] = value
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{source}: unknown setting(s) {unknown}; allowed: {sorted(known)}")
    try:
        for key in ("stragglers", "corrupt"):
            if key in values:
                values[key] = {int(k): float(v) for k, v in values[key].items()}
        if "failures" in values:
            values["failures"] = tuple((int(f[0]), float(f[1]), None if len(f) < 3 or f[2] is None else float(f[2]))
                                       for f in values["failures"])        # [worker, fail_at(, rejoin_at)]
        for key in ("speeds", "lr_milestones", "jitters"):
            if key in values:
                values[key] = tuple(float(v) for v in values[key])
        if "timing_quantiles" in values:
            values["timing_quantiles"] = tuple(tuple(float(v) for v in row) for row in values["timing_quantiles"])
    except (TypeError, ValueError, AttributeError, IndexError):
        raise ConfigError(f"{source}: malformed stragglers/failures/speeds/lr_milestones/jitters/"
                          f"timing_quantiles") from None
    return values


def load_preset(name: str) -> dict[str, Any]:
    if name not in PRESETS:
        raise ConfigError(f"preset: unknown value {name!r}; allowed: {', '.join(PRESETS)}")
    return settings_from_toml(_read_toml(PRESET_DIR / f"{name}.toml"), f"preset {name}")


def load_preset_grid(name_or_path: str) -> dict[str, Any]:
    """The ``[compare]`` table of a preset or TOML file (empty if none)."""
    path = PRESET_DIR / f"{name_or_path}.toml" if name_or_path in PRESETS else Path(name_or_path)
    return dict(_read_toml(path).get("compare", {}))


def load_config_file(path: str) -> dict[str, Any]:
    return settings_from_toml(_read_toml(Path(path)), f"config file {path}")
