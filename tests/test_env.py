"""H1R_* switches: on/off values in the usual spellings, and a typo named rather than silently ignored."""

import os
import subprocess
import sys

import pytest

from h1r.errors import ConfigError
from h1r.utils.env import flag


@pytest.mark.parametrize("raw,want", [("1", True), ("true", True), ("ON", True), (" yes ", True),
                                      ("0", False), ("False", False), ("off", False), ("no", False)])
def test_flag_values(monkeypatch, raw, want):
    monkeypatch.setenv("H1R_SOMETHING", raw)
    assert flag("H1R_SOMETHING", not want) is want


def test_flag_default_and_bad_value(monkeypatch):
    monkeypatch.delenv("H1R_SOMETHING", raising=False)
    assert flag("H1R_SOMETHING", True) and not flag("H1R_SOMETHING", False)
    monkeypatch.setenv("H1R_SOMETHING", "")
    assert flag("H1R_SOMETHING", True)
    monkeypatch.setenv("H1R_SOMETHING", "maybe")
    with pytest.raises(ConfigError, match="H1R_SOMETHING='maybe': expected 0 or 1"):
        flag("H1R_SOMETHING", True)


def test_a_bad_switch_stops_the_cli_with_its_name(tmp_path):
    """A mistyped H1R_COMPILE makes `h1r` print one line naming it and exit 2, not run with a guess."""
    env = {"H1R_COMPILE": "yess", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    r = subprocess.run([sys.executable, "-m", "h1r", "init", "tiny", str(tmp_path / "m")],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 2, (r.returncode, r.stderr[-500:])
    assert "H1R_COMPILE='yess': expected 0 or 1" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "m").exists()
