"""The Windows scripts, read as Windows would run them. No PowerShell or cmd.exe runs here: these
check what can be checked from their text (and apply their regular expressions as PowerShell's
case-insensitive -match does); a real Windows machine is still the proof."""
import os
import re

import pytest

ROOT = os.path.join(os.path.dirname(__file__), "..")


def script(*path) -> str:
    with open(os.path.join(ROOT, "scripts", *path), encoding="utf-8", newline="") as f:
        return f.read()


def ps_match_pattern(text: str, variable: str) -> str:
    (pattern,) = re.findall(r"\$_\." + variable + r" -match '([^']+)'", text)
    return pattern


@pytest.mark.parametrize("program, leftover", [
    (r"C:\Users\me\AppData\Local\Programs\Python\Python311\python.exe", True),
    (r"C:\Users\me\AppData\Local\Programs\Python\Python311\pythonw.exe", True),
    (r"C:\tools\tws-relay\relay.exe", True),
    (r"C:\tools\tws-relay\relayw.exe", True),                  # what the logon task runs
    (r"%LOCALAPPDATA%\tws-relay\RELAYW.EXE", True),
    (r"C:\src\tws-relay\.venv\Scripts\relayw.exe", True),
    ("relayw.exe", True),
    (r"C:\Program Files\Other\notrelay.exe", False),
    (r"C:\tools\relay.exe.bak", False),
])
def test_the_firewall_script_finds_leftover_block_rules_for_every_program_of_ours(program, leftover):
    pattern = ps_match_pattern(script("windows", "firewall-rule.ps1"), "Program")
    assert bool(re.search(pattern, program, re.IGNORECASE)) == leftover


def test_venv_cmd_quotes_a_python_path_and_prefers_the_python_on_path():
    text = script("_venv.cmd")
    # every run of the interpreter quotes the path: set PYTHON=C:\Program Files\Python311\python.exe
    runs = [line for line in text.splitlines() if "%PY_EXE%" in line and not line.lstrip().startswith(("set", "if"))]
    assert len(runs) == 2 and all(line.startswith('"%PY_EXE%" %PY_ARGS% -') for line in runs), runs
    assert "%PY% " not in text and "%PYTHON% " not in text
    lines = text.splitlines()
    first_python = next(i for i, line in enumerate(lines) if line.startswith("python -c"))
    py_launcher = next(i for i, line in enumerate(lines) if "where py" in line)
    assert first_python < py_launcher                   # setup-python's interpreter wins over py -3
    assert "\r\n" in text and "\n" not in text.replace("\r\n", "")     # cmd.exe misreads labels in LF files
