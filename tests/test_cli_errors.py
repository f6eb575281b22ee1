"""A bad setting in the environment is one line naming the variable, exit 2."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from kronos.config import DataSettings, load_settings, setting_errors
from kronos.errors import ConfigError


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("KRONOS_LOCK_WAIT_S", "abc", "invalid KRONOS_LOCK_WAIT_S 'abc': Input should be a valid"),
        ("KRONOS_MAX_PRICE", "0", "invalid KRONOS_MAX_PRICE '0': Input should be greater than 0"),
        ("KRONOS_SYMBOL_PATTERN", "[", "invalid KRONOS_SYMBOL_PATTERN '[': not a regular expr"),
    ],
)
def test_a_bad_setting_names_its_variable(monkeypatch, tmp_path, variable, value, says):
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as caught:
        load_settings(env_file=tmp_path / "absent.env")
    assert str(caught.value).startswith(says)


def test_a_bad_keyword_value_names_its_variable():
    with pytest.raises(Exception) as caught:
        DataSettings(lock_wait_s="abc")
    assert setting_errors(caught.value).startswith(
        "invalid KRONOS_LOCK_WAIT_S 'abc': Input should be a valid"
    )


def test_the_command_prints_one_line_and_exits_2(tmp_path):
    env = {**os.environ, "KRONOS_LOCK_WAIT_S": "abc"}
    proc = subprocess.run(
        [sys.executable, "-m", "kronos", "data", "info", "--db", str(tmp_path / "k.duckdb")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert (
        proc.stderr.strip().splitlines()[-1].startswith("error: invalid KRONOS_LOCK_WAIT_S 'abc'")
    )
