"""On/off switches read from H1R_* environment variables, validated so a typo is named, not ignored."""

from __future__ import annotations

import os

from h1r.errors import ConfigError

_ON, _OFF = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


def flag(name: str, default: bool) -> bool:
    """$name as a boolean: 1/true/yes/on or 0/false/no/off (any case); unset or empty gives `default`."""
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    value = raw.strip().lower()
    if value in _ON:
        return True
    if value in _OFF:
        return False
    raise ConfigError(f"{name}={raw!r}: expected 0 or 1")
