"""The README's two commands are the ones CI runs, on every platform, and they fail helpfully."""
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read(*path):
    with open(os.path.join(ROOT, *path), encoding="utf-8") as f:
        return f.read()


def quick_start_blocks():
    """{language: [command, ...]} of the code blocks in the README's 'Two commands' section."""
    section = read("README.md").split("\n## Two commands\n", 1)[1].split("\n## ", 1)[0]
    blocks = {}
    for lang, body in re.findall(r"```(\w+)\n(.*?)```", section, re.S):
        blocks[lang] = [line.split("#", 1)[0].strip() for line in body.splitlines()
                        if line.split("#", 1)[0].strip()]
    return blocks


def test_readme_quick_start_is_what_ci_runs_on_each_platform():
    blocks = quick_start_blocks()
    assert blocks["sh"] == ["scripts/install", "scripts/test"]
    assert blocks["powershell"] == ["scripts\\install.cmd", "scripts\\test.cmd"]
    ci = read(".ci", "run")
    for command in blocks["sh"]:
        assert re.search(rf"^\s*(\S+=\S+ )*{command}\b", ci, re.M), f"{command} is not run by .ci/run"
        assert os.access(os.path.join(ROOT, command), os.X_OK)
    assert "PATH=/usr/bin:$PATH" in ci            # Debian's externally managed python3, as in WSL
    for command in blocks["powershell"]:
        assert os.path.isfile(os.path.join(ROOT, *command.split("\\")))


def pip_target_and_command(text):
    target = re.search(r'-m pip install -q --disable-pip-version-check (.+?)(?: \|\||$)', text, re.M).group(1)
    if re.search(r'^exec "\$\(dirname "\$VENV_PY"\)/relay" "\$@"$|^"%VENV_BIN%relay\.exe" %\*$', text, re.M):
        return target.strip(), "the installed relay"
    command = re.search(r'VENV_PY%?"? -m (relay|pytest) ', text).group(1)
    return target.strip(), command


@pytest.mark.parametrize("name", ["install", "test"])
def test_windows_scripts_do_what_the_bash_scripts_do(name):
    """No Windows here: the .cmd twins are held to the bash scripts line by line."""
    bash, cmd = read("scripts", name), read("scripts", name + ".cmd")
    assert pip_target_and_command(bash) == pip_target_and_command(cmd)
    assert ". scripts/_venv" in bash and 'call "%~dp0_venv.cmd"' in cmd
    for venv in (read("scripts", "_venv"), read("scripts", "_venv.cmd")):
        assert ".venv" in venv and "RELAY_VENV" in venv and "PYTHON" in venv
    assert "--break-system-packages" not in bash + cmd and "sudo pip" not in bash + cmd


def test_install_without_venv_module_stops_with_the_package_to_install(tmp_path):
    """Debian/Ubuntu without python3-venv lack ensurepip: the script names the exact package and
    leaves nothing half made. A real interpreter, with ensurepip shadowed by one that fails."""
    python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
    shadow = tmp_path / "shadow" / "ensurepip"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('ensurepip is not available')\n")
    venv = tmp_path / "venv"
    version = subprocess.run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    r = subprocess.run(["bash", os.path.join(ROOT, "scripts", "install")], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHON": python, "RELAY_VENV": str(venv),
                            "PYTHONPATH": str(tmp_path / "shadow")})
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"sudo apt install python{version}-venv" in r.stderr
    assert "Traceback" not in r.stderr and not venv.exists()


def test_install_with_a_missing_interpreter_says_so(tmp_path):
    r = subprocess.run(["bash", os.path.join(ROOT, "scripts", "test")], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHON": "python3-that-does-not-exist", "RELAY_VENV": str(tmp_path / "v")})
    assert r.returncode == 1 and "'python3-that-does-not-exist' not found" in r.stderr


def anchors(text):
    """GitHub's anchors for a Markdown file's headings."""
    found = set()
    for heading in re.findall(r"^#{1,6} (.+)$", text, re.M):
        a = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        found.add(a)
    return found


def test_every_link_in_the_readme_and_docs_is_live():
    pages = ["README.md"] + [os.path.join("docs", n) for n in sorted(os.listdir(os.path.join(ROOT, "docs")))
                             if n.endswith(".md")]
    broken = []
    for page in pages:
        text = read(page)
        text = re.sub(r"```.*?```", "", text, flags=re.S)          # code blocks hold no links
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"^[a-z]+:", target):
                continue                                            # an address on the web
            path, _, frag = target.partition("#")
            file = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
            if not os.path.exists(os.path.join(ROOT, file)):
                broken.append(f"{page}: {target} (no {file})")
            elif frag and file.endswith(".md") and frag not in anchors(read(file)):
                broken.append(f"{page}: {target} (no heading #{frag} in {file})")
    assert not broken, "\n".join(broken)


def test_the_readme_is_a_front_page():
    """What a trader reads first: short, with the depth in docs/."""
    text = read("README.md")
    assert len(text.encode()) <= 20 * 1024
    for heading in ("## Two commands", "## Quick start", "## Commands", "## Safety", "## Limits", "## Documentation"):
        assert f"\n{heading}\n" in text, heading


def test_the_changelog_names_the_packages_version_as_its_newest_release():
    from relay import __version__
    releases = re.findall(r"^## \[(\d+\.\d+\.\d+)\] - \d{4}-\d{2}-\d{2}$", read("CHANGELOG.md"), re.M)
    assert releases and releases[0] == __version__
    assert read("CHANGELOG.md").index("## [Unreleased]") < read("CHANGELOG.md").index(f"## [{__version__}]")


def test_every_warning_the_relay_logs_is_explained_in_troubleshooting():
    """The troubleshooting page keeps up with the code: each WARNING / ERROR event and each route
    state the relay can show has a row (or a mention) there."""
    names = set()
    for folder, _, files in os.walk(os.path.join(ROOT, "relay")):
        for f in files:
            if f.endswith(".py"):
                text = read(os.path.relpath(os.path.join(folder, f), ROOT))
                names.update(re.findall(r'event\(log, logging\.(?:WARNING|ERROR), "([a-z-]+)"', text))
                names.update(re.findall(r'(?:set_state|_note)\((?:logging\.\w+, )?"([a-z-]+)"', text))
                names.update(re.findall(r'\.log\(logging\.ERROR if bug else logging\.WARNING, "([a-z-]+)"', text))
    page = read("docs", "troubleshooting.md")
    assert len(names) > 20
    missing = sorted(n for n in names if f"`{n}" not in page and f"{n}`" not in page and n != "listening")
    assert not missing, missing


def test_the_relay_yaml_reference_names_every_setting():
    from relay import config as cfg
    page = read("docs", "configuration.md")
    reference = page[page.index("## relay.yaml reference"):page.index("## Several relays")]
    missing = [key for key, *_ in cfg.SETTINGS if key.split(".")[-1] + ":" not in reference]
    assert not missing, missing
