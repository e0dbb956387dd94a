"""`relay wsl autostart`: the systemd unit (checked by systemd itself where it is installed), the
~/.profile fallback (every other byte kept; really run by sh in a namespace)."""
import configparser
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from hypothesis import given, strategies as st

from netns import HostAndGuest, skip_without_namespaces
from relay.wsl import autostart


def test_unit_file_fields():
    text = autostart.unit_text("/home/me/bot/.venv/bin/python", ("--route", "tws-paper"))
    unit = configparser.ConfigParser(strict=True, interpolation=None)
    unit.optionxform = str
    unit.read_string(text)
    assert unit["Service"]["ExecStart"] == "/home/me/bot/.venv/bin/python -m relay wsl forward --route tws-paper"
    assert unit["Service"]["Restart"] == "always" and unit["Install"]["WantedBy"] == "default.target"
    assert "network-online.target" in unit["Unit"]["After"]
    assert autostart.unit_text("/opt/my python/bin/python").count("'/opt/my python/bin/python'") == 1


def test_unit_file_passes_systemd_analyze_verify(tmp_path):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed here (Debian: apt install systemd)")
    path = tmp_path / autostart.UNIT_NAME
    path.write_text(autostart.unit_text(sys.executable))
    r = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stderr.strip() == "", r.stderr
    path.write_text(autostart.unit_text("not/an/absolute/python"))      # the check can fail
    assert subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True, timeout=60).returncode != 0


no_markers = st.text().filter(lambda t: autostart.BEGIN not in t and autostart.END not in t)


@given(no_markers, no_markers)
def test_profile_block_goes_in_once_and_comes_out_leaving_every_other_byte(before, after_text):
    block = autostart.profile_block("/usr/bin/python3")
    once = autostart.update_profile(before, block)
    assert once.startswith(before) and once.endswith(block)
    assert autostart.update_profile(once, block) == once                          # idempotent
    out = autostart.update_profile(once, None)
    assert out == (before if not before or before.endswith("\n") else before + "\n")
    # a block in the middle of a file is replaced in place, the text after it kept
    middle = before + ("\n" if before and not before.endswith("\n") else "") + block + after_text
    assert autostart.update_profile(middle, None).endswith(after_text)


def test_install_without_systemd_edits_profile_and_keeps_a_backup(tmp_path):
    profile = tmp_path / ".profile"
    profile.write_text("# mine\nexport PATH=$HOME/bin:$PATH\n")
    done = autostart.install(("--host", "127.0.0.1"), python="/usr/bin/python3", home=str(tmp_path), systemd=False)
    assert done[0].startswith(f"updated {profile}") and "next login" in done[1]
    assert (tmp_path / ".profile.bak").read_text() == "# mine\nexport PATH=$HOME/bin:$PATH\n"
    assert "/usr/bin/python3 -m relay wsl forward --host 127.0.0.1" in profile.read_text()
    assert "nothing changed" in autostart.install(("--host", "127.0.0.1"), python="/usr/bin/python3",
                                                  home=str(tmp_path), systemd=False)[0]
    autostart.remove(home=str(tmp_path), systemd=False)
    assert profile.read_text() == "# mine\nexport PATH=$HOME/bin:$PATH\n"


def test_profile_block_really_starts_one_forwarder_at_login(tmp_path):
    """The fallback as a login shell runs it, inside a namespace of its own: the forwarder starts in
    the background, logs to ~/.local/state/relay/forward.log, and a second login starts no second one."""
    skip_without_namespaces()
    if shutil.which("pgrep") is None:
        pytest.skip("pgrep (procps) is not installed")
    autostart.install(("--host", "127.0.0.1", "--status-port", "off"), python=sys.executable, home=str(tmp_path),
                      systemd=False)
    logfile = tmp_path / ".local" / "state" / "relay" / "forward.log"
    env = {**os.environ, "HOME": str(tmp_path)}
    with HostAndGuest() as net:
        login = ["ip", "netns", "exec", net.wsl, "sh", "-c", '. "$HOME/.profile"']
        try:
            subprocess.run(login, env=env, check=True, timeout=30)
            end = time.monotonic() + 20
            while "ready" not in (logfile.read_text() if logfile.exists() else "") and time.monotonic() < end:
                time.sleep(0.05)    # the forwarder writes its log on its own: read until its line is there
            text = logfile.read_text()
            assert "forwarding windows=127.0.0.1" in text and " ready " in text, text
            subprocess.run(login, env=env, check=True, timeout=30)      # a second login
            pids = subprocess.run(["pgrep", "-f", "relay wsl forward --host 127.0.0.1 --status-port off"],
                                  capture_output=True, text=True).stdout.split()
            assert len(pids) == 1, pids
        finally:
            for pid in subprocess.run(["pgrep", "-f", "relay wsl forward --host 127.0.0.1 --status-port off"],
                                      capture_output=True, text=True).stdout.split():
                os.kill(int(pid), signal.SIGTERM)
