"""The release: `scripts/release` builds the sdist, the pure-Python wheel and the Linux wheel with the
native pump from the committed tree, with SHA256SUMS; each wheel installs into fresh venvs of every
python3 here and runs; Debian's pipx installs it as WSL users will. What it refuses builds nothing."""
import functools
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import zipfile

import pytest

from conftest import linux_only_because
from helpers import Proc, listen_port

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import exe_version  # noqa: E402
import release  # noqa: E402
from relay import __version__  # noqa: E402

CI = bool(os.environ.get("CI"))


def test_the_version_lives_in_relay_init_alone():
    assert release.version(ROOT) == __version__
    with open(os.path.join(ROOT, "setup.cfg")) as f:
        assert "version = attr: relay.__version__" in f.read()
    with open(os.path.join(ROOT, "CHANGELOG.md")) as f:
        assert release.changelog_section(f.read(), __version__).strip()


def test_a_tag_must_name_the_version():
    release.check_tag(None, "1.2.3")
    release.check_tag("v1.2.3", "1.2.3")
    for tag in ("1.2.3", "v1.2.4", "v1.2.3rc1"):
        with pytest.raises(release.Refused, match=rf"the tag {re.escape(tag)} does not match the version 1.2.3"):
            release.check_tag(tag, "1.2.3")


CHANGES = """# Changelog

## [Unreleased]
- next

## [1.1.0] - 2026-12-01
### Fixed
- one

## [1.0.0] - 2026-11-01
- first

[Unreleased]: https://example.invalid/compare
[1.1.0]: https://example.invalid/1.1.0
"""


def test_release_notes_are_the_changelog_section_of_the_version():
    assert release.changelog_section(CHANGES, "1.1.0") == "### Fixed\n- one\n"
    assert release.changelog_section(CHANGES, "1.0.0") == "- first\n"       # the link list is not part of it
    for missing in ("1.2.0", "1.1"):
        with pytest.raises(release.Refused, match="CHANGELOG.md has no section for"):
            release.changelog_section(CHANGES, missing)


def test_the_exe_version_resource_carries_the_version():
    assert exe_version.numbers("1.2.3") == (1, 2, 3, 0)
    assert exe_version.numbers("0.2.0rc1") == (0, 2, 0, 0)
    assert exe_version.numbers("2.0") == (2, 0, 0, 0)
    with pytest.raises(ValueError):
        exe_version.numbers("next")
    fields = dict(exe_version.strings("1.2.3", "relayw"))
    assert fields["FileVersion"] == fields["ProductVersion"] == "1.2.3"
    assert fields["OriginalFilename"] == "relayw.exe"
    # the file PyInstaller evaluates with its own classes (Windows only): here each class records its arguments
    names = ("VSVersionInfo", "FixedFileInfo", "StringFileInfo", "StringTable", "StringStruct", "VarFileInfo", "VarStruct")
    record = {n: functools.partial(lambda name, *a, **k: (name, a, k), n) for n in names}
    info = eval(exe_version.version_file("1.2.3", "relayw"), {"__builtins__": {}}, record)   # noqa: S307
    assert info[0] == "VSVersionInfo" and info[2]["ffi"][2]["filevers"] == (1, 2, 3, 0)
    (string_file_info, var_file_info) = info[2]["kids"]
    (table,) = string_file_info[1][0]
    assert [s[1] for s in table[1][1]] == exe_version.strings("1.2.3", "relayw")
    assert var_file_info[1][0][0][1] == ("Translation", [1033, 1200])


def test_the_windows_zip_is_flat_beside_the_logon_script(tmp_path):
    """The logon-task script finds relayw.exe beside itself and relay.exe reads the relay.yaml of its
    folder, so everything sits in one folder of the zip."""
    dist = tmp_path / "tws-relay"
    (dist / "_internal").mkdir(parents=True)
    for name in ("relay.exe", "relayw.exe", "_internal/python311.dll"):
        (dist / name).write_bytes(b"MZ")
    path = release.windows_zip(str(dist), str(tmp_path / "out"))
    top = f"tws-relay-{__version__}-windows-x64"
    assert os.path.basename(path) == top + ".zip"
    names = set(zipfile.ZipFile(path).namelist())
    assert names == {f"{top}/{n}" for n in ("relay.exe", "relayw.exe", "_internal/python311.dll", "relay.yaml",
                                            "install-logon-task.ps1", "remove-logon-task.ps1", "firewall-rule.ps1",
                                            "README-WINDOWS.txt")}
    os.remove(dist / "relayw.exe")
    with pytest.raises(release.Refused, match="run scripts/build-exe on Windows first"):
        release.windows_zip(str(dist), str(tmp_path / "out"))


def _clone(path):
    """This checkout's HEAD in a fresh clone: what a release would be built from."""
    subprocess.run(["git", "clone", "-q", ROOT, str(path)], check=True)
    for key, value in (("user.name", "test"), ("user.email", "test@example.invalid")):
        subprocess.run(["git", "-C", str(path), "config", key, value], check=True)
    return path


@pytest.fixture
def clone(tmp_path):
    return _clone(tmp_path / "clone")


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """One release build of a fresh clone, for the tests that install it: (clone, its output)."""
    if not sys.platform.startswith("linux"):
        pytest.skip("Linux only: builds the Linux wheel with the native pump (epoll) and checks it with auditwheel")
    base = tmp_path_factory.mktemp("released")
    clone = _clone(base / "clone")
    r = _release(clone, "--out", str(base / "release"), "--tag", f"v{__version__}")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return clone, base / "release", r.stdout


def _release(clone, *args, **kw):
    return subprocess.run([sys.executable, str(clone / "scripts" / "release.py"), *args], cwd=clone,
                          capture_output=True, text=True, timeout=600, **kw)


def test_a_dirty_tree_a_wrong_tag_or_no_changelog_section_builds_nothing(clone, tmp_path):
    out = tmp_path / "out"
    (clone / "relay" / "stray.py").write_text("")
    r = _release(clone, "--out", str(out))
    assert r.returncode == 2 and "refused, nothing built: the tree has uncommitted changes" in r.stderr, r.stderr
    assert "?? relay/stray.py" in r.stderr and "Traceback" not in r.stderr
    os.remove(clone / "relay" / "stray.py")

    r = _release(clone, "--out", str(out), "--tag", "v99.0.0")
    assert r.returncode == 2 and f"the tag v99.0.0 does not match the version {__version__}" in r.stderr, r.stderr

    init = clone / "relay" / "__init__.py"
    init.write_text(init.read_text().replace(__version__, "99.0.0"))
    subprocess.run(["git", "-C", str(clone), "commit", "-qam", "bump without a changelog"], check=True)
    r = _release(clone, "--out", str(out), "--tag", "v99.0.0")
    assert r.returncode == 2 and "CHANGELOG.md has no section for 99.0.0" in r.stderr, r.stderr
    assert not out.exists() or not os.listdir(out)


def _pythons():
    """Every distinct python3 on PATH (here: Debian's own /usr/bin/python3 and pyenv's), and Debian's."""
    found = {}
    for folder in ["/usr/bin"] + os.environ.get("PATH", "").split(os.pathsep):
        path = os.path.join(folder, "python3")
        if os.access(path, os.X_OK):
            r = subprocess.run([path, "-c", "import sys; print(sys.version_info >= (3, 9), sys.prefix)"],
                               capture_output=True, text=True)
            if r.returncode == 0 and r.stdout.startswith("True"):
                found.setdefault(r.stdout.split()[1], path)
    return sorted(found.values())


def _venv(python, folder):
    subprocess.run([python, "-m", "venv", str(folder)], check=True, capture_output=True, timeout=300)
    return folder / "bin"


def _spliced_session(relay_bin, echo_port):
    """`relay serve`, one route to the echo server: the first log line's pump, and bytes back."""
    relay = Proc([str(relay_bin), "serve", "--listen", "127.0.0.1:0", "--target", f"127.0.0.1:{echo_port}",
                  "--discovery-port", "off", "--status-port", "off"])
    try:
        starting = relay.wait_line(" starting ")
        listening = relay.wait_line(" listening ")
        port = listen_port(listening)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
            c.sendall(b"tick" * 1000)
            got = b""
            while len(got) < 4000:
                data = c.recv(65536)
                assert data, "the relay closed before echoing everything"
                got += data
            assert got == b"tick" * 1000
        relay.proc.send_signal(signal.SIGINT)
        assert relay.finish() == 0
        return starting
    finally:
        relay.kill()


@pytest.mark.release
@linux_only_because("builds the Linux wheel with the native pump (epoll) and checks it with auditwheel")
def test_the_release_builds_and_each_wheel_runs_in_fresh_venvs_of_every_python(released, tmp_path, echo_server):
    clone, out, stdout = released
    names = sorted(os.listdir(out))
    pure, native = f"tws_relay-{__version__}-py3-none-any.whl", None
    for name in names:
        if re.fullmatch(rf"tws_relay-{re.escape(__version__)}-py3-none-manylinux_2_\d+_x86_64(\.manylinux\w+)*\.whl",
                        name):
            native = name
    assert native and pure in names and f"tws_relay-{__version__}.tar.gz" in names, names
    assert set(names) == {pure, native, f"tws_relay-{__version__}.tar.gz", "SHA256SUMS", "RELEASE-NOTES.md"}, names
    assert stdout.count("PASSED") == 3                                            # twine check, each artifact
    check = subprocess.run(["sha256sum", "--check", "--strict", "SHA256SUMS"], cwd=out, capture_output=True, text=True)
    assert check.returncode == 0 and check.stdout.count(": OK") == 3, check.stdout + check.stderr
    # byte for byte: the same commit builds the same files (times from the commit, no build paths)
    again = _release(clone, "--out", str(tmp_path / "again"))
    assert again.returncode == 0, again.stderr[-3000:]
    assert (tmp_path / "again" / "SHA256SUMS").read_text() == (out / "SHA256SUMS").read_text()
    assert "relay/_pump.so" in zipfile.ZipFile(out / native).namelist()
    assert not [n for n in zipfile.ZipFile(out / pure).namelist() if n.endswith(".so")]

    pythons = _pythons()
    if CI:
        assert "/usr/bin/python3" in pythons and len(pythons) >= 2, pythons
    for i, python in enumerate(pythons):
        for wheel, pump in ((native, "pump=native"), (pure, 'pump="python (native pump not built')):
            bin_ = _venv(python, tmp_path / f"venv-{i}-{wheel[-12:-4]}")
            subprocess.run([str(bin_ / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                            str(out / wheel)], check=True, capture_output=True, timeout=600)
            version = subprocess.run([str(bin_ / "relay"), "--version"], capture_output=True, text=True)
            assert version.stdout.strip() == f"relay, version {__version__}", (python, wheel, version)
            checked = subprocess.run([str(bin_ / "relay"), "check", "--config", str(clone / "relay.yaml")],
                                     capture_output=True, text=True)
            assert checked.returncode == 0, (python, wheel, checked.stdout + checked.stderr)
            starting = _spliced_session(bin_ / "relay", echo_server)
            assert pump in starting and f"version={__version__}" in starting, (python, wheel, starting)


@pytest.mark.release
@linux_only_because("Debian's pipx, as WSL users have it; network namespaces play Windows and WSL")
def test_pipx_installs_the_wheel_for_wsl_and_autostart_survives_a_reinstall(released, tmp_path):
    from netns import HostAndGuest, skip_without_namespaces
    pipx = shutil.which("pipx")
    if not pipx:
        assert not CI, "CI installs Debian's pipx (.ci/run)"
        pytest.skip("pipx is not installed (Debian/Ubuntu: apt install pipx)")
    skip_without_namespaces()
    _, out, _ = released
    (wheel,) = [p for p in os.listdir(out) if "manylinux" in p]
    home = tmp_path / "home"
    home.mkdir()
    env = dict(os.environ, HOME=str(home), PIPX_HOME=str(tmp_path / "pipx"), PIPX_BIN_DIR=str(home / ".local/bin"),
               PATH=f"{home / '.local/bin'}:/usr/bin:/bin")
    env.pop("VIRTUAL_ENV", None)
    r = subprocess.run([pipx, "install", "--python", "/usr/bin/python3", str(out / wheel)], env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    relay = str(home / ".local/bin/relay")
    assert subprocess.run([relay, "--version"], env=env, capture_output=True, text=True).stdout.strip() == \
        f"relay, version {__version__}"

    # autostart names the pipx venv's interpreter (not the python it links to, which lacks the package)
    r = subprocess.run([relay, "wsl", "autostart", "--dry-run"], env=env, capture_output=True, text=True, timeout=60)
    venv_python = str(tmp_path / "pipx" / "venvs" / "tws-relay" / "bin" / "python")
    assert r.returncode == 0 and f"{venv_python} -m relay wsl forward" in r.stdout, r.stdout + r.stderr
    r = subprocess.run([pipx, "reinstall", "tws-relay"], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    again = subprocess.run([venv_python, "-m", "relay", "--version"], capture_output=True, text=True)
    assert again.stdout.strip() == f"relay, version {__version__}", again

    # the pipx install's forwarder, in a WSL guest, reaches a relay on the Windows host (the same install)
    with HostAndGuest() as net:
        conf = tmp_path / "relay.yaml"
        conf.write_text(f"routes:\n  - name: tws-paper\n    listen: {{interface: {net.win_if}, port: 17497}}\n"
                        "    target: 127.0.0.1:7497\n")
        procs = []

        def start(ns, *argv):
            p = Proc(["ip", "netns", "exec", ns, *argv])
            procs.append(p)
            return p
        try:
            start(net.win, sys.executable, os.path.join(HERE, "fake_tws.py"), "7497").wait_line("listening")
            start(net.win, relay, "serve", "--config", str(conf)).wait_line(" ready ")
            fwd = start(net.wsl, relay, "wsl", "forward")
            assert "listen=127.0.0.1:7497" in fwd.wait_line("listening route=tws-paper")
            hello = subprocess.run(["ip", "netns", "exec", net.wsl, sys.executable, "-c",
                                    "import sys; sys.path.insert(0, sys.argv[1]); import socket, tws_sessions\n"
                                    "c = socket.create_connection(('127.0.0.1', 7497), timeout=10)\n"
                                    "c.sendall(tws_sessions.client_hello(100, 176)); print(len(c.recv(4096)))", HERE],
                                   capture_output=True, text=True, timeout=60)
            assert hello.returncode == 0 and int(hello.stdout) > 0, hello.stdout + hello.stderr
        finally:
            for p in procs:
                p.kill()
