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


def test_the_logon_task_runs_at_normal_priority_with_a_valid_restart_count():
    text = script("windows", "install-logon-task.ps1")
    (settings,) = re.findall(r"New-ScheduledTaskSettingsSet[^\n]*(?:`\r?\n[^\n]*)*", text)
    assert 4 <= int(re.search(r"-Priority (\d+)", settings).group(1)) <= 6    # 7, the default, is BELOW_NORMAL
    assert 1 <= int(re.search(r"-RestartCount (\d+)", settings).group(1)) <= 255   # MS-TSCH: 1-255


def test_nothing_claims_the_task_restarts_a_relay_that_exits():
    """RestartOnFailure retries a task that fails to start, not a program that exits later."""
    folder = os.path.join(ROOT, "docs")
    docs = [os.path.join(ROOT, "README.md")] + [os.path.join(folder, n) for n in os.listdir(folder)]
    texts = []
    for path in docs:
        with open(path, encoding="utf-8") as f:
            texts.append(f.read())
    for text in texts + [script("windows", "install-logon-task.ps1")]:
        assert not re.search(r"restart(s|ed)? (it )?if it ever exits", " ".join(text.split()), re.IGNORECASE)


def test_the_task_scripts_find_the_relay_in_the_checkouts_venv_before_path():
    for name, exe in (("install-logon-task.ps1", "relayw.exe"), ("remove-logon-task.ps1", "relay.exe")):
        text = script("windows", name)
        beside = text.index(f'Join-Path $PSScriptRoot "{exe}"')
        venv = text.index(f'Join-Path $PSScriptRoot "..\\..\\.venv\\Scripts\\{exe}"')
        path = text.index(f"Get-Command {exe}")
        assert beside < venv < path, name


def test_remove_runs_relay_stop_without_a_terminating_stderr_under_powershell_5():
    """With $ErrorActionPreference = "Stop", Windows PowerShell 5.1 turns a native command's stderr
    (redirected or not) into a terminating error (PowerShell#4002): the removal would stop there."""
    lines = script("windows", "remove-logon-task.ps1").splitlines()
    native = [i for i, line in enumerate(lines) if line.lstrip().startswith("& ")]
    assert native and "2>$null" not in "\n".join(lines)
    for i in native:
        preference = [line for line in lines[:i] if "$ErrorActionPreference =" in line][-1]
        assert '"Continue"' in preference, lines[i]
    unregister = next(i for i, line in enumerate(lines) if "Unregister-ScheduledTask" in line)
    assert all(i < unregister for i in native)
